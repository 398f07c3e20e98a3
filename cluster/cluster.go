package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httputil"
	"net/url"
	"regexp"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sqliteproxy/sqliteproxy"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.opentelemetry.io/otel/metric"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
)

// Key layout in etcd. Every key lives under KeyPrefix.
const (
	// KeyPrefix is the etcd prefix of every key this package writes.
	KeyPrefix    = "/sqliteproxy/"
	nodesPrefix  = KeyPrefix + "nodes/"  // nodes/<node> = {"url","started"}, on the node lease
	ownersPrefix = KeyPrefix + "owners/" // owners/<tenant> = <node>, on the node lease
	gensPrefix   = KeyPrefix + "gens/"   // gens/<tenant> = {"gen","pos","node","lease"}, no lease
	movesPrefix  = KeyPrefix + "moves/"  // moves/<tenant> = <target node>, on the mover's lease (move.go)
)

const (
	// DefaultTTL is the node lease TTL when Config.TTL is zero.
	DefaultTTL = 10 * time.Second
	// MinTTL is the shortest Config.TTL accepted. etcd may grant a longer
	// TTL than asked (its minimum depends on its election timeout); the
	// granted one is used.
	MinTTL = time.Second

	minMargin    = 500 * time.Millisecond
	opTimeout    = 5 * time.Second // one etcd round trip made on our own behalf
	closeTimeout = 5 * time.Second // Close: releases plus revoke, at most TTL
)

// ErrClosed is returned by Acquire after Close.
var ErrClosed = errors.New("cluster: closed")

// ErrLeaseLost is returned by Acquire and Release when the node lease was
// not renewed in time (etcd unreachable, or the lease expired) while they
// ran, or before Release could record the position.
var ErrLeaseLost = errors.New("cluster: node lease lost")

// Config configures a Cluster.
type Config struct {
	// Endpoints are the etcd client URLs, e.g. "http://127.0.0.1:2379".
	Endpoints []string
	// NodeID names this node: unique in the cluster, 1 to 64 characters
	// of [A-Za-z0-9._-], the first a letter or digit.
	NodeID string
	// AdvertiseURL is where other nodes forward HTTP requests for the
	// tenants this node owns (see Forward), e.g. "http://10.0.0.5:8080".
	AdvertiseURL string
	// TTL of the node lease (default DefaultTTL, at least MinTTL). A node
	// that dies holds its tenants for up to TTL; a node that cannot reach
	// etcd stops relying on its tenants after TTL minus a margin.
	TTL time.Duration
	// MeterProvider, when set, counts ownership changes in the counter
	// sqliteproxy.cluster.ownership.changes with attribute event =
	// acquired, released or lost. Nil: no metrics.
	MeterProvider metric.MeterProvider
}

var nodeIDRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

func (cfg *Config) check() error {
	if len(cfg.Endpoints) == 0 {
		return errors.New("cluster: Config.Endpoints is empty: give at least one etcd client URL")
	}
	for _, e := range cfg.Endpoints {
		if strings.TrimSpace(e) == "" {
			return errors.New("cluster: Config.Endpoints has an empty endpoint")
		}
	}
	if cfg.NodeID == "" {
		return errors.New("cluster: Config.NodeID is empty")
	}
	if !nodeIDRe.MatchString(cfg.NodeID) {
		return fmt.Errorf("cluster: Config.NodeID %q is not a safe key segment: use 1 to 64 characters of [A-Za-z0-9._-], the first a letter or digit", cfg.NodeID)
	}
	if cfg.AdvertiseURL == "" {
		return errors.New("cluster: Config.AdvertiseURL is empty: other nodes forward requests for this node's tenants there")
	}
	u, err := url.Parse(cfg.AdvertiseURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("cluster: Config.AdvertiseURL %q is not an absolute http(s) URL", cfg.AdvertiseURL)
	}
	if cfg.TTL == 0 {
		cfg.TTL = DefaultTTL
	}
	if cfg.TTL < MinTTL {
		return fmt.Errorf("cluster: Config.TTL %v is shorter than %v", cfg.TTL, MinTTL)
	}
	return nil
}

// Node is a live node of the cluster.
type Node struct {
	ID  string // Config.NodeID
	URL string // Config.AdvertiseURL
}

// Owner is one owned tenant.
type Owner struct {
	Tenant     string
	Node       string // the owner's node ID
	Generation int64  // the owner's generation (fencing token)
}

type nodeValue struct {
	URL     string    `json:"url"`
	Started time.Time `json:"started"`
}

type genValue struct {
	Gen   int64  `json:"gen"`
	Pos   uint64 `json:"pos"`
	Node  string `json:"node"`
	Lease int64  `json:"lease,omitempty"` // the node lease it was written under
	// RelGen and RelPos carry the newest position a release recorded
	// (Pos > 0) through the records that recorded none since: an Acquire's
	// (its owner died before releasing) and a release at position 0.
	RelGen int64  `json:"rel_gen,omitempty"`
	RelPos uint64 `json:"rel_pos,omitempty"`
	// Deleted: the generations up to this one were erased by a delete;
	// what they hold since (a former owner's late upload or compaction)
	// is not the tenant. Carried by every record after it.
	Deleted int64 `json:"deleted,omitempty"`
}

// released is the newest generation a release recorded a position for,
// and that position, as record v tells them: its own when it has one,
// else the one it carries.
func (v genValue) released() (gen int64, pos uint64) {
	if v.Pos > 0 {
		return v.Gen, v.Pos
	}
	return v.RelGen, v.RelPos
}

