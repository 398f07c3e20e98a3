//go:build linux

package replication_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sqliteproxy/sqliteproxy"
	"github.com/sqliteproxy/sqliteproxy/cluster"
	"github.com/sqliteproxy/sqliteproxy/cluster/etcdtest"
	"github.com/sqliteproxy/sqliteproxy/replication/harness"
)

// Benchmarks of multi-node operation with real parts (cluster_rig_test.go).
// Only successful operations count in the latency and throughput metrics;
// errors/op reports the others. Run without -race, e.g.
//
//	go test -tags sqlite_omit_load_extension -run '^$' -bench 'Forward|Failover|Ownership' -benchtime 3x .
//
// (BenchmarkFailover kills a node per iteration: -benchtime 3x keeps it to
// three; BenchmarkForward and BenchmarkOwnership want more, e.g.
// -benchtime 2000x.)

// GET /events of one small tenant sent to its owner (path=direct) and to
// another node, which forwards it (path=forwarded): p50 and p99 latency.
// Target: forwarded p50 − direct p50 ≤ 1 ms.
func BenchmarkForward(b *testing.B) {
	r := newCluster(b, 2, 0)
	owner, other := r.nodes[0], r.nodes[1]
	const id = "fwd"
	for i := range 5 {
		if a := r.post(owner, id, fmt.Sprintf("e%d", i), true); !a.ok() || a.node != owner.id {
			b.Fatalf("POST via the owner: %d %v %s (node %q)", a.status, a.err, a.body, a.node)
		}
	}
	p50 := map[string]float64{}
	for _, c := range []struct {
		name string
		via  *cnode
	}{{"path=direct", owner}, {"path=forwarded", other}} {
		b.Run(c.name, func(b *testing.B) {
			if _, _, err := r.get(c.via, id); err != nil { // warm: connections open
				b.Fatal(err)
			}
			lat := make([]time.Duration, 0, b.N)
			errs := 0
			b.ResetTimer()
			for range b.N {
				start := time.Now()
				if _, evs, err := r.get(c.via, id); err != nil || len(evs) != 5 {
					errs++
					continue
				}
				lat = append(lat, time.Since(start))
			}
			b.StopTimer()
			reportLatency(b, lat, errs)
			if len(lat) > 0 {
				p50[c.name] = float64(percentile(lat, 0.50).Microseconds())
			}
		})
	}
	if d, f := p50["path=direct"], p50["path=forwarded"]; d > 0 && f > 0 {
		b.Logf("forwarded p50 − direct p50 = %.0f µs (target ≤ 1000 µs)", f-d)
	}
}

func percentile(sorted []time.Duration, q float64) time.Duration {
	return sorted[min(len(sorted)-1, int(q*float64(len(sorted))))]
}

func reportLatency(b *testing.B, lat []time.Duration, errs int) {
	slices.Sort(lat)
	if len(lat) > 0 {
		b.ReportMetric(float64(percentile(lat, 0.50).Nanoseconds())/1e3, "p50-µs")
		b.ReportMetric(float64(percentile(lat, 0.99).Nanoseconds())/1e3, "p99-µs")
	}
	b.ReportMetric(float64(errs)/float64(max(b.N, 1)), "errors/op")
}

