package cluster

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sqliteproxy/sqliteproxy"
	"github.com/sqliteproxy/sqliteproxy/cluster/etcdtest"
)

func TestForward(t *testing.T) {
	srv := etcdtest.Start(t)
	ctx := ctxT(t, 30*time.Second)
	// Each node: tenant middleware (header X-Tenant) around Forward around
	// a handler that names the node.
	start := func(id string) (*Cluster, *httptest.Server) {
		hs := httptest.NewUnstartedServer(nil)
		hs.Start()
		t.Cleanup(hs.Close)
		c, err := New(Config{Endpoints: srv.Endpoints(), NodeID: id, AdvertiseURL: hs.URL, TTL: testTTL})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		hs.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Header.Get("X-Tenant") == "hung" && r.Header.Get(ForwardedByHeader) != "" {
				<-r.Context().Done() // an owner that never answers
				return
			}
			if tenant := r.Header.Get("X-Tenant"); tenant != "" {
				r = r.WithContext(sqliteproxy.WithOrgID(r.Context(), tenant))
			}
			c.Forward(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				fmt.Fprintf(w, "%s via %q", id, r.Header.Get(ForwardedByHeader))
			})).ServeHTTP(w, r)
		})
		return c, hs
	}
	_, ha := start("a")
	b, hb := start("b")
	if _, err := b.Acquire(ctx, "tb"); err != nil {
		t.Fatal(err)
	}
	get := func(tenant string, hdr map[string]string) string {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, ha.URL+"/x", nil)
		if tenant != "" {
			req.Header.Set("X-Tenant", tenant)
		}
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return string(body)
	}
	if got := get("tb", nil); got != `b via "a"` {
		t.Errorf("tenant owned by b, asked at a: %q", got)
	}
	if got := get("tb", map[string]string{ForwardedByHeader: "z"}); got != `a via "z"` {
		t.Errorf("already forwarded: %q", got)
	}
	if got := get("unowned", nil); got != `a via ""` {
		t.Errorf("unowned tenant: %q", got)
	}
	if got := get("", nil); got != `a via ""` {
		t.Errorf("no tenant: %q", got)
	}
	// b takes a request for "hung" and never answers: once its lease on
	// the tenant ends, the request ends with a retry-later.
	lease, err := b.Acquire(ctx, "hung")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan *http.Response, 1)
	go func() {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, ha.URL+"/x", nil)
		req.Header.Set("X-Tenant", "hung")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Error(err)
			resp = nil
		}
		done <- resp
	}()
	select {
	case <-done:
		t.Fatal("the request to a hung owner ended while its lease lived")
	case <-time.After(testTTL / 2): // a bound, not an ordering: it must still wait
	}
	if err := lease.Release(ctx, 0); err != nil {
		t.Fatal(err)
	}
	select {
	case resp := <-done:
		if resp != nil {
			resp.Body.Close()
			if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
				t.Errorf("hung owner after its lease ended: %d; want 503 with Retry-After", resp.StatusCode)
			}
		}
	case <-time.After(10 * testTTL):
		t.Fatal("the request to a hung owner still waits after its lease ended")
	}

	// b stops answering while its lease lives: a retry-later, not a
	// failure (another node takes tb within a TTL).
	hb.Close()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, ha.URL+"/x", nil)
	req.Header.Set("X-Tenant", "tb")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Errorf("owner unreachable: %d, Retry-After %q; want 503 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
}

// startEchoNode starts a node whose handler, inside tenant middleware
// (header X-Tenant) and Forward, answers with the node's ID and the
// request's forwarding headers as it got them.
func startEchoNode(t *testing.T, srv *etcdtest.Server, id string) (*Cluster, *httptest.Server) {
	return startNode(t, srv, id, func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "node=%s xff=%q proto=%q xfh=%q fwd=%q host=%q", id, r.Header.Get("X-Forwarded-For"),
			r.Header.Get("X-Forwarded-Proto"), r.Header.Get("X-Forwarded-Host"), r.Header.Get("Forwarded"), r.Host)
	})
}

// startNode starts a node that serves app inside tenant middleware
// (header X-Tenant) and Forward.
func startNode(t *testing.T, srv *etcdtest.Server, id string, app http.HandlerFunc) (*Cluster, *httptest.Server) {
	hs := httptest.NewServer(nil)
	t.Cleanup(hs.Close)
	c, err := New(Config{Endpoints: srv.Endpoints(), NodeID: id, AdvertiseURL: hs.URL, TTL: testTTL})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	hs.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if tenant := r.Header.Get("X-Tenant"); tenant != "" {
			r = r.WithContext(sqliteproxy.WithOrgID(r.Context(), tenant))
		}
		c.Forward(app).ServeHTTP(w, r)
	})
	return c, hs
}

// A forwarded request reaches the owner with the load balancer's
// X-Forwarded-* headers, the forwarding node appended to the client chain,
// rather than the forwarding node as the client over http.
func TestForward_KeepsClientHeaders(t *testing.T) {
	srv := etcdtest.Start(t)
	ctx := ctxT(t, 30*time.Second)
	_, ha := startEchoNode(t, srv, "a")
	b, _ := startEchoNode(t, srv, "b")
	if _, err := b.Acquire(ctx, "tb"); err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, ha.URL+"/x", nil)
	req.Host = "api.example.com"
	req.Header.Set("X-Tenant", "tb")
	req.Header.Set("X-Forwarded-For", "203.0.113.7")
	req.Header.Set("X-Forwarded-Proto", "https")
	req.Header.Set("X-Forwarded-Host", "api.example.com")
	req.Header.Set("Forwarded", "for=203.0.113.7;proto=https")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if want := `node=b xff="203.0.113.7, 127.0.0.1" proto="https" xfh="api.example.com" fwd="for=203.0.113.7;proto=https" host="api.example.com"`; string(body) != want {
		t.Errorf("the owner saw %s\nwant      %s", body, want)
	}
}

