package cluster

import (
	"context"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
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
// more, or a failed owner lookup. An owner that does not answer (dead, its
// lease not yet expired) gets 503 with Retry-After: the TTL, after which
// another node takes the tenant; so does one that accepted the request but
// has not answered when its lease on the tenant ends.
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
		// An owner that accepts the connection and never answers (stopped,
		// hung) held the request for as long as it did. Once the tenant is
		// not that node's any more (its lease ended: another node takes
		// it), the request ends with the 503 of an unreachable owner.
		ctx, cancel := context.WithCancel(r.Context())
		defer cancel()
		go c.cancelOnOwnerChange(ctx, cancel, id, node)
		p.ServeHTTP(w, r.WithContext(ctx))
	})
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
	p := &httputil.ReverseProxy{
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
			// The owner died or is cut off: within a TTL its lease ends
			// and another node takes the tenant. Like a tenant being
			// moved, this is a wait, not a failure of the request.
			w.Header().Set("Retry-After", strconv.Itoa(int((c.cfg.TTL+time.Second-1)/time.Second)))
			http.Error(w, "sqliteproxy cluster: the tenant's owner node is unreachable; retry", http.StatusServiceUnavailable)
		},
	}
	actual, _ := c.proxies.LoadOrStore(owner, p)
	return actual.(*httputil.ReverseProxy), nil
}