// Cluster is this node's membership of a sqliteproxy cluster in etcd: it
// keeps one etcd lease alive for the node, takes and gives up tenants on it
// (it implements sqliteproxy.Ownership) and answers who owns a tenant.
type Cluster struct {
	cfg      Config
	cli      *clientv3.Client
	started  time.Time
	interval time.Duration // between renewals
	metrics  metrics

	ctx    context.Context // canceled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup
	once   sync.Once

	mu       sync.Mutex
	lease    clientv3.LeaseID // 0: none (expired; the renew loop grants one)
	ttl      time.Duration    // as granted
	healthy  bool             // renewed before the deadline
	healthyC chan struct{}    // closed while healthy
	lostAt   time.Time        // when it stopped being healthy (zero: healthy, or never was)
	deadline time.Time        // last renewal sent + ttl - margin
	// validUntil is deadline in UnixNano while healthy, 0 otherwise: read
	// without c.mu by tenantLease.Valid on every write.
	validUntil atomic.Int64
	timer      *time.Timer // fires expire at deadline
	epoch      uint64      // bumped whenever held tenants are lost
	held       map[string]*tenantLease
	pending    map[string]*acquireCall
	stale      map[string]int64 // tenant -> generation whose owner key (ours) must go
	closed     bool

	cache   ownerCache
	proxies sync.Map // owner URL -> *httputil.ReverseProxy

	acquired atomic.Pointer[func(id string, err error)] // tests: called as an acquire ends, before its joiners see it
}

var _ sqliteproxy.Ownership = (*Cluster)(nil)

type acquireCall struct {
	done    chan struct{}
	lease   *tenantLease
	err     error
	joiners int // callers waiting for it besides the one making it; guarded by Cluster.mu
}

// New joins the cluster: it connects to etcd, grants the node lease and
// registers the node under nodes/<NodeID>. If a node with the same ID is
// still registered (another process, or this one's previous run whose lease
// has not expired yet), New waits up to the TTL for it to go, then fails.
func New(cfg Config) (*Cluster, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	cli, err := newClient(cfg.Endpoints)
	if err != nil {
		return nil, fmt.Errorf("cluster: connect to etcd: %w", err)
	}
	c := &Cluster{
		cfg:      cfg,
		cli:      cli,
		started:  time.Now().UTC(),
		healthyC: make(chan struct{}),
		held:     make(map[string]*tenantLease),
		pending:  make(map[string]*acquireCall),
		stale:    make(map[string]int64),
	}
	c.metrics, err = newMetrics(cfg.MeterProvider)
	if err != nil {
		cli.Close()
		return nil, err
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.timer = time.AfterFunc(time.Hour, c.expire)
	c.timer.Stop()

	// The first registration is synchronous so that a wrong endpoint or a
	// duplicate NodeID fails New instead of every Acquire.
	wait := time.Now().Add(cfg.TTL + 2*time.Second)
	for {
		err = c.grant()
		if err == nil {
			break
		}
		if !errors.Is(err, errNodeRegistered) || time.Now().After(wait) {
			c.cancel()
			cli.Close()
			return nil, err
		}
		time.Sleep(250 * time.Millisecond)
	}
	c.wg.Add(2)
	go c.run()
	go c.watch()
	return c, nil
}

// gRPC keepalive on the connection to etcd. Without it, a connection that
// died silently (a partition or a dropped NAT entry: no reset reaches this
// side) is never replaced: every request waits on it until the kernel gives
// up, about 15 minutes, long after the network healed. With it, gRPC pings
// etcd when nothing was read for keepAliveTime, and closes the connection
// (then dials a new one) when nothing answers within keepAliveTimeout; it
// also sets TCP_USER_TIMEOUT to keepAliveTimeout, so data left unacknowledged
// that long (packets dropped) closes the connection sooner. A node whose
// connection died silently thus reconnects within keepAliveTime +
// keepAliveTimeout of it (plus at most a second of reconnect backoff).
//
// keepAliveTime is gRPC's minimum (it raises anything shorter to 10s), so the
// bound cannot scale down with a short TTL; it is above the 5s etcd accepts
// by default (--grpc-keepalive-min-time: pings more frequent than that are
// answered with GOAWAY "too many pings"). keepAliveTimeout leaves room for a
// few TCP retransmissions on a lossy link.
const (
	keepAliveTime    = 10 * time.Second
	keepAliveTimeout = 3 * time.Second
)

// newClient connects to etcd as both Cluster and Admin do.
func newClient(endpoints []string) (*clientv3.Client, error) {
	logCfg := zap.NewProductionConfig()
	logCfg.Level = zap.NewAtomicLevelAt(zap.ErrorLevel)
	return clientv3.New(clientv3.Config{
		Endpoints:            endpoints,
		DialTimeout:          opTimeout,
		DialKeepAliveTime:    keepAliveTime,
		DialKeepAliveTimeout: keepAliveTimeout,
		LogConfig:            &logCfg,
		// Reconnect soon after etcd comes back: gRPC's default backoff
		// grows to two minutes, far longer than a lease TTL.
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
			MinConnectTimeout: time.Second,
		})},
	})
}

var errNodeRegistered = errors.New("cluster: node ID already registered")

func margin(ttl time.Duration) time.Duration {
	return max(ttl/3, minMargin)
}

// grant takes a new node lease and registers the node on it.
func (c *Cluster) grant() error {
	ctx, cancel := context.WithTimeout(c.ctx, opTimeout)
	defer cancel()
	sent := time.Now()
	g, err := c.cli.Grant(ctx, int64((c.cfg.TTL+time.Second-1)/time.Second))
	if err != nil {
		return fmt.Errorf("cluster: grant node lease: %w", err)
	}
	val, _ := json.Marshal(nodeValue{URL: c.cfg.AdvertiseURL, Started: c.started})
	key := nodesPrefix + c.cfg.NodeID
	r, err := c.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, string(val), clientv3.WithLease(g.ID))).
		Commit()
	if err == nil && !r.Succeeded {
		err = fmt.Errorf("%w: %q (another process with this NodeID, or a previous run whose lease has not expired)", errNodeRegistered, c.cfg.NodeID)
	}
	if err != nil {
		rctx, rcancel := context.WithTimeout(context.Background(), opTimeout)
		c.cli.Revoke(rctx, g.ID) //nolint:errcheck // best effort: it expires anyway
		rcancel()
		return fmt.Errorf("cluster: register node: %w", err)
	}
	ttl := time.Duration(g.TTL) * time.Second
	c.mu.Lock()
	c.lease = g.ID
	c.ttl = ttl
	c.interval = max(ttl/6, 100*time.Millisecond)
	c.renewedLocked(sent)
	c.mu.Unlock()
	return nil
}

