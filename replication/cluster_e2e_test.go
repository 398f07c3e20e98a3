//go:build linux

package replication_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// End-to-end tests of tenants spread over several nodes: real etcd, real
// S3 (versitygw), a real Litestream per node, real node processes
// (examples/events). See cluster_rig_test.go.

// traffic is clients POSTing events to random tenants through random live
// nodes (Forward routes them to the owner) until finish.
type traffic struct {
	r       *crig
	tenants []string
	durable bool
	stop    atomic.Bool
	wg      sync.WaitGroup
	acked   atomic.Int64 // 201s so far
	mu      sync.Mutex
	acks    []*ack
}

func (r *crig) startTraffic(tenants []string, workers int, durable bool) *traffic {
	tr := &traffic{r: r, tenants: tenants, durable: durable}
	seed := uint64(time.Now().UnixNano())
	for w := range workers {
		rng := rand.New(rand.NewPCG(seed, uint64(w)))
		tr.wg.Go(func() {
			for i := 0; !tr.stop.Load(); i++ {
				nodes := r.alive()
				if len(nodes) == 0 {
					time.Sleep(10 * time.Millisecond) // nothing to send to
					continue
				}
				a := r.post(nodes[rng.IntN(len(nodes))], tenants[rng.IntN(len(tenants))], fmt.Sprintf("w%d-%06d", w, i), durable)
				if a.ok() {
					tr.acked.Add(1)
				} else if a.err != nil || a.status >= 500 {
					time.Sleep(20 * time.Millisecond) // a failing node: do not spin
				}
				tr.mu.Lock()
				tr.acks = append(tr.acks, a)
				tr.mu.Unlock()
			}
		})
	}
	return tr
}

// waitAcked waits until n more writes have been acknowledged.
func (tr *traffic) waitAcked(tb testing.TB, n int64, timeout time.Duration) {
	tb.Helper()
	want := tr.acked.Load() + n
	if err := poll(timeout, func() error {
		if got := tr.acked.Load(); got < want {
			return fmt.Errorf("%d acknowledged writes, want %d", got, want)
		}
		return nil
	}); err != nil {
		tb.Fatalf("traffic: %v; answers so far: %s", err, summarize(tr.snapshot()))
	}
}

func (tr *traffic) snapshot() []*ack {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return slices.Clone(tr.acks)
}

// finish stops the clients and returns every answer.
func (tr *traffic) finish() []*ack {
	tr.stop.Store(true)
	tr.wg.Wait()
	return tr.snapshot()
}

// summarize counts answers by kind.
func summarize(acks []*ack) string {
	kinds := map[string]int{}
	for _, a := range acks {
		switch {
		case a.ok():
			kinds["201"]++
		case a.err != nil:
			kinds["no answer"]++
		default:
			kinds[fmt.Sprintf("%d %s", a.status, truncate(a.body, 80))]++
		}
	}
	var out []string
	for k, n := range kinds {
		out = append(out, fmt.Sprintf("%s: %d", k, n))
	}
	sort.Strings(out)
	return strings.Join(out, ", ")
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

func tenantIDs(prefix string, n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("%s%03d", prefix, i)
	}
	return ids
}

// writeEach POSTs rounds durable events to every tenant through random
// nodes with parallel workers, failing the test on any answer but 201.
func (r *crig) writeEach(tb testing.TB, tenants []string, rounds, workers int) []*ack {
	return r.writeEachVia(tb, nil, tenants, rounds, workers)
}