// An ID no node can own is served here at once, without asking etcd about
// it: with etcd down such a request waited for the lookup's timeout.
func TestForward_InvalidIDServedLocally(t *testing.T) {
	srv := etcdtest.Start(t)
	ctx := ctxT(t, 30*time.Second)
	_, ha := startEchoNode(t, srv, "a")
	srv.Stop()
	for _, id := range []string{"ACME", "../../etc/passwd"} {
		start := time.Now()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, ha.URL+"/x", nil)
		req.Header.Set("X-Tenant", id)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !strings.HasPrefix(string(body), "node=a ") {
			t.Errorf("%q: %s, want served by a", id, body)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("%q: served after %v with etcd down", id, d)
		}
	}
}

// A node shutting down closes its listener before it releases its tenants
// (the example service does): a request forwarded to it meanwhile had the
// 503 of an unreachable owner. It waits for the tenant to change hands and
// is served where it is then, body and all.
func TestForward_RefusedWaitsForNewOwner(t *testing.T) {
	srv := etcdtest.Start(t)
	ctx := ctxT(t, 30*time.Second)
	start := func(id string) (*Cluster, *httptest.Server) {
		return startNode(t, srv, id, func(w http.ResponseWriter, r *http.Request) {
			body, err := io.ReadAll(r.Body)
			fmt.Fprintf(w, "%s got %q %v", id, body, err)
		})
	}
	_, ha := start("a")
	b, hb := start("b")
	lease, err := b.Acquire(ctx, "tb")
	if err != nil {
		t.Fatal(err)
	}
	hb.Close() // b stops listening, and still owns tb
	type result struct {
		code int
		body string
	}
	done := make(chan result, 1)
	go func() {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, ha.URL+"/x", strings.NewReader("payload"))
		req.Header.Set("X-Tenant", "tb")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			done <- result{0, err.Error()}
			return
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		done <- result{resp.StatusCode, string(body)}
	}()
	deadline := time.Now().Add(testTTL / 2)
	for forwardWaits.Load() == 0 {
		select {
		case res := <-done:
			t.Fatalf("the request ended while b still owned tb: %d %s", res.code, res.body)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("the request refused by b does not wait for tb's next owner")
		}
		time.Sleep(time.Millisecond)
	}
	if err := lease.Release(ctx, 0); err != nil { // b's shutdown gives tb up
		t.Fatal(err)
	}
	select {
	case res := <-done:
		if res.code != http.StatusOK || res.body != `a got "payload" <nil>` {
			t.Errorf("after b gave tb up: %d %q; want 200 from a with the body", res.code, res.body)
		}
	case <-time.After(5 * testTTL):
		t.Fatal("the request still waits after b gave tb up")
	}
}

// The owner read a replayable request (a GET, or a POST with
// Idempotency-Key and no body) on a kept-alive connection, applied it, and
// died before answering: http.Transport retried it on a new dial, which was
// refused, and Forward took that refusal for "nothing reached the owner"
// and served the request again on the next owner: applied on two nodes.
func TestForward_TransportRetryIsNotServedTwice(t *testing.T) {
	for _, tc := range []struct {
		method string
		idem   bool
	}{{http.MethodGet, false}, {http.MethodPost, true}} {
		t.Run(fmt.Sprintf("%s/idempotency-key=%v", tc.method, tc.idem), func(t *testing.T) {
			srv := etcdtest.Start(t)
			ctx := ctxT(t, 30*time.Second)
			var appliedA, appliedB, seen atomic.Int32
			_, ha := startNode(t, srv, "a", func(w http.ResponseWriter, r *http.Request) {
				appliedA.Add(1)
				fmt.Fprint(w, "a applied")
			})
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			b, err := New(Config{Endpoints: srv.Endpoints(), NodeID: "b", AdvertiseURL: "http://" + ln.Addr().String(), TTL: testTTL})
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			hb := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if seen.Add(1) == 1 {
					fmt.Fprint(w, "warm") // the connection a keeps alive
					return
				}
				appliedB.Add(1) // applied, and b dies before answering
				ln.Close()
				c, _, _ := w.(http.Hijacker).Hijack()
				c.Close()
			})}
			go hb.Serve(ln)
			defer hb.Close()
			lease, err := b.Acquire(ctx, "tb")
			if err != nil {
				t.Fatal(err)
			}
			do := func() int {
				req, _ := http.NewRequestWithContext(ctx, tc.method, ha.URL+"/x", nil)
				req.Header.Set("X-Tenant", "tb")
				if tc.idem {
					req.Header.Set("Idempotency-Key", "k1")
				}
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				return resp.StatusCode
			}
			do()
			// Were the request waiting for tb's next owner, b's lease ends.
			stop := make(chan struct{})
			released := make(chan struct{})
			go func() {
				defer close(released)
				for forwardWaits.Load() == 0 {
					select {
					case <-stop:
						return
					case <-time.After(time.Millisecond):
					}
				}
				lease.Release(ctx, 0)
			}()
			code := do()
			close(stop)
			<-released
			if appliedB.Load() != 1 || appliedA.Load() != 0 {
				t.Errorf("applied on b %d times, on a %d times (answer %d); want once, on b, and a 503", appliedB.Load(), appliedA.Load(), code)
			}
			if code != http.StatusServiceUnavailable {
				t.Errorf("answer %d, want 503: the owner may have applied it", code)
			}
		})
	}
}