// run renews the node lease every TTL/6, grants a new one when it expired,
// and deletes owner keys left behind by lost tenants.
//
// It renews with KeepAliveOnce rather than the client's KeepAlive stream
// because the deadline must be computed from when a renewal was SENT: etcd
// renews the lease when it processes the request, which is after we sent
// it, so sent+TTL is a lower bound of the lease's expiry whatever the
// network delays. The stream hides that time, and renews only every TTL/3
// (plus up to 500 ms), too close to a TTL-TTL/3 deadline for short TTLs.
func (c *Cluster) run() {
	defer c.wg.Done()
	c.mu.Lock()
	tick := time.NewTicker(c.interval)
	c.mu.Unlock()
	defer tick.Stop()
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-tick.C:
		}
		c.renew()
		c.cleanStale()
	}
}

func (c *Cluster) renew() {
	c.mu.Lock()
	id, m := c.lease, margin(c.ttl)
	c.mu.Unlock()
	if id == 0 {
		c.grant() //nolint:errcheck // retried at the next tick
		return
	}
	ctx, cancel := context.WithTimeout(c.ctx, m)
	defer cancel()
	sent := time.Now()
	_, err := c.cli.KeepAliveOnce(ctx, id)
	switch {
	case err == nil:
		c.mu.Lock()
		if c.lease == id {
			c.renewedLocked(sent)
		}
		c.mu.Unlock()
	case errors.Is(err, rpctypes.ErrLeaseNotFound):
		// The lease expired (etcd was unreachable for longer than TTL):
		// its keys are gone. Lose what is still held and start over.
		c.mu.Lock()
		if c.lease == id {
			c.lease = 0
			c.unhealthyLocked()
		}
		c.mu.Unlock()
		c.grant() //nolint:errcheck // retried at the next tick
	}
	// Any other error: etcd is unreachable; expire fires at the deadline.
}

// renewedLocked records a renewal sent at sent.
func (c *Cluster) renewedLocked(sent time.Time) {
	d := sent.Add(c.ttl - margin(c.ttl))
	if d.Before(c.deadline) && c.healthy {
		return
	}
	c.deadline = d
	c.validUntil.Store(d.UnixNano())
	c.timer.Reset(time.Until(d))
	if !c.healthy && time.Now().Before(d) && !c.closed {
		c.healthy, c.lostAt = true, time.Time{}
		close(c.healthyC)
	}
}

// expire runs at the renew deadline.
func (c *Cluster) expire() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.healthy && !time.Now().Before(c.deadline) {
		c.unhealthyLocked()
	}
}

// unhealthyLocked stops relying on the lease: every held tenant is lost.
func (c *Cluster) unhealthyLocked() {
	c.validUntil.Store(0)
	if c.healthy {
		c.healthy, c.lostAt = false, time.Now()
		c.healthyC = make(chan struct{})
	}
	c.epoch++
	for id, l := range c.held {
		delete(c.held, id)
		c.stale[id] = l.ownerRev
		if l.kill() {
			c.metrics.add(eventLost)
		}
	}
}

// cleanStale deletes the owner keys of tenants this node lost, so other
// nodes need not wait for the whole node lease to expire. The delete is
// guarded by the generation: a newer ownership is never touched.
func (c *Cluster) cleanStale() {
	c.mu.Lock()
	if !c.healthy || len(c.stale) == 0 {
		c.mu.Unlock()
		return
	}
	todo := make(map[string]int64, len(c.stale))
	for id, gen := range c.stale {
		todo[id] = gen
	}
	c.mu.Unlock()
	for id, gen := range todo {
		if err := c.deleteOwner(c.ctx, id, gen); err != nil {
			return
		}
		c.mu.Lock()
		if c.stale[id] == gen {
			delete(c.stale, id)
		}
		c.mu.Unlock()
	}
}

// deleteOwner deletes owners/<id> if it is this node's generation gen.
func (c *Cluster) deleteOwner(ctx context.Context, id string, gen int64) error {
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	_, err := c.ifOwner(ctx, id, gen, clientv3.OpDelete(ownersPrefix+id))
	return err
}

// ifOwner runs ops in one etcd transaction if this node's ownership of
// tenant id taken at revision gen is still current (owners/<id> is this
// node's, created at gen); held reports whether it was, and ops ran.
func (c *Cluster) ifOwner(ctx context.Context, id string, gen int64, ops ...clientv3.Op) (held bool, err error) {
	key := ownersPrefix + id
	r, err := c.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.Value(key), "=", c.cfg.NodeID),
			clientv3.Compare(clientv3.CreateRevision(key), "=", gen)).
		Then(ops...).
		Commit()
	if err != nil {
		return false, err
	}
	return r.Succeeded, nil
}

// waitHealthy waits until the node lease is renewed in time.
func (c *Cluster) waitHealthy(ctx context.Context) (clientv3.LeaseID, uint64, error) {
	// At most a TTL from when the lease stopped being healthy (from now if
	// it is healthy or never was): a caller (an HTTP request, say) learns
	// soon that this node cannot take tenants now, instead of hanging until
	// its own deadline, however many times its request asks.
	c.mu.Lock()
	wait := c.cfg.TTL
	if !c.lostAt.IsZero() {
		wait -= time.Since(c.lostAt)
	}
	c.mu.Unlock()
	giveUp := time.NewTimer(max(wait, 0))
	defer giveUp.Stop()
	for {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return 0, 0, ErrClosed
		}
		if c.healthy {
			id, epoch := c.lease, c.epoch
			c.mu.Unlock()
			return id, epoch, nil
		}
		ch := c.healthyC
		c.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return 0, 0, fmt.Errorf("cluster: waiting for the node lease (etcd unreachable?): %w", ctx.Err())
		case <-giveUp.C:
			return 0, 0, c.noLeaseError()
		case <-c.ctx.Done():
			return 0, 0, ErrClosed
		}
	}
}

