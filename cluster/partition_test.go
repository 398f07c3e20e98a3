package cluster

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/sqliteproxy/sqliteproxy"
	"github.com/sqliteproxy/sqliteproxy/cluster/etcdtest"
)

func newNodeVia(t *testing.T, p *etcdtest.Partition, id string) *Cluster {
	t.Helper()
	c, err := New(Config{Endpoints: []string{p.Endpoint()}, NodeID: id, AdvertiseURL: "http://" + id + ".invalid", TTL: testTTL})
	if err != nil {
		t.Fatalf("New(%s): %v", id, err)
	}
	t.Cleanup(func() {
		p.Cut(false)
		c.Close()
	})
	return c
}

// A connection to etcd that dies silently (no reset reaches the node) is
// replaced: once new connections get through, the node takes tenants again
// within the keepalive bound, not when the kernel gives up (~15 min).
func TestSilentlyDeadConnectionReplaced(t *testing.T) {
	srv := etcdtest.Start(t)
	p := etcdtest.NewPartition(t, srv)
	a := newNodeVia(t, p, "a")
	l, err := a.Acquire(ctxT(t, 10*time.Second), "t1")
	if err != nil {
		t.Fatal(err)
	}
	died := time.Now()
	p.KillOpen()
	eventually(t, testTTL, "Lost closes", func() bool { return isClosed(l.Lost()) })
	t.Logf("lease lost %v after the connection died", time.Since(died).Round(time.Millisecond))
	bound := keepAliveTime + keepAliveTimeout + testTTL + 2*time.Second
	eventually(t, bound, "Acquire works again on a new connection", func() bool {
		_, err := a.Acquire(ctxT(t, time.Second), "t1")
		return err == nil
	})
	t.Logf("Acquire works again %v after the connection died (keepalive %v + %v)", time.Since(died).Round(time.Millisecond), keepAliveTime, keepAliveTimeout)
}

// While the node is cut off from etcd, a request for a tenant the owner
// cache does not know is served locally at once (where Acquire refuses it),
// not after an etcd lookup that waits out its timeout; Acquire's error says
// since when the lease is gone.
func TestForwardUnownedWhileCutOff(t *testing.T) {
	srv := etcdtest.Start(t)
	p := etcdtest.NewPartition(t, srv)
	a := newNodeVia(t, p, "a")
	l, err := a.Acquire(ctxT(t, 10*time.Second), "held")
	if err != nil {
		t.Fatal(err)
	}
	cut := time.Now()
	p.Cut(true)
	eventually(t, testTTL, "Lost closes", func() bool { return isClosed(l.Lost()) })

	h := a.Forward(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("local")) }))
	for i := range 3 {
		req := httptest.NewRequest("GET", "/", nil).WithContext(sqliteproxy.WithOrgID(ctxT(t, 10*time.Second), "new1"))
		rec := httptest.NewRecorder()
		s := time.Now()
		h.ServeHTTP(rec, req)
		took := time.Since(s)
		t.Logf("request %d for an unknown tenant while cut off: %v: %d %s", i, took, rec.Code, rec.Body.String())
		if rec.Body.String() != "local" || took > 500*time.Millisecond {
			t.Fatalf("request %d: %q after %v, want served locally at once", i, rec.Body.String(), took)
		}
	}
	if _, _, _, err := a.Owner(ctxT(t, 10*time.Second), "new1"); !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("Owner while cut off: %v, want ErrLeaseLost", err)
	}

	// Acquire waits for the lease up to a TTL from its loss, then says
	// since when it is gone (not "for <TTL>" whatever the time).
	_, err = a.Acquire(ctxT(t, 10*time.Second), "new1")
	if !errors.Is(err, ErrLeaseLost) || !strings.Contains(err.Error(), "since") {
		t.Fatalf("Acquire while cut off: %v", err)
	}
	t.Logf("Acquire %v after the cut: %v", time.Since(cut).Round(time.Millisecond), err)
}

// A move whose target dies before taking the tenant is called off once the
// target's lease ends: the tenant is then servable by another node within
// about a TTL of the death, not when the move gives up.
func TestMoveToDeadTarget(t *testing.T) {
	srv := etcdtest.Start(t)
	a, b, c := newNode(t, srv, "a"), newNode(t, srv, "b"), newNode(t, srv, "c")
	adm := newAdmin(t, srv)
	la, err := a.Acquire(ctxT(t, 10*time.Second), "t1")
	if err != nil {
		t.Fatal(err)
	}
	c.kill() // dead, but registered until its lease expires
	died := time.Now()
	moved := make(chan error, 1)
	go func() { moved <- adm.Move(ctxT(t, 30*time.Second), "t1", "c") }()
	eventually(t, testTTL, "a's lease on t1 ends for the move", func() bool { return isClosed(la.Lost()) })
	if err := la.Release(ctxT(t, 5*time.Second), 3); err != nil { // as the driver does
		t.Fatal(err)
	}
	var last error
	eventually(t, testTTL+3*time.Second, "b takes t1 after the move's target died", func() bool {
		_, last = b.Acquire(ctxT(t, time.Second), "t1")
		return last == nil
	})
	t.Logf("t1 servable by b %v after the target died (TTL %v)", time.Since(died).Round(time.Millisecond), testTTL)
	select {
	case err := <-moved:
		if !errors.Is(err, ErrMoveTargetGone) || !strings.Contains(err.Error(), `"c"`) {
			t.Fatalf("Move: %v, want ErrMoveTargetGone naming c", err)
		}
		t.Logf("Move: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("Move still waiting after the tenant went to b")
	}
}

// A Release refused because the node lease's deadline had passed (a
// renewal that then came late kept the node healthy) left the lease held
// and its owner key in etcd for the node's lifetime: no other node could
// take the tenant.
func TestReleaseAfterTheDeadlineFreesTheTenant(t *testing.T) {
	srv := etcdtest.Start(t)
	a, b := newNode(t, srv, "a"), newNode(t, srv, "b")
	ctx := ctxT(t, 30*time.Second)
	l, err := a.Acquire(ctx, "v1")
	if err != nil {
		t.Fatal(err)
	}
	saved := a.validUntil.Load()
	a.validUntil.Store(time.Now().Add(-time.Millisecond).UnixNano()) // the deadline passed; expire has not run
	if err := l.Release(ctx, 7); !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("Release past the deadline: %v, want ErrLeaseLost", err)
	}
	a.validUntil.Store(saved) // the late renewal: healthy all along
	select {
	case <-l.Lost():
	default:
		t.Error("the lease is not lost after its release was refused")
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		_, err := b.Acquire(ctx, "v1")
		if err == nil {
			break
		}
		var oe *sqliteproxy.OwnerError
		if !errors.As(err, &oe) {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("b still refused 15 s after a's refused release: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
