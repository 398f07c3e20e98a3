// Package cluster runs sqliteproxy on several nodes: each tenant is owned by
// exactly one node at a time, recorded in etcd, and requests for a tenant
// are forwarded to its owner.
//
// A *Cluster implements sqliteproxy.Ownership: set it as
// sqliteproxy.Config.Ownership and the driver calls Acquire before it opens
// a tenant, streams the tenant to <ReplicaURL>/<id>/g<Generation>, restores
// from generation Previous() when the tenant is not on local disk, closes
// the tenant when Lost() fires and calls Release with the final replicated
// position when it evicts the tenant or shuts down.
//
// # Leases and keys
//
// Each node keeps one etcd lease alive (TTL, default 10s) and writes, under
// the prefix /sqliteproxy/:
//
//	nodes/<node>     {"url":AdvertiseURL,"started":time}  on the node lease
//	owners/<tenant>  <node>                               on the node lease
//	gens/<tenant>    {"gen":g,"pos":p,"node":n,...}       no lease
//
// owners/<tenant> is created only when absent; the revision that created it
// is the tenant's generation, a fencing token that grows with every change
// of owner. gens/<tenant> outlives owners: it tells the next owner which
// generation to restore from and, if the last owner released the tenant
// cleanly, the position it reached (0: unknown, the owner died). It also
// carries the last position a release recorded through owners that
// recorded none (one died, or uploaded nothing), which the next owner gets
// from its lease's Released: a replica of that generation behind it lost
// uploads, and the driver refuses it. A delete that erased the replica is
// recorded there too (Deleted): the generations it erased are restored
// from by no later owner, whatever is written into them afterwards. A node
// that dies keeps its tenants until its lease expires (at most TTL); a
// node that closes revokes its lease and hands them over at once.
//
// A node that cannot renew its lease stops relying on it before etcd can
// expire it: when TTL minus a margin (TTL/3, at least 500ms) has passed
// since the last renewal was sent, the Lost channel of every tenant it holds
// closes and the driver stops writing them. When etcd is back, Acquire
// works again (a new lease is granted if the old one expired) and takes the
// tenant in a new generation. Meanwhile Acquire waits for the lease up to
// TTL from its loss, then fails with ErrLeaseLost saying since when.
//
// The connection to etcd carries gRPC keepalive pings: one that died
// silently (a partition or a dropped NAT entry, with no reset reaching the
// node) is closed and dialed again after at most 10s without a byte from
// etcd plus a 3s ping timeout (gRPC allows no ping interval under 10s), or
// once data sent on it stays unacknowledged for 3s (TCP_USER_TIMEOUT).
// Without them a node would keep using the dead connection until the
// kernel gave up on it, about 15 minutes.
//
// # Placement
//
// An unowned tenant is taken by the first node that needs it: Acquire
// simply claims it. There is no hash ring or assignment table, so nodes
// joining or leaving move no tenant (a tenant moves only when its owner goes
// away), and the node that got the first request, which already holds that
// request, serves it without a hop. A load balancer with tenant affinity
// (e.g. hashing on the tenant) keeps later requests there too; Forward
// covers the requests that land elsewhere.
//
// # Forwarding
//
// Forward wraps the application's handlers, inside the middleware that puts
// the tenant in the request context (sqliteproxy.WithOrgID): a request for
// a tenant another live node owns is proxied to that node's AdvertiseURL,
// once (the X-Sqliteproxy-Forwarded-By header stops loops); everything else
// is served locally. Owners are looked up in a cache kept current by an
// etcd watch, so forwarding costs no etcd round trip per request; a tenant
// the cache does not know is checked in etcd, except while the node lease
// is not healthy: then the request is served locally at once, and Acquire
// answers it.
//
// # Moves
//
// Admin.Move hands a tenant to a given live node: the owner releases it,
// the target takes it, and no other node may take it meanwhile. If the
// target leaves the cluster first (its lease ends, at most its TTL after it
// died), the move is called off, Move fails with ErrMoveTargetGone, and any
// node may take the tenant again.
//
// # Telemetry
//
// With Config.MeterProvider set, the counter
// sqliteproxy.cluster.ownership.changes counts this node's ownership
// changes, with attribute event = acquired, released or lost.
package cluster