// offline reports whether the node lease is not healthy now (etcd
// unreachable, or the lease expired and no new one granted yet): then a
// round trip to etcd would most likely wait out its timeout.
func (c *Cluster) offline() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return !c.healthy
}

// noLeaseError says since when the node lease has not been healthy.
func (c *Cluster) noLeaseError() error {
	c.mu.Lock()
	lostAt := c.lostAt
	c.mu.Unlock()
	if lostAt.IsZero() { // healthy again meanwhile, or never was
		return fmt.Errorf("cluster: no node lease (etcd unreachable?): %w", ErrLeaseLost)
	}
	return fmt.Errorf("cluster: no node lease for the last %v, since %s (etcd unreachable?): %w",
		time.Since(lostAt).Round(100*time.Millisecond), lostAt.UTC().Format("15:04:05.000Z"), ErrLeaseLost)
}

// Acquire takes tenant id for this node, or returns the lease this node
// holds already. When another node owns it, it fails with an
// *sqliteproxy.OwnerError naming that node and its URL. While the node lease
// is not healthy (etcd unreachable) it waits, bounded by ctx and by the TTL
// counted from when the lease stopped being healthy (then it fails with
// ErrLeaseLost).
func (c *Cluster) Acquire(ctx context.Context, id string) (sqliteproxy.TenantLease, error) {
	for try := 0; ; try++ {
		l, err := c.acquireShared(ctx, id)
		if err != nil {
			return nil, err
		}
		// Marked used only while it is still held: a move elsewhere that
		// took it from held before this (onMove) saw it unused and gives it
		// up in the background, and the driver would write under a lease
		// released to the move's target.
		c.mu.Lock()
		held := c.held[id] == l
		if held {
			l.used = true
		}
		c.mu.Unlock()
		if held {
			return l, nil
		}
		if try == 2 {
			return nil, fmt.Errorf("cluster: tenant %q moved while it was acquired: %w", id, ErrLeaseLost)
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
	}
}

// acquireShared lets concurrent Acquire calls for one tenant on this node
// share one round of etcd transactions.
func (c *Cluster) acquireShared(ctx context.Context, id string) (*tenantLease, error) {
	if err := sqliteproxy.ValidTenantID(id); err != nil {
		return nil, err
	}
	for {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return nil, ErrClosed
		}
		if l := c.held[id]; l != nil {
			c.mu.Unlock()
			return l, nil
		}
		if call := c.pending[id]; call != nil {
			call.joiners++
			c.mu.Unlock()
			select {
			case <-call.done:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			if call.err == nil {
				continue // held now (or lost already: then acquire again)
			}
			if ctx.Err() == nil && (errors.Is(call.err, context.Canceled) || errors.Is(call.err, context.DeadlineExceeded)) {
				continue // the other caller's context ended, not ours
			}
			return nil, call.err
		}
		call := &acquireCall{done: make(chan struct{})}
		c.pending[id] = call
		c.mu.Unlock()

		l, err := c.acquire(ctx, id)
		if f := c.acquired.Load(); f != nil {
			(*f)(id, err)
		}

		c.mu.Lock()
		delete(c.pending, id)
		call.lease, call.err = l, err
		close(call.done)
		c.mu.Unlock()
		return l, err
	}
}

// acquire takes the tenant in etcd.
//
// Generations. The owner key is created only if absent (Txn If
// CreateRevision == 0), so the etcd revision of that transaction, which is
// the key's CreateRevision, is unique, strictly larger than any earlier
// generation of the tenant, and known only once the transaction committed:
// the response header's revision is the revision of the transaction's
// writes. The same transaction reads gens/<id>, the previous generation and
// the position it was released with: nobody else can write gens/<id> while
// the owner key is absent or owned by someone else (every write of it is
// guarded by owning the owner key), so that read is the state the previous
// owner left.
//
// gens/<id> must name the new generation before the tenant is written
// (else, if this node died, the next owner would restore from the older
// generation and lose what was written here). The revision is not known
// inside the first transaction, so a second transaction writes it, guarded
// by If owners/<id> CreateRevision == gen AND value == this node: it
// succeeds only while this very ownership is current, so it can never
// overwrite a later generation, and if the ownership vanished in between
// (lease expired), gens/<id> keeps the previous owner's record, which is
// still right because nothing was written in the new generation: Acquire
// fails and the caller never opens the tenant.
func (c *Cluster) acquire(ctx context.Context, id string) (*tenantLease, error) {
	ownerKey, genKey, moveKey := ownersPrefix+id, gensPrefix+id, movesPrefix+id
	tgt, moving := c.cache.move(id)
	target := moving && tgt == c.cfg.NodeID // of a pending move: only this node may take it
	if moving && !target {
		return nil, c.movingTo(ctx, id, tgt)
	}
	for attempt := 0; ; attempt++ {
		leaseID, epoch, err := c.waitHealthy(ctx)
		if err != nil {
			return nil, err
		}
		conds := []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(ownerKey), "=", 0)}
		if !target {
			conds = append(conds, clientv3.Compare(clientv3.CreateRevision(moveKey), "=", 0))
		}
		r, err := c.claim(ctx, id, func(tctx context.Context) (*clientv3.TxnResponse, error) {
			return c.cli.Txn(tctx).
				If(conds...).
				Then(clientv3.OpGet(genKey), clientv3.OpPut(ownerKey, c.cfg.NodeID, clientv3.WithLease(leaseID))).
				Else(clientv3.OpGet(ownerKey), clientv3.OpGet(moveKey)).
				Commit()
		})
		if err != nil {
			if errors.Is(err, rpctypes.ErrLeaseNotFound) {
				return nil, fmt.Errorf("cluster: acquire %q: %w", id, ErrLeaseLost)
			}
			return nil, fmt.Errorf("cluster: acquire %q: %w", id, err)
		}
		if !r.Succeeded {
			kvs := r.Responses[0].GetResponseRange().Kvs
			if len(kvs) == 0 { // unowned, but a move is pending
				if m := r.Responses[1].GetResponseRange().Kvs; len(m) > 0 {
					if tgt := string(m[0].Value); tgt != c.cfg.NodeID {
						return nil, c.movingTo(ctx, id, tgt)
					}
					target = true
				}
				if attempt >= 3 {
					return nil, fmt.Errorf("cluster: acquire %q: a move of it keeps changing", id)
				}
				continue
			}
			owner := string(kvs[0].Value)
			if owner != c.cfg.NodeID {
				return nil, &sqliteproxy.OwnerError{Tenant: id, Owner: owner, OwnerURL: c.nodeURL(ctx, owner)}
			}
			// Ours, but not held: left by a lease this node lost. That
			// generation may not be written any more: end it and take a
			// new one.
			if attempt >= 3 {
				return nil, fmt.Errorf("cluster: acquire %q: a stale ownership of this node keeps coming back", id)
			}
			if err := c.deleteOwner(ctx, id, kvs[0].CreateRevision); err != nil {
				return nil, fmt.Errorf("cluster: acquire %q: end stale ownership: %w", id, err)
			}
			continue
		}
		rev := r.Header.Revision // the owner key's create revision
		var prev genValue
		var prevRaw []byte
		if kvs := r.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
			prevRaw = kvs[0].Value
			if err := json.Unmarshal(kvs[0].Value, &prev); err != nil {
				c.abandon(id, rev)
				return nil, fmt.Errorf("cluster: acquire %q: bad %s: %w", id, genKey, err)
			}
		}
		// The generation is the owner key's revision, except when this
		// node takes back a tenant it released under the same node lease
		// with nobody in between (gens/<id> is still its own record): then
		// nobody else can have written the tenant since, and it goes on in
		// the same generation, incrementally (a new generation starts with
		// a snapshot of the whole database).
		// Not after a release at position 0 (a delete, or nothing ever
		// synced): a copy of the tenant from before a delete would have
		// passed for the same generation's (README: "a copy of another
		// generation is replaced").
		gen := rev
		if prev.Node == c.cfg.NodeID && prev.Lease == int64(leaseID) && prev.Gen > 0 && prev.Pos > 0 {
			gen = prev.Gen
		}
		// The position the last release recorded is carried: if this node
		// dies before it releases, the next owner still refuses a replica
		// behind it (a store that lost its last uploads). Not into the
		// generation it is of: this lease may erase that generation's
		// replica (a delete) and write it anew from its first transaction,
		// which the position would then refuse forever (adv35).
		relGen, relPos := prev.released()
		rec := genValue{Gen: gen, Node: c.cfg.NodeID, Lease: int64(leaseID), Deleted: prev.Deleted}
		if relGen != gen {
			rec.RelGen, rec.RelPos = relGen, relPos
		}
		val, _ := json.Marshal(rec)
		held, err := c.ifOwner(ctx, id, rev, clientv3.OpPut(genKey, string(val)))
		if err == nil && !held {
			err = ErrLeaseLost
		}
		if err != nil {
			c.abandon(id, rev)
			return nil, fmt.Errorf("cluster: acquire %q: record generation: %w", id, err)
		}
		l := &tenantLease{c: c, tenant: id, gen: gen, ownerRev: rev, lease: int64(leaseID), prevGen: prev.Gen, prevPos: prev.Pos, relGen: relGen, relPos: relPos, deleted: prev.Deleted, prevRaw: prevRaw, lost: make(chan struct{})}
		c.mu.Lock()
		if c.closed || !c.healthy || c.epoch != epoch || c.lease != leaseID {
			c.stale[id] = rev
			c.mu.Unlock()
			return nil, fmt.Errorf("cluster: acquire %q: %w", id, ErrLeaseLost)
		}
		if tgt, ok := c.cache.move(id); ok && tgt != c.cfg.NodeID {
			// A move to another node began after the claim: its onMove
			// found nothing held here and did nothing, and the move
			// waited for a release that never came. (The cache has the
			// move before onMove runs: one that comes later finds l.)
			c.mu.Unlock()
			c.releaseUnused(l)
			return nil, c.movingTo(ctx, id, tgt)
		}
		c.held[id] = l
		c.metrics.add(eventAcquired)
		c.mu.Unlock()
		return l, nil
	}
}

