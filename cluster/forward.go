package cluster

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/http/httputil"
	"net/url"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/sqliteproxy/sqliteproxy"
)

// ForwardedByHeader marks a request forwarded by Forward; its value is the
// forwarding node's ID. A request that carries it is always served locally,
// so a request is forwarded at most once even while nodes disagree about
// an owner.
const ForwardedByHeader = "X-Sqliteproxy-Forwarded-By"

// Forward returns a handler that sends each request for a tenant owned by
// another live node to that node (one hop, with httputil.ReverseProxy to
// its AdvertiseURL, the Host header kept) and serves every other request
// with next: no tenant, a tenant this node owns, an unowned tenant (the
// driver's Acquire takes it here), an owner that is not registered any
// more, or a failed owner lookup. An owner this node could not connect to
// (refused: a node shutting down closes its listener before it releases
// its tenants; or the dial timed out: a dead host, whose lease ends within
// the TTL), with no connection to it used for the request, has not seen
// the request: it waits
// up to a TTL (and while its context lives) for the tenant to change hands,
// then goes to the next owner or is served here, body included. An owner
// that keeps the tenant meanwhile, or that accepted the request and has not
// answered when its lease on the tenant ends, gets 503 with Retry-After:
// the TTL, after which another node takes the tenant.
//
// The owner gets the request as this node got it: its X-Forwarded-Proto,
// X-Forwarded-Host and Forwarded as they came (from a load balancer, say), and its
// X-Forwarded-For with this node's peer appended; trust them as far as you
// trust what reaches your nodes. An invalid tenant ID is served here (the
// driver refuses it) without an owner lookup, and so is every request
// once the Cluster is closed.
//
// It reads the tenant with sqliteproxy.OrgID, so mount it inside the
// middleware that puts the tenant in the request context. The owner comes
// from a cache kept by an etcd watch: no etcd round trip per request, except
// to check a tenant the cache says is unowned, and not even that while this
// node's lease is not healthy (etcd unreachable): such a request is served
// here at once, where the driver's Acquire answers it.
func (c *Cluster) Forward(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, ok := sqliteproxy.OrgID(r.Context())
		if !ok || id == "" || r.Header.Get(ForwardedByHeader) != "" || c.ctx.Err() != nil || sqliteproxy.ValidTenantID(id) != nil {
			// Served here: no tenant, forwarded once already, this node
			// closed, or an ID no node can own (which the driver refuses
			// with its own error) without asking etcd about it.
			next.ServeHTTP(w, r)
			return
		}
		var body *forwardBody
		if r.Body != nil && r.Body != http.NoBody {
			body = &forwardBody{rc: r.Body}
			r.Body = body
		}
		for tries := 0; ; tries++ {
			node, u, owned, err := c.Owner(r.Context(), id)
			if err != nil || !owned || node == c.cfg.NodeID || u == "" {
				next.ServeHTTP(w, r)
				return
			}
			p, err := c.proxy(u)
			if err != nil {
				next.ServeHTTP(w, r)
				return
			}
			if !c.forward(w, r, p, id, node, body, tries < maxForwardTries-1) {
				return
			}
			// The owner refused the connection: nothing of the request
			// reached it. A node shutting down closes its listener before
			// it releases its tenants, and a dead one's leases end within a
			// TTL: wait (as the 503's Retry-After would tell the client to)
			// for the tenant to change hands, then serve it where it is.
			if !c.awaitOwnerChange(r.Context(), id, node) {
				unreachable(w, c.cfg.TTL)
				return
			}
		}
	})
}

// maxForwardTries bounds the owners one request is offered to, each refused
// connection waiting for the next owner.
const maxForwardTries = 3

// forward sends r to the owner node through p and reports whether it was
// not sent at all (the connection to the owner was refused, nothing of r
// read) and may go elsewhere (retry allows it); otherwise the response,
// or the 503 of an unreachable owner, has been written.
func (c *Cluster) forward(w http.ResponseWriter, r *http.Request, p *httputil.ReverseProxy, id, node string, body *forwardBody, retry bool) (refused bool) {
	// An owner that accepts the connection and never answers (stopped,
	// hung) held the request for as long as it did. Once the tenant is
	// not that node's any more (its lease ended: another node takes
	// it), the request ends with the 503 of an unreachable owner.
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	go c.cancelOnOwnerChange(ctx, cancel, id, node)
	var a *forwardAttempt
	if retry {
		a = &forwardAttempt{body: body}
		ctx = context.WithValue(ctx, forwardAttemptKey{}, a)
		// A connection the transport had (a kept-alive one) may have
		// carried the request before the owner died: the transport then
		// retries an idempotent request on a new dial on its own, and that
		// dial's refusal says nothing of the first.
		ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
			GotConn: func(httptrace.GotConnInfo) { a.connected.Store(true) },
		})
	}
	p.ServeHTTP(w, r.WithContext(ctx))
	return a != nil && a.refused
}