// A node owning 100 tenants (written through it) is SIGKILLed with its
// Litestream: the time until survivors serve all 100. Each iteration uses
// fresh tenants and kills another node, restarted afterwards (not timed).
// Target: ≤ TTL + 2 s.
func BenchmarkFailover(b *testing.B) {
	const nTenants = 100
	r := newCluster(b, 3, 1000)
	var took, expiry []time.Duration
	b.ResetTimer()
	for i := range b.N {
		b.StopTimer()
		victim := r.nodes[i%len(r.nodes)]
		tenants := tenantIDs(fmt.Sprintf("b%d-", i), nTenants)
		acks := r.writeEachVia(b, victim, tenants, 1, 8)
		for _, a := range acks {
			if a.node != victim.id {
				b.Fatalf("%s written by %s, not %s", a.tenant, a.node, victim.id)
			}
		}
		b.StartTimer()
		killedAt := time.Now()
		victim.kill()
		// The split: until the victim's node lease is gone from etcd (its
		// tenants are free), then until all are restored and served.
		var others []string
		for _, n := range r.nodes {
			if n != victim {
				others = append(others, n.id)
			}
		}
		r.waitNodes(others, 30*time.Second)
		expiry = append(expiry, time.Since(killedAt))
		got, _, err := r.serveAll(tenants, clusterTTL+60*time.Second, 8)
		d := time.Since(killedAt)
		b.StopTimer()
		if err != nil {
			// Not left out of failover-ms: it would drop the slowest.
			b.Fatalf("iteration %d: not every tenant served again %v after the kill: %v", i, d, err)
		}
		took = append(took, d)
		checkPresent(b, acks, got)
		victim.restart()
		r.waitNodes(r.ids(r.nodes...), 30*time.Second)
		b.StartTimer()
	}
	b.StopTimer()
	if len(took) > 0 {
		var sum time.Duration
		for _, d := range took {
			sum += d
		}
		b.ReportMetric(float64(sum.Milliseconds())/float64(len(took)), "failover-ms")
		b.ReportMetric(float64(slices.Max(took).Milliseconds()), "max-failover-ms")
		var gone time.Duration
		for _, d := range expiry {
			gone += d
		}
		b.ReportMetric(float64(gone.Milliseconds())/float64(len(expiry)), "lease-gone-ms")
		b.Logf("failover of %d tenants: %v, of which until the node lease was gone: %v (target ≤ TTL %v + 2s)", nTenants, roundAll(took), roundAll(expiry), clusterTTL)
	}
}

// Inserts into one tenant through a Proxy in this process with replication
// on (S3, Litestream), with Config.Ownership a cluster.Cluster (real etcd)
// and without. Target: on ≥ 0.95 × off.
func BenchmarkOwnership(b *testing.B) {
	s3 := harness.StartS3(b)
	for _, kv := range s3.Env() {
		k, v, _ := strings.Cut(kv, "=")
		b.Setenv(k, v)
	}
	b.Setenv("AWS_CA_BUNDLE", "") // see harness.baseEnv
	ls := harness.StartLitestream(b, s3.Env()...)
	etcd := etcdtest.Start(b)
	c, err := cluster.New(cluster.Config{Endpoints: etcd.Endpoints(), NodeID: "bench", AdvertiseURL: "http://127.0.0.1:1", TTL: clusterTTL})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() }) // after the proxy's Close (cleanups run last first)
	// A fresh proxy (and tenant) for every run of a sub-benchmark, closed
	// at its end: a tenant left open would keep Litestream busy uploading
	// its backlog during the next sub-benchmark, and the second would
	// always pay for the first.
	proxy := func(b *testing.B, prefix string, own sqliteproxy.Ownership) *sqliteproxy.Proxy {
		p, err := sqliteproxy.New(sqliteproxy.Config{
			Dir: b.TempDir(), Migrations: migrations, Ownership: own,
			ReplicaURL: s3.ReplicaURL(prefix), LitestreamSocket: ls.SocketPath, LitestreamPath: ls.Bin(),
		})
		if err != nil {
			b.Fatal(err)
		}
		return p
	}
	rate := map[string]float64{}
	for _, cs := range []struct {
		name string
		own  sqliteproxy.Ownership
	}{{"ownership=off", nil}, {"ownership=on", c}} {
		ctx := sqliteproxy.WithOrgID(context.Background(), "bench")
		b.Run(cs.name, func(b *testing.B) {
			p := proxy(b, strings.TrimPrefix(cs.name, "ownership="), cs.own)
			defer func() {
				if err := p.Close(); err != nil {
					b.Error(err)
				}
			}()
			// Warm: the tenant is open (and owned) before the clock starts.
			if _, err := p.ExecContext(ctx, `INSERT INTO events (name) VALUES ('warm')`); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			start := time.Now()
			for i := range b.N {
				if _, err := p.ExecContext(ctx, `INSERT INTO events (name) VALUES (?)`, fmt.Sprint(i)); err != nil {
					b.Fatal(err) // a failed insert is not a fast one
				}
			}
			el := time.Since(start)
			b.StopTimer()
			rate[cs.name] = float64(b.N) / el.Seconds()
			b.ReportMetric(rate[cs.name], "inserts/s")
		})
	}
	if off, on := rate["ownership=off"], rate["ownership=on"]; off > 0 {
		b.Logf("ownership on/off throughput: %.3f (target ≥ 0.95)", on/off)
	}
}