// claim runs acquire's first transaction, which may create this node's
// owner key, on a context of its own, bounded by opTimeout and Close, so
// that its outcome is known: run on the caller's, a context that ended as
// etcd committed it left the key on the node lease with nothing here
// knowing (149 of 200 acquires with deadlines of a few ms), and every
// other node was refused the tenant for as long as this one lived. A caller
// whose ctx ends first gets its error at once, and a key the transaction
// then turns out to have created is deleted.
func (c *Cluster) claim(ctx context.Context, id string, txn func(context.Context) (*clientv3.TxnResponse, error)) (*clientv3.TxnResponse, error) {
	type result struct {
		r   *clientv3.TxnResponse
		err error
	}
	ch := make(chan result, 1)
	var decided atomic.Bool // by the transaction's end (the caller takes its result) or the caller leaving
	go func() {
		tctx, cancel := context.WithTimeout(c.ctx, opTimeout)
		r, err := txn(tctx)
		cancel()
		if decided.CompareAndSwap(false, true) {
			ch <- result{r, err}
			return
		}
		if err == nil && r.Succeeded {
			c.abandon(id, r.Header.Revision) // the caller left: nobody uses it
		}
	}()
	select {
	case res := <-ch:
		return res.r, res.err
	case <-ctx.Done():
		if decided.CompareAndSwap(false, true) {
			return nil, ctx.Err()
		}
		res := <-ch // ended as the caller's ctx did: its result stands
		return res.r, res.err
	}
}

