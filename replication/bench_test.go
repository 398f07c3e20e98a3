//go:build linux

package replication_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sqliteproxy/sqliteproxy"
	"github.com/sqliteproxy/sqliteproxy/replica"
	"github.com/sqliteproxy/sqliteproxy/replication/harness"
	"github.com/sqliteproxy/sqliteproxy/sqliteproxytest"
)

// BenchmarkInsert: single-row inserts into one tenant with replication off
// and on, side by side (the target: on >= 0.9 x off). Litestream uploads in
// the background, on the same two cores.
func BenchmarkInsert(b *testing.B) {
	for _, mode := range []string{"off", "on"} {
		b.Run("replication="+mode, func(b *testing.B) {
			cfg := sqliteproxy.Config{Dir: b.TempDir(), Migrations: migrations}
			if mode == "on" {
				g := newBenchRig(b)
				cfg.ReplicaURL, cfg.LitestreamSocket, cfg.LitestreamPath = g.replica, g.ls.SocketPath, g.ls.Bin()
			}
			p := sqliteproxytest.New(b, cfg)
			ctx := sqliteproxy.WithOrgID(context.Background(), "bench")
			if _, err := p.ExecContext(ctx, `INSERT INTO events (name) VALUES ('warm')`); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for b.Loop() {
				if _, err := p.ExecContext(ctx, `INSERT INTO events (name) VALUES ('x')`); err != nil {
					b.Fatal(err) // a failed insert is not a fast one
				}
			}
		})
	}
}

// BenchmarkRestoreOnOpen: the first statement of a 1 MB tenant that exists
// only in the replica (local S3-compatible server): restore, check,
// migrate, open (the target: <= 200 ms). Every iteration restores the
// replica as the tenant's node left it: a node that restores a tenant and
// streams it uploads a snapshot of it (Litestream rebases a database that
// is behind its replica and snapshots it), which the next iteration would
// restore too; those files are deleted between iterations, outside the
// timer (BenchmarkRestoreAfterRestores restores without deleting them).
// restore=binary runs `litestream restore`; restore=in-process uses
// Config.ReplicaRestorer (replica.Restorer).
func BenchmarkRestoreOnOpen(b *testing.B) {
	for _, mode := range []string{"binary", "in-process"} {
		b.Run("restore="+mode, func(b *testing.B) {
			g := newS3BenchRig(b)
			g.restorer = mode == "in-process"
			benchRestoreOnOpen(b, g)
		})
	}
}

func benchRestoreOnOpen(b *testing.B, g *rig) {
	ctx := newBigTenant(b, g)
	keep := map[string]bool{}
	objs, _, err := g.s3.List("tenants/big/", "")
	if err != nil {
		b.Fatal(err)
	}
	for _, o := range objs {
		keep[o.Key] = true
	}
	for b.Loop() {
		b.StopTimer()
		p, err := sqliteproxy.New(g.config(b, 10)) // a fresh node
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		var n int
		if err := p.QueryRowContext(ctx, `SELECT count(*) FROM events`).Scan(&n); err != nil || n != 1000 {
			b.Fatalf("restored %d rows of 1000: %v", n, err) // not a fast restore
		}
		b.StopTimer()
		p.Close()
		objs, _, err := g.s3.List("tenants/big/", "")
		if err != nil {
			b.Fatal(err)
		}
		for _, o := range objs {
			if !keep[o.Key] {
				if err := g.s3.Client().Delete(context.Background(), o.Key); err != nil {
					b.Fatal(err)
				}
			}
		}
		b.StartTimer()
	}
}

// BenchmarkRestoreAfterRestores: as BenchmarkRestoreOnOpen, but the
// snapshot each restoring node uploads stays in the replica, so iteration
// N restores N snapshots; with Config.ReplicaCompactor (compactor=on) the
// replica is compacted when the tenant is closed, between iterations.
func BenchmarkRestoreAfterRestores(b *testing.B) {
	for _, mode := range []string{"off", "on"} {
		on := mode == "on"
		b.Run("compactor="+mode, func(b *testing.B) {
			g := newS3BenchRig(b)
			ctx := newBigTenant(b, g)
			for b.Loop() {
				b.StopTimer()
				cfg := g.config(b, 10) // a fresh node
				if on {
					cfg.ReplicaCompactor = &replica.Compactor{}
				}
				p, err := sqliteproxy.New(cfg)
				if err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				var n int
				if err := p.QueryRowContext(ctx, `SELECT count(*) FROM events`).Scan(&n); err != nil || n != 1000 {
					b.Fatalf("restored %d rows of 1000: %v", n, err) // not a fast restore
				}
				b.StopTimer()
				if on { // closed by eviction, and compacted if it needs it, before Close
					for i := range 10 {
						if _, err := p.ExecContext(sqliteproxy.WithOrgID(context.Background(), fmt.Sprint("o", i)), `SELECT count(*) FROM events`); err != nil {
							b.Fatal(err)
						}
					}
					sqliteproxytest.WaitFor(b, time.Minute, "big compacted", func() bool {
						l0, _ := g.ltxCounts(b, "big")
						return l0 < 8
					})
				}
				p.Close()
				b.StartTimer()
			}
		})
	}
}

