//go:build linux

package replication_test

import (
	"context"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sqliteproxy/sqliteproxy"
	"github.com/sqliteproxy/sqliteproxy/cluster"
	"github.com/sqliteproxy/sqliteproxy/cluster/etcdtest"
	"github.com/sqliteproxy/sqliteproxy/replication/harness"
)

// partition passes TCP connections to an address until cut, when nothing
// passes either way and nothing is closed: a network partition as a node
// sees it.
type partition struct {
	ln  net.Listener
	to  string
	cut atomic.Bool
	mu  sync.Mutex
	cs  []net.Conn
}

func newPartition(tb testing.TB, to string) *partition {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	p := &partition{ln: ln, to: to}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go p.serve(c)
		}
	}()
	tb.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		defer p.mu.Unlock()
		for _, c := range p.cs {
			c.Close()
		}
	})
	return p
}

func (p *partition) serve(c net.Conn) {
	u, err := net.DialTimeout("tcp", p.to, 2*time.Second)
	if err != nil {
		c.Close()
		return
	}
	p.mu.Lock()
	p.cs = append(p.cs, c, u)
	p.mu.Unlock()
	pipe := func(dst, src net.Conn) {
		defer dst.Close()
		defer src.Close()
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			for n > 0 && p.cut.Load() {
				time.Sleep(5 * time.Millisecond) // held, as a partition holds packets
			}
			if n > 0 {
				if _, err := dst.Write(buf[:n]); err != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	}
	go pipe(u, c)
	go pipe(c, u)
}

// A node cut off from etcd loses its lease within the TTL, and writes are
// refused from then on. Closing the tenant as its lease was lost tried to
// release the lease in etcd, out of reach, for 5 s while it held the
// tenant's writer: writes sent around the loss waited those 5 s (past the
// 2 s TTL) before they were refused.
func TestOwnership_WritesRefusedPromptlyAfterThePartition(t *testing.T) {
	g := newRig(t, "s3")
	srv := etcdtest.Start(t)
	part := newPartition(t, strings.TrimPrefix(srv.Endpoints()[0], "http://"))
	const ttl = 2 * time.Second
	c, err := cluster.New(cluster.Config{Endpoints: []string{"http://" + part.ln.Addr().String()}, NodeID: "a", AdvertiseURL: "http://a.invalid", TTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	ls := harness.StartLitestream(t, g.s3.Env()...)
	p, err := sqliteproxy.New(sqliteproxy.Config{Dir: t.TempDir(), Migrations: migrations, ReplicaURL: g.replica,
		LitestreamSocket: ls.SocketPath, LitestreamPath: ls.Bin(), Ownership: c})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		part.cut.Store(false)
		p.Close()
		c.Close()
	}()
	ctx := sqliteproxy.WithOrgID(context.Background(), "acme")
	if _, err := p.ExecContext(ctx, `INSERT INTO events (name) VALUES ('before')`); err != nil {
		t.Fatal(err)
	}
	cut := time.Now()
	part.cut.Store(true)
	refused := 0
	for refused < 3 {
		if time.Since(cut) > 20*time.Second {
			t.Fatalf("writes still accepted 20 s after the partition (TTL %v)", ttl)
		}
		start := time.Now()
		_, err := p.ExecContext(ctx, `INSERT INTO events (name) VALUES ('during')`)
		took := time.Since(start)
		// Within the TTL of the lease's last renewal, and a margin for a
		// loaded machine: the release of the lost lease took 5 s.
		if took > ttl+time.Second {
			t.Fatalf("a write sent %v after the partition took %v (TTL %v): %v", start.Sub(cut).Round(time.Millisecond), took.Round(time.Millisecond), ttl, err)
		}
		if err != nil {
			refused++
		}
	}
}