// abandon gives up an ownership Acquire could not complete.
func (c *Cluster) abandon(id string, gen int64) {
	if c.deleteOwner(c.ctx, id, gen) != nil {
		c.mu.Lock()
		c.stale[id] = gen
		c.mu.Unlock()
	}
}

// nodeURL is the advertised URL of a live node ("" when not registered).
func (c *Cluster) nodeURL(ctx context.Context, node string) string {
	if u, ok := c.cache.nodeURL(node); ok {
		return u
	}
	if c.offline() {
		return "" // not worth waiting opTimeout for: the URL is only a hint
	}
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	r, err := c.cli.Get(ctx, nodesPrefix+node)
	if err != nil || len(r.Kvs) == 0 {
		return ""
	}
	var v nodeValue
	if json.Unmarshal(r.Kvs[0].Value, &v) != nil {
		return ""
	}
	return v.URL
}

// NodeID is this node's ID.
func (c *Cluster) NodeID() string { return c.cfg.NodeID }

// Owner says which node owns tenant id and that node's advertised URL (""
// when that node is not registered any more: its lease is expiring). ok is
// false when nobody owns the tenant. It answers from a cache kept by an
// etcd watch, and asks etcd only on a miss. On a miss while the node lease
// is not healthy (etcd unreachable) it does not ask etcd: it fails at once
// with an error wrapping ErrLeaseLost, as Acquire would.
func (c *Cluster) Owner(ctx context.Context, id string) (node, url string, ok bool, err error) {
	if n, ok := c.cache.owner(id); ok {
		u, _ := c.cache.nodeURL(n)
		if u == "" {
			u = c.nodeURL(ctx, n)
		}
		return n, u, true, nil
	}
	if c.offline() {
		// Every request for an unknown tenant (Forward asks for each)
		// would otherwise wait opTimeout for an answer that is not coming.
		return "", "", false, fmt.Errorf("cluster: owner of %q: %w", id, c.noLeaseError())
	}
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	r, err := c.cli.Get(ctx, ownersPrefix+id)
	if err != nil {
		return "", "", false, fmt.Errorf("cluster: owner of %q: %w", id, err)
	}
	if len(r.Kvs) == 0 {
		return "", "", false, nil
	}
	node = string(r.Kvs[0].Value)
	return node, c.nodeURL(ctx, node), true, nil
}

// Nodes lists the live nodes, sorted by ID.
func (c *Cluster) Nodes(ctx context.Context) ([]Node, error) { return listNodes(ctx, c.cli) }

// Owners lists the owned tenants, sorted by tenant.
func (c *Cluster) Owners(ctx context.Context) ([]Owner, error) { return listOwners(ctx, c.cli) }

func listNodes(ctx context.Context, cli *clientv3.Client) ([]Node, error) {
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	r, err := cli.Get(ctx, nodesPrefix, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("cluster: list nodes: %w", err)
	}
	nodes := make([]Node, 0, len(r.Kvs))
	for _, kv := range r.Kvs {
		var v nodeValue
		_ = json.Unmarshal(kv.Value, &v) // a bad value lists with no URL
		nodes = append(nodes, Node{ID: strings.TrimPrefix(string(kv.Key), nodesPrefix), URL: v.URL})
	}
	sort.Slice(nodes, func(i, j int) bool { return nodes[i].ID < nodes[j].ID })
	return nodes, nil
}

func listOwners(ctx context.Context, cli *clientv3.Client) ([]Owner, error) {
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	r, err := cli.Txn(ctx).Then(clientv3.OpGet(ownersPrefix, clientv3.WithPrefix()), clientv3.OpGet(gensPrefix, clientv3.WithPrefix())).Commit()
	if err != nil {
		return nil, fmt.Errorf("cluster: list owners: %w", err)
	}
	gens := map[string]genValue{}
	for _, kv := range r.Responses[1].GetResponseRange().Kvs {
		var g genValue
		if json.Unmarshal(kv.Value, &g) == nil {
			gens[strings.TrimPrefix(string(kv.Key), gensPrefix)] = g
		}
	}
	kvs := r.Responses[0].GetResponseRange().Kvs
	owners := make([]Owner, 0, len(kvs))
	for _, kv := range kvs {
		o := Owner{Tenant: strings.TrimPrefix(string(kv.Key), ownersPrefix), Node: string(kv.Value), Generation: kv.CreateRevision}
		if g, ok := gens[o.Tenant]; ok && g.Node == o.Node {
			o.Generation = g.Gen // the same, or an earlier one this node went on with
		}
		owners = append(owners, o)
	}
	sort.Slice(owners, func(i, j int) bool { return owners[i].Tenant < owners[j].Tenant })
	return owners, nil
}