// newBigTenant writes a 1 MB tenant "big" through a node of its own and
// syncs it to the replica; it returns the tenant's context.
func newBigTenant(b *testing.B, g *rig) context.Context {
	src := sqliteproxytest.New(b, g.config(b, 10))
	ctx := sqliteproxy.WithOrgID(context.Background(), "big")
	name := strings.Repeat("x", 1000)
	for range 1000 { // ~1 MB
		if _, err := src.ExecContext(ctx, `INSERT INTO events (name) VALUES (?)`, name); err != nil {
			b.Fatal(err)
		}
	}
	if err := src.SyncTenant(context.Background(), "big"); err != nil {
		b.Fatal(err)
	}
	if err := src.Close(); err != nil {
		b.Fatal(err)
	}
	return ctx
}

// BenchmarkEvictReopen: one evict + reopen cycle of a 1 MB tenant that
// gets 10 new rows, through a budget of one connection (so that a write to
// another tenant evicts it, and its next write reopens it); it reports the
// bytes uploaded to the S3-compatible server per byte of WAL the cycle
// wrote (the target: <= 2, no snapshot of the whole file per cycle).
func BenchmarkEvictReopen(b *testing.B) {
	g := newS3BenchRig(b)
	cfg := g.config(b, 1)
	cfg.ReadersPerTenant = -1 // the writer only: one connection per tenant
	p := sqliteproxytest.New(b, cfg)
	ctx := sqliteproxy.WithOrgID(context.Background(), "big")
	other := sqliteproxy.WithOrgID(context.Background(), "other")
	name := strings.Repeat("x", 1000)
	for range 1000 {
		if _, err := p.ExecContext(ctx, `INSERT INTO events (name) VALUES (?)`, name); err != nil {
			b.Fatal(err)
		}
	}
	if _, err := p.ExecContext(other, `INSERT INTO events (name) VALUES ('o')`); err != nil { // evicts big
		b.Fatal(err)
	}
	uploaded := func() (n int64) {
		objs, _, err := g.s3.List("tenants/big/", "")
		if err != nil {
			b.Fatal(err)
		}
		for _, o := range objs {
			n += o.Size
		}
		return n
	}
	wal := filepath.Join(cfg.Dir, "big.db-wal")
	var up, changed int64
	var counted int
	for i := 0; b.Loop(); i++ {
		b.StopTimer()
		before, w0 := uploaded(), fileSize(wal)
		b.StartTimer()
		for j := range 10 { // reopens big (evicting other)
			if _, err := p.ExecContext(ctx, `INSERT INTO events (name) VALUES (?)`, fmt.Sprint(i, j)); err != nil {
				b.Fatal(err)
			}
		}
		w1 := fileSize(wal)
		if _, err := p.ExecContext(other, `INSERT INTO events (name) VALUES ('o')`); err != nil { // evicts big: sync, unregister
			b.Fatal(err)
		}
		b.StopTimer()
		if w1 > w0 { // a cycle whose WAL restarted cannot be measured this way
			up += uploaded() - before
			changed += w1 - w0
			counted++
		}
		b.StartTimer()
	}
	if counted > 0 {
		b.ReportMetric(float64(up)/float64(changed), "uploaded/changed")
	}
}

func fileSize(p string) int64 {
	fi, err := os.Stat(p)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// newBenchRig is newRig("file") for benchmarks.
func newBenchRig(b *testing.B) *rig {
	b.Helper()
	return &rig{replica: "file://" + filepath.Join(b.TempDir(), "replica"), ls: harness.StartLitestream(b)}
}

// newS3BenchRig is newRig("s3") for benchmarks.
func newS3BenchRig(b *testing.B) *rig {
	b.Helper()
	s3 := harness.StartS3(b)
	for _, kv := range s3.Env() {
		k, v, _ := strings.Cut(kv, "=")
		b.Setenv(k, v)
	}
	b.Setenv("AWS_CA_BUNDLE", "") // see package replica
	return &rig{replica: s3.ReplicaURL("tenants"), ls: harness.StartLitestream(b, s3.Env()...), s3: s3}
}