// writeEachVia is writeEach through node via (nil: random nodes).
func (r *crig) writeEachVia(tb testing.TB, via *cnode, tenants []string, rounds, workers int) []*ack {
	tb.Helper()
	var (
		mu   sync.Mutex
		acks []*ack
		wg   sync.WaitGroup
		next = make(chan string, len(tenants)*rounds)
	)
	for round := range rounds {
		for _, id := range tenants {
			next <- fmt.Sprintf("%s/r%d", id, round)
		}
	}
	close(next)
	for w := range workers {
		rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), uint64(w)))
		wg.Go(func() {
			for job := range next {
				id, _, _ := strings.Cut(job, "/")
				n := via
				if n == nil {
					n = r.nodes[rng.IntN(len(r.nodes))]
				}
				a := r.post(n, id, job, true)
				mu.Lock()
				acks = append(acks, a)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	var failed []string
	for _, a := range acks {
		if !a.ok() {
			failed = append(failed, fmt.Sprintf("%s via %s: %d %v %s", a.name, a.via, a.status, a.err, a.body))
		}
	}
	if len(failed) > 0 {
		tb.Fatalf("%d of %d writes failed on a healthy cluster, e.g. %s", len(failed), len(acks), strings.Join(failed[:min(3, len(failed))], "; "))
	}
	return acks
}

// byOwner groups tenants by their owner node in etcd.
func (r *crig) byOwner(tb testing.TB, tenants []string) map[string][]string {
	tb.Helper()
	owners, err := r.owners()
	if err != nil {
		tb.Fatal(err)
	}
	out := map[string][]string{}
	for _, id := range tenants {
		o, ok := owners[id]
		if !ok {
			out[""] = append(out[""], id)
			continue
		}
		out[o.Node] = append(out[o.Node], id)
	}
	return out
}

// The node owning the most tenants is SIGKILLed (with its Litestream):
// within TTL plus restore time every tenant is served by a survivor, with
// every write acknowledged durable before the kill.
func TestCluster_FailoverAfterKill(t *testing.T) {
	const nTenants = 300
	r := newCluster(t, 3, 1000) // a budget above the tenants: failover, not eviction, is measured
	tenants := tenantIDs("f", nTenants)
	start := time.Now()
	acks := r.writeEach(t, tenants, 2, 8)
	t.Logf("%d durable writes to %d tenants through random nodes in %v", len(acks), nTenants, time.Since(start).Round(time.Millisecond))

	own := r.byOwner(t, tenants)
	if len(own[""]) > 0 {
		t.Fatalf("%d tenants written and owned by nobody, e.g. %s", len(own[""]), own[""][0])
	}
	var victim *cnode
	for _, n := range r.nodes {
		if victim == nil || len(own[n.id]) > len(own[victim.id]) {
			victim = n
		}
	}
	t.Logf("owners: n0 %d, n1 %d, n2 %d tenants; killing %s", len(own["n0"]), len(own["n1"]), len(own["n2"]), victim.id)

	killedAt := time.Now()
	victim.kill()
	got, took, err := r.serveAll(own[victim.id], clusterTTL+60*time.Second, 8)
	if err != nil {
		t.Fatalf("failover of %s's %d tenants: %v", victim.id, len(own[victim.id]), err)
	}
	t.Logf("FAILOVER: %d tenants of the killed node served by survivors %v after the kill (target: TTL %v + restore)",
		len(own[victim.id]), time.Since(killedAt).Round(time.Millisecond), clusterTTL)
	_ = took
	all, _, err := r.serveAll(tenants, 30*time.Second, 8)
	if err != nil {
		t.Fatal(err)
	}
	for id, evs := range got {
		all[id] = evs // as first served after the failover
	}
	n := checkPresent(t, acks, all)
	t.Logf("%d acknowledged durable writes checked on the survivors", n)

	after := r.byOwner(t, tenants)
	if len(after[victim.id]) > 0 {
		t.Errorf("%d tenants still owned by the killed node %s, e.g. %s", len(after[victim.id]), victim.id, after[victim.id][0])
	}
	for _, id := range own[victim.id] {
		if o := slices.IndexFunc(r.nodes, func(n *cnode) bool { return n != victim && slices.Contains(after[n.id], id) }); o < 0 {
			t.Errorf("%s: not owned by a survivor after it was served", id)
			break
		}
	}
}

// Traffic runs while nodes are SIGKILLed and restarted, and one node is
// partitioned (SIGSTOP past its TTL, then SIGCONT). Every acknowledged
// write carries its node and generation: ordered by event id, a tenant's
// generations never go down and each generation has one writer. Every
// acknowledged durable write is there at the end.
func TestCluster_NeverTwoWriters(t *testing.T) {
	const (
		nTenants = 24
		cycles   = 20
	)
	r := newCluster(t, 3, 0)
	tenants := tenantIDs("w", nTenants)
	tr := r.startTraffic(tenants, 6, true)
	tr.waitAcked(t, 50, 60*time.Second)
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	for c := range cycles {
		victim := r.nodes[rng.IntN(len(r.nodes))]
		start := time.Now()
		victim.kill()
		victim.restart()
		restarted := time.Since(start)
		tr.waitAcked(t, 30, 60*time.Second)
		t.Logf("cycle %d: killed and restarted %s (healthy again after %v); 30 more acknowledged writes after %v",
			c, victim.id, restarted.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	}

	// Partition: the node with the most tenants stops (no renewals, no
	// answers) until its lease has expired and another node has written
	// one of its tenants, then goes on.
	own := r.byOwner(t, tenants)
	var victim *cnode
	for _, n := range r.nodes {
		if victim == nil || len(own[n.id]) > len(own[victim.id]) {
			victim = n
		}
	}
	its := own[victim.id]
	// Stragglers: writes to the victim's tenants sent to the victim itself
	// around the pause, with a client that waits out the pause. Some are
	// in flight when it stops and go on when it resumes, after its lease
	// expired and another node wrote the tenant: they must not be
	// acknowledged with the old generation.
	slow := &http.Client{Transport: &http.Transport{DisableCompression: true}, Timeout: time.Minute}
	defer slow.CloseIdleConnections()
	var stragglers sync.WaitGroup
	var strag []*ack
	var stragMu sync.Mutex
	for i := range 8 {
		stragglers.Go(func() {
			a := r.postWith(slow, victim, its[i%len(its)], fmt.Sprintf("straggler-%d", i), true)
			stragMu.Lock()
			strag = append(strag, a)
			stragMu.Unlock()
		})
	}
	pausedAt := time.Now()
	victim.pause()
	var others []string
	for _, n := range r.nodes {
		if n != victim {
			others = append(others, n.id)
		}
	}
	slices.Sort(others)
	r.waitNodes(others, 30*time.Second)
	if err := poll(30*time.Second, func() error {
		for _, a := range tr.snapshot() {
			if a.ok() && a.sent.After(pausedAt) && a.node != victim.id && slices.Contains(its, a.tenant) {
				return nil
			}
		}
		return fmt.Errorf("none of %s's %d tenants written by another node since the pause", victim.id, len(its))
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("partition: %s (%d tenants) paused; lease expired and its tenants written elsewhere after %v", victim.id, len(its), time.Since(pausedAt).Round(time.Millisecond))
	resumedAt := time.Now()
	victim.resume()
	stragglers.Wait()
	t.Logf("stragglers (sent to %s around its pause): %s", victim.id, summarize(strag))
	for _, a := range strag {
		if a.ok() {
			t.Logf("  straggler %s for %s: id %d by %s in generation %d, answered %v after the pause (resumed after %v)",
				a.name, a.tenant, a.id, a.node, a.gen, a.at.Sub(pausedAt).Round(time.Millisecond), resumedAt.Sub(pausedAt).Round(time.Millisecond))
		}
	}
	r.waitNodes(r.ids(r.nodes...), 30*time.Second)
	tr.waitAcked(t, 50, 60*time.Second)
	tr.mu.Lock()
	tr.acks = append(tr.acks, strag...)
	tr.mu.Unlock()

	acks := tr.finish()
	t.Logf("traffic: %d requests: %s", len(acks), summarize(acks))
	n := checkSingleWriter(t, acks)
	got, _, err := r.serveAll(tenants, 60*time.Second, 4)
	if err != nil {
		t.Fatal(err)
	}
	checked := checkPresent(t, acks, got)
	t.Logf("%d tenants' acknowledged writes ordered by id: one writer per generation, generations never down; %d acknowledged durable writes present", n, checked)
	t.Logf("node errors by kind:\n%s", r.errorKinds())
}

// A tenant written on node A (durable and not) is moved to node B with
// Admin.Move: B serves every row acknowledged before the move.
func TestCluster_GracefulMove(t *testing.T) {
	r := newCluster(t, 2, 0)
	a, b := r.nodes[0], r.nodes[1]
	const id = "mover"
	var acks []*ack
	for i := range 10 {
		durable := i%2 == 0
		ak := r.post(a, id, fmt.Sprintf("e%02d", i), durable)
		if !ak.ok() || ak.node != a.id {
			t.Fatalf("POST %s via %s: %d %v %s (node %q)", ak.name, a.id, ak.status, ak.err, ak.body, ak.node)
		}
		acks = append(acks, ak)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	if err := r.admin.Move(ctx, id, b.id); err != nil {
		t.Fatalf("Move: %v", err)
	}
	moved := time.Since(start)
	status, evs, err := r.get(b, id)
	served := time.Since(start)
	retries := 0
	for err != nil && status == http.StatusServiceUnavailable && time.Since(start) < 30*time.Second {
		retries++
		time.Sleep(50 * time.Millisecond) // Retry-After, shortened
		status, evs, err = r.get(b, id)
		served = time.Since(start)
	}
	if err != nil {
		t.Fatalf("GET via %s after the move: %v", b.id, err)
	}
	if retries > 0 {
		t.Errorf("GET via %s right after Move returned: %d answers 503 first", b.id, retries)
	}
	have := map[string]int64{}
	for _, e := range evs {
		have[e.Name] = e.ID
	}
	for _, ak := range acks {
		if id, ok := have[ak.name]; !ok || id != ak.id {
			t.Errorf("after the move, %q (id %d, durable %v) is %s", ak.name, ak.id, ak.durable, map[bool]string{true: fmt.Sprintf("id %d", id), false: "missing"}[ok])
		}
	}
	owners, err := r.owners()
	if err != nil {
		t.Fatal(err)
	}
	if o := owners[id]; o.Node != b.id {
		t.Errorf("owner after the move: %+v, want %s", o, b.id)
	}
	// Written on B now.
	if ak := r.post(a, id, "after", true); !ak.ok() || ak.node != b.id {
		t.Errorf("POST via %s after the move: %d %v %s, node %q (want %s)", a.id, ak.status, ak.err, ak.body, ak.node, b.id)
	}
	t.Logf("MOVE: Admin.Move returned after %v; first GET on %s (restore included) served after %v (target: ~1s sync interval + a restore)",
		moved.Round(time.Millisecond), b.id, served.Round(time.Millisecond))
}

// etcd stops for longer than the TTL under traffic, then restarts: nodes
// stop acknowledging writes once their leases may have expired (nothing is
// acknowledged by two nodes), and every tenant accepts writes again after
// the restart. No acknowledged durable write is lost.
func TestCluster_EtcdRestartUnderLoad(t *testing.T) {
	const nTenants = 24
	r := newCluster(t, 3, 0)
	tenants := tenantIDs("e", nTenants)
	r.writeEach(t, tenants, 1, 6) // every tenant owned
	tr := r.startTraffic(tenants, 6, true)
	tr.waitAcked(t, 50, 60*time.Second)

	owners := r.byOwner(t, tenants)
	stoppedAt := time.Now()
	stopped := make(chan struct{})
	go func() { // clients are cut off at once; Stop itself takes seconds
		defer close(stopped)
		r.etcd.Stop()
	}()
	// The nodes go on serving what they own while their leases are valid:
	// reads sent to the owner within TTL/6 of the stop. A node trusts its
	// lease until a renewal's sending + TTL − TTL/3, renewing every TTL/6:
	// valid until about stop + TTL/2, which leaves a loaded machine TTL/3
	// for a late renewal or a slow answer.
	var readOK, readFail int
	var readErr error
	for time.Since(stoppedAt) < clusterTTL/6 {
		for _, n := range r.nodes {
			if ids := owners[n.id]; len(ids) > 0 {
				if _, _, err := r.get(n, ids[(readOK+readFail)%len(ids)]); err == nil {
					readOK++
				} else {
					readFail, readErr = readFail+1, err
				}
			}
		}
	}
	if readFail > 0 {
		t.Errorf("reads of owned tenants sent to their owner within TTL/6 of etcd's stop: %d ok, %d failed (e.g. %v)", readOK, readFail, readErr)
	}
	// The outage lasts 3 TTLs (the experiment's parameter, not ordering).
	time.Sleep(time.Until(stoppedAt.Add(3 * clusterTTL)))
	select {
	case <-stopped:
	case <-time.After(30 * time.Second):
		t.Fatal("etcd's Stop did not return within 30s")
	}
	r.etcd.Restart(t)
	restartedAt := time.Now()
	t.Logf("etcd down for %v; reads of owned tenants within TTL/6 of the stop: %d ok, %d failed", restartedAt.Sub(stoppedAt).Round(time.Millisecond), readOK, readFail)

	// Recovery: every tenant accepts a durable write again.
	pending := slices.Clone(tenants)
	i := 0
	if err := poll(60*time.Second, func() error {
		for len(pending) > 0 {
			nodes := r.alive()
			a := r.post(nodes[i%len(nodes)], pending[0], fmt.Sprintf("recover-%d", i), true)
			i++
			tr.mu.Lock()
			tr.acks = append(tr.acks, a)
			tr.mu.Unlock()
			if !a.ok() {
				return fmt.Errorf("%d tenants not writable yet, %s: %d %v %s", len(pending), a.tenant, a.status, a.err, truncate(a.body, 100))
			}
			pending = pending[1:]
		}
		return nil
	}); err != nil {
		t.Fatalf("after etcd's restart: %v", err)
	}
	t.Logf("RECOVERY: every tenant writable %v after etcd's restart", time.Since(restartedAt).Round(time.Millisecond))
	tr.waitAcked(t, 50, 60*time.Second)
	acks := tr.finish()
	t.Logf("traffic: %d requests: %s", len(acks), summarize(acks))
	// Nothing acknowledged between the moment every lease may have expired
	// and etcd's restart. A node stops writing by about stop + 2·TTL/3
	// (its last renewal's sending + TTL − TTL/3); the answer reaches the
	// client later, by how much on a loaded machine is not known: an
	// answer received after stop + 3·TTL/2 (the outage lasts 3·TTL) was
	// written without a lease, one received before may not have been.
	ackedBy := stoppedAt.Add(3 * clusterTTL / 2)
	lastAck := time.Time{}
	var late, outage []*ack
	for _, a := range acks {
		if a.sent.Before(restartedAt) && !a.at.Before(stoppedAt.Add(clusterTTL)) {
			outage = append(outage, a) // answered after the leases ran out
		}
		if !a.ok() || a.at.Before(stoppedAt) || a.at.After(restartedAt) {
			continue
		}
		if a.at.After(lastAck) {
			lastAck = a.at
		}
		if a.at.After(ackedBy) {
			late = append(late, a)
		}
	}
	for _, a := range late[:min(5, len(late))] {
		t.Errorf("WRITE WITHOUT A LEASE: %s's %q (id %d) acknowledged by %s (generation %d) %v after etcd stopped (TTL %v, answers after 3·TTL/2 flagged), before its restart",
			a.tenant, a.name, a.id, a.node, a.gen, a.at.Sub(stoppedAt).Round(time.Millisecond), clusterTTL)
	}
	if !lastAck.IsZero() {
		t.Logf("last write acknowledged during the outage: %v after etcd stopped", lastAck.Sub(stoppedAt).Round(time.Millisecond))
	}
	t.Logf("writes sent during the outage and answered after TTL: %s", summarize(outage))
	checkSingleWriter(t, acks)
	got, _, err := r.serveAll(tenants, 60*time.Second, 4)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d acknowledged durable writes present", checkPresent(t, acks, got))
	t.Logf("node errors by kind:\n%s", r.errorKinds())
}