// forwardAttempt is what the proxy's ErrorHandler reports to forward of one
// request: the owner refused the connection, and nothing was written.
type forwardAttempt struct {
	body      *forwardBody
	connected atomic.Bool // the transport got a connection to the owner
	refused   bool
}

type forwardAttemptKey struct{}

// forwardBody is a request's body as the owner's transport sees it: its
// Close (which the transport calls on any error) is kept from the
// server's body, so a request the owner refused can still be served, and
// it tells whether any of it was read.
type forwardBody struct {
	rc   io.ReadCloser
	read atomic.Bool // set by the transport's goroutine
}

func (b *forwardBody) Read(p []byte) (int, error) {
	b.read.Store(true)
	return b.rc.Read(p)
}

func (b *forwardBody) Close() error { return nil } // the server closes the request's body

// awaitOwnerChange waits until tenant id is not node's any more, for at
// most a TTL (within which a dead node's lease ends) and while ctx lives,
// and reports whether it changed.
func (c *Cluster) awaitOwnerChange(ctx context.Context, id, node string) bool {
	forwardWaits.Add(1)
	defer forwardWaits.Add(-1)
	deadline := time.NewTimer(c.cfg.TTL)
	defer deadline.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		if n, _, owned, err := c.Owner(ctx, id); err == nil && (!owned || n != node) {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-c.ctx.Done():
			return false
		case <-deadline.C:
			return false
		case <-tick.C:
		}
	}
}

// forwardWaits counts requests waiting in awaitOwnerChange (for tests).
var forwardWaits atomic.Int32

// refusedConn reports whether err is a refused connection to the owner:
// its dial failed, so nothing of the request left this node.
func refusedConn(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// unreachable writes the 503 of an owner that does not answer: within a
// TTL its lease ends and another node takes the tenant.
func unreachable(w http.ResponseWriter, ttl time.Duration) {
	w.Header().Set("Retry-After", strconv.Itoa(int((ttl+time.Second-1)/time.Second)))
	http.Error(w, "sqliteproxy cluster: the tenant's owner node is unreachable; retry", http.StatusServiceUnavailable)
}

// cancelOnOwnerChange calls cancel once tenant id is not node's any more,
// looking every third of the TTL, until ctx ends.
func (c *Cluster) cancelOnOwnerChange(ctx context.Context, cancel context.CancelFunc, id, node string) {
	tick := time.NewTicker(max(c.cfg.TTL/3, 100*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			if n, _, owned, err := c.Owner(ctx, id); err == nil && (!owned || n != node) {
				cancel()
				return
			}
		}
	}
}

func (c *Cluster) proxy(owner string) (*httputil.ReverseProxy, error) {
	if p, ok := c.proxies.Load(owner); ok {
		return p.(*httputil.ReverseProxy), nil
	}
	target, err := url.Parse(owner)
	if err != nil {
		return nil, err
	}
	self := c.cfg.NodeID
	// Node to node, never through HTTP_PROXY: a proxy's connection
	// answered for the owner (its 502 for a refused owner, no retry).
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = nil
	p := &httputil.ReverseProxy{
		Transport: tr,
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.Host = pr.In.Host // a tenant resolved from the Host resolves the same there
			// The owner sees the request as this node got it: the client
			// chain a load balancer put in X-Forwarded-For, with this
			// node's peer appended, and the load balancer's
			// X-Forwarded-Proto and -Host and RFC 7239 Forwarded, as they
			// came (ReverseProxy drops them, and the owner logged this
			// node as the client, over http).
			pr.Out.Header["X-Forwarded-For"] = pr.In.Header["X-Forwarded-For"]
			pr.SetXForwarded()
			for _, h := range [...]string{"X-Forwarded-Proto", "X-Forwarded-Host", "Forwarded"} {
				if v := pr.In.Header.Values(h); len(v) > 0 {
					pr.Out.Header[h] = v
				}
			}
			pr.Out.Header.Set(ForwardedByHeader, self)
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if a, _ := r.Context().Value(forwardAttemptKey{}).(*forwardAttempt); a != nil && refusedConn(err) && !a.connected.Load() && (a.body == nil || !a.body.read.Load()) {
				a.refused = true // forward's caller offers it again
				return
			}
			// The owner died or is cut off: within a TTL its lease ends
			// and another node takes the tenant. Like a tenant being
			// moved, this is a wait, not a failure of the request.
			unreachable(w, c.cfg.TTL)
		},
	}
	actual, _ := c.proxies.LoadOrStore(owner, p)
	return actual.(*httputil.ReverseProxy), nil
}