// Close gives up every tenant this node holds (their Lost channels close),
// revokes the node lease so that other nodes can take the tenants at once,
// and disconnects from etcd. It is bounded (a few seconds when etcd is
// unreachable: then the lease expires after TTL instead).
func (c *Cluster) Close() error {
	var err error
	c.once.Do(func() {
		c.mu.Lock()
		c.closed = true
		held := make([]*tenantLease, 0, len(c.held))
		for _, l := range c.held {
			held = append(held, l)
		}
		c.mu.Unlock()

		// No point in trying longer than the lease lives anyway.
		ctx, cancel := context.WithTimeout(context.Background(), min(closeTimeout, c.cfg.TTL))
		defer cancel()
		for _, l := range held {
			// Position 0: unknown. The driver releases with the real one
			// before closing the cluster; this only ends what is left. A
			// lease only taken for a move, never given to the driver, wrote
			// nothing.
			c.mu.Lock()
			used := l.used
			c.mu.Unlock()
			release := func() error { return l.Release(ctx, 0) }
			if !used {
				release = func() error { return l.ReleaseUnwritten(ctx) }
			}
			if release() != nil {
				c.forget(l, eventLost)
			}
		}
		c.cancel()
		c.wg.Wait()
		c.timer.Stop()
		c.proxies.Range(func(_, p any) bool { // Forward's connections to other nodes
			p.(*httputil.ReverseProxy).Transport.(*http.Transport).CloseIdleConnections()
			return true
		})
		c.mu.Lock()
		id := c.lease
		c.lease = 0
		c.mu.Unlock()
		if id != 0 {
			if _, e := c.cli.Revoke(ctx, id); e != nil {
				err = fmt.Errorf("cluster: revoke node lease: %w", e)
			}
		}
		if e := c.cli.Close(); e != nil && err == nil && !errors.Is(e, context.Canceled) {
			err = e
		}
	})
	return err
}

// kill stops the node without revoking its lease or releasing anything, as
// if the process died: for tests.
func (c *Cluster) kill() {
	c.once.Do(func() {
		c.mu.Lock()
		c.closed = true
		c.mu.Unlock()
		c.cancel()
		c.wg.Wait()
		c.timer.Stop()
		c.proxies.Range(func(_, p any) bool { // Forward's connections to other nodes
			p.(*httputil.ReverseProxy).Transport.(*http.Transport).CloseIdleConnections()
			return true
		})
		c.cli.Close()
	})
}

// forget drops l from the held tenants and closes its Lost channel.
func (c *Cluster) forget(l *tenantLease, ev event) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.held[l.tenant] == l {
		delete(c.held, l.tenant)
	}
	if l.kill() {
		c.metrics.add(ev)
	}
}

// tenantLease implements sqliteproxy.TenantLease.
type tenantLease struct {
	c        *Cluster
	tenant   string
	gen      int64 // the generation (fencing token)
	ownerRev int64 // the create revision of owners/<tenant>: guards every later change
	lease    int64 // the node lease it was taken under
	prevGen  int64
	prevPos  uint64
	relGen   int64  // the newest generation a release recorded a position for (Released)
	relPos   uint64 // and that position
	deleted  int64  // the generations up to this one were erased by a delete (Deleted)
	unsure   int64  // a MarkDeleted up to this one etcd may have taken, its answer lost
	prevRaw  []byte // gens/<tenant> as it found it (nil: none), put back by ReleaseUnwritten

	lost     chan struct{}
	lostOnce sync.Once
	used     bool // returned by Acquire (to the driver), not only taken for a move; guarded by c.mu

	relMu    sync.Mutex
	released bool
}

func (l *tenantLease) Generation() int64                 { return l.gen }
func (l *tenantLease) Previous() (gen int64, pos uint64) { return l.prevGen, l.prevPos }
func (l *tenantLease) Lost() <-chan struct{}             { return l.lost }

// Released is the newest generation a release recorded a position for,
// and that position (0, 0: none): Previous's when its owner released it
// with one, else the one carried since through owners that recorded none
// (one died before releasing; one released at position 0, having uploaded
// nothing, or deleted the tenant), unless they went on in that very
// generation. The driver refuses a replica of that generation behind that
// position, or whose newest generation is older.
func (l *tenantLease) Released() (gen int64, pos uint64) {
	l.relMu.Lock()
	defer l.relMu.Unlock()
	return l.relGen, l.relPos
}

// Valid reports whether the lease may still be relied on now: Lost has not
// closed, and the node's last renewal still covers this moment. Lost is
// closed by a timer, which a process stopped past its deadline (SIGSTOP, a
// VM paused) runs late: the writes it served meanwhile were acknowledged
// under a generation another node had taken over. The driver asks Valid
// before each write and in Proxy.Generation.
func (l *tenantLease) Valid() bool {
	select {
	case <-l.lost:
		return false
	default:
	}
	return time.Now().UnixNano() < l.c.validUntil.Load()
}

// kill closes Lost; it reports whether this call did.
func (l *tenantLease) kill() bool {
	did := false
	l.lostOnce.Do(func() { close(l.lost); did = true })
	return did
}

// Release gives the tenant up and records pos, the final replicated
// position, for the next owner. Calling it again is a no-op. It may be
// called after Lost closed: while the ownership is still current in etcd
// the position is recorded, otherwise it fails with ErrLeaseLost. When etcd
// cannot be reached it fails, and the lease is lost (Lost closes; Acquire
// takes the tenant anew, as etcd may have committed the release): the call
// can be retried, and records the position if the ownership is still there.
func (l *tenantLease) Release(ctx context.Context, pos uint64) error {
	l.relMu.Lock()
	v := genValue{Gen: l.gen, Pos: pos, Node: l.c.cfg.NodeID, Lease: l.lease, Deleted: l.deleted}
	if pos == 0 && l.relGen != l.gen { // not into its own generation: see acquire
		v.RelGen, v.RelPos = l.relGen, l.relPos
	}
	l.relMu.Unlock()
	val, _ := json.Marshal(v)
	return l.release(ctx, clientv3.OpPut(gensPrefix+l.tenant, string(val)), fmt.Sprintf("generation %d: position not recorded", l.gen))
}

// Deleted is the newest generation that a delete erased, with every older
// one (0: none): what the replica holds of them since (a former owner's
// late upload or compaction) is not the tenant. The driver restores from
// newer generations only.
func (l *tenantLease) Deleted() int64 {
	l.relMu.Lock()
	defer l.relMu.Unlock()
	return max(l.deleted, l.unsure)
}

// ReleaseDeleted gives the tenant up after a delete erased its replica,
// every generation of it, this lease's included: the next owner restores
// from none of them (Deleted), whatever they hold again by then.
func (l *tenantLease) ReleaseDeleted(ctx context.Context) error {
	val, _ := json.Marshal(genValue{Gen: l.gen, Node: l.c.cfg.NodeID, Lease: l.lease, Deleted: l.gen})
	return l.release(ctx, clientv3.OpPut(gensPrefix+l.tenant, string(val)), fmt.Sprintf("generation %d: delete not recorded", l.gen))
}

// MarkDeleted records, while this lease is held, that the generations up
// to upTo (this lease's at most) are deleted (Deleted), for every later
// owner, also if this node dies before it releases. A delete marks them all
// (upTo = Generation) before it erases the replica, so that the delete
// stands even if its release is never recorded; a delete finished late, by
// the lease that goes on writing the tenant anew in its generation, marks
// the older ones (upTo = Generation - 1) once it has erased them. It fails
// when the ownership is no longer this lease's.
func (l *tenantLease) MarkDeleted(ctx context.Context, upTo int64) error {
	l.relMu.Lock()
	defer l.relMu.Unlock()
	if l.released || time.Now().UnixNano() >= l.c.validUntil.Load() {
		// Released, or not renewed in time (etcd out of reach): this node
		// cannot tell it still owns the tenant.
		return fmt.Errorf("cluster: mark %q deleted: %w", l.tenant, ErrLeaseLost)
	}
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	upTo = min(upTo, l.gen)
	val, _ := json.Marshal(genValue{Gen: l.gen, Node: l.c.cfg.NodeID, Lease: l.lease, Deleted: upTo})
	held, err := l.c.ifOwner(ctx, l.tenant, l.ownerRev, clientv3.OpPut(gensPrefix+l.tenant, string(val)))
	if err == nil && !held {
		return fmt.Errorf("cluster: mark %q deleted: %w", l.tenant, ErrLeaseLost)
	}
	if err != nil {
		// etcd may have taken it (a timeout after the commit): Deleted
		// says the higher mark until a MarkDeleted succeeds, so that the
		// driver records this lease's generation live again before it
		// writes it (adv39). Release records what is known.
		l.unsure = max(l.unsure, upTo)
		return fmt.Errorf("cluster: mark %q deleted: %w", l.tenant, err)
	}
	l.deleted, l.unsure, l.relGen, l.relPos = upTo, 0, 0, 0
	l.prevRaw = val // what ReleaseUnwritten puts back: the delete stays recorded
	return nil
}

// ReleaseUnwritten gives the tenant up as if this lease had never been
// taken: nothing was written under it (the driver never streamed the
// tenant in its generation, nor deleted it). The tenant's generation
// record goes back to what it was before the lease (the generation written
// last and the position it was released with), so that the next owner
// still checks that position, and does not take a look that found nothing
// for a delete (which is recorded by Release at position 0). Calling it
// again, or after Release, is a no-op.
func (l *tenantLease) ReleaseUnwritten(ctx context.Context) error {
	genKey := gensPrefix + l.tenant
	op := clientv3.OpDelete(genKey)
	l.relMu.Lock()
	if l.prevRaw != nil {
		op = clientv3.OpPut(genKey, string(l.prevRaw))
	}
	l.relMu.Unlock()
	return l.release(ctx, op, "generation record not put back")
}

// release ends the lease: it deletes the owner key and records the
// tenant's generation with genOp, while this lease's owner key is still
// there.
func (l *tenantLease) release(ctx context.Context, genOp clientv3.Op, lostWhat string) error {
	l.relMu.Lock()
	defer l.relMu.Unlock()
	if l.released {
		return nil
	}
	c := l.c
	if time.Now().UnixNano() >= c.validUntil.Load() {
		// The node's lease was not renewed in time (etcd out of reach):
		// this node cannot tell it still owns the tenant, nor record a
		// position for it. Asking etcd waited out ctx (the driver's 5 s,
		// past a 2 s TTL) while the driver held the tenant's writer, and
		// the writes queued behind it waited too, where they are refused
		// at once. (A move also ends the lease with Lost, and releases it
		// here: with a healthy node lease.) Lost now, as the expiry would
		// make it; its owner key is deleted once the node lease is healthy
		// again (cleanStale), or a renewal that came late kept it for the
		// node's lifetime.
		c.mu.Lock()
		c.stale[l.tenant] = l.ownerRev
		c.mu.Unlock()
		c.forget(l, eventLost)
		return fmt.Errorf("cluster: release %q: %w", l.tenant, ErrLeaseLost)
	}
	held, err := c.ifOwner(ctx, l.tenant, l.ownerRev, clientv3.OpDelete(ownersPrefix+l.tenant), genOp)
	if err != nil {
		// Whether etcd committed it is not known (its answer lost, a
		// timeout after the commit): the ownership may be over, and the
		// lease must not be handed out again (Acquire returns a held
		// lease: a node wrote, and acknowledged SyncTenant, under an owner
		// key another node had taken since, adv28). Lost now; its owner
		// key, if still there, is deleted once etcd answers (cleanStale),
		// and a retry of this call may still record the position.
		c.mu.Lock()
		c.stale[l.tenant] = l.ownerRev
		c.mu.Unlock()
		c.forget(l, eventLost)
		return fmt.Errorf("cluster: release %q: %w", l.tenant, err)
	}
	l.released = true
	c.mu.Lock()
	if c.stale[l.tenant] == l.ownerRev {
		delete(c.stale, l.tenant)
	}
	c.mu.Unlock()
	if !held {
		c.forget(l, eventLost)
		return fmt.Errorf("cluster: release %q %s: %w", l.tenant, lostWhat, ErrLeaseLost)
	}
	c.forget(l, eventReleased)
	return nil
}
