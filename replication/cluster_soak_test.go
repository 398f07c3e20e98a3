//go:build linux

package replication_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sqliteproxy/sqliteproxy"
	"github.com/sqliteproxy/sqliteproxy/cluster"
	"github.com/sqliteproxy/sqliteproxy/replica"
	"github.com/sqliteproxy/sqliteproxy/replication/harness"
)

// A long randomized soak of 3 node processes (+ one in-process admin node
// "na" that does DeleteTenant/CreateTenant and BackupTenant/RestoreTenant
// as the owner), steady traffic, chaos events (make soak-cluster).
// Skipped unless CLUSTER_SOAK=1; CLUSTER_SOAK_DUR sets the duration
// (default 15m), CLUSTER_SOAK_KINDS the event kinds (comma-separated),
// CLUSTER_SOAK_GAP the time between events (default 20-60 s at random),
// CLUSTER_SOAK_LOGS a folder the nodes' logs are copied into at the end.

type sAck struct {
	*ack
	epoch int
}

type sTenant struct {
	frozen   bool
	inflight int
	epoch    int
}

type chaosEv struct {
	kind       string
	node       string
	start, end time.Time
	note       string
}

type soak struct {
	t       *testing.T
	r       *crig
	tenants []string
	na      *adminNode

	mu         sync.Mutex
	st         map[string]*sTenant
	acks       []*sAck
	deleted    map[string]time.Time // names of acked writes of a deleted epoch -> when DeleteTenant returned
	rolledBack map[string]bool      // names acked between a backup and its restore
	events     []chaosEv
	violations []string
	vkinds     map[string]int
	lateOld    []string // rows of an older epoch seen, never acknowledged
	reads      atomic.Int64
	rowsRead   atomic.Int64
	stop       atomic.Bool
	wg         sync.WaitGroup
	acked      atomic.Int64
}

func (s *soak) violate(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	kind := format
	if i := strings.Index(kind, ":"); i > 0 {
		kind = kind[:i]
	}
	s.mu.Lock()
	if s.vkinds == nil {
		s.vkinds = map[string]int{}
	}
	s.vkinds[kind]++
	n := s.vkinds[kind]
	if n <= 10 {
		s.violations = append(s.violations, time.Now().Format("15:04:05.000")+" "+msg)
	}
	s.mu.Unlock()
	if n <= 10 {
		s.t.Errorf("%s", msg)
	}
}

// adminNode is an in-process node: a proxy with Ownership, its own
// Litestream, and an HTTP server with the events handler behind Forward.
type adminNode struct {
	id  string
	dir string
	c   *cluster.Cluster
	p   *sqliteproxy.Proxy
	srv *http.Server
	ls  *harness.Litestream
}

func startAdminNode(t *testing.T, r *crig) *adminNode {
	for _, kv := range r.env {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	base := "http://" + ln.Addr().String()
	c, err := cluster.New(cluster.Config{Endpoints: r.etcd.Endpoints(), NodeID: "na", AdvertiseURL: base, TTL: clusterTTL})
	if err != nil {
		t.Fatal(err)
	}
	ls := harness.StartLitestream(t, r.env...)
	dir := t.TempDir()
	naDir = dir
	p, err := sqliteproxy.New(sqliteproxy.Config{Dir: dir, Migrations: eventsMigrations, ReplicaURL: r.replica,
		LitestreamSocket: ls.SocketPath, LitestreamPath: ls.Bin(), Ownership: c,
		ReplicaCompactor: &replica.Compactor{}, ReplicaRestorer: &replica.Restorer{}})
	if err != nil {
		t.Fatal(err)
	}
	n := &adminNode{id: "na", dir: dir, c: c, p: p, ls: ls}
	mux := http.NewServeMux()
	h := func(w http.ResponseWriter, req *http.Request) {
		id := req.Header.Get("X-Tenant-ID")
		ctx := sqliteproxy.WithOrgID(req.Context(), id)
		c.Forward(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) { n.serve(w, req, id) })).ServeHTTP(w, req.WithContext(ctx))
	}
	mux.HandleFunc("/events", h)
	n.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go n.srv.Serve(ln)
	return n
}

func (n *adminNode) serve(w http.ResponseWriter, req *http.Request, id string) {
	ctx := req.Context()
	fail := func(err error) {
		if errors.Is(err, sqliteproxy.ErrNotOwner) || errors.Is(err, cluster.ErrLeaseLost) {
			w.Header().Set("Retry-After", "1")
			http.Error(w, "retry", http.StatusServiceUnavailable)
			return
		}
		http.Error(w, err.Error(), http.StatusInternalServerError)
	}
	if req.Method == http.MethodGet {
		rows, err := n.p.DB.QueryContext(ctx, `SELECT id, name FROM events ORDER BY id DESC`)
		if err != nil {
			fail(err)
			return
		}
		defer rows.Close()
		evs := []event{}
		for rows.Next() {
			var e event
			if err := rows.Scan(&e.ID, &e.Name); err != nil {
				fail(err)
				return
			}
			evs = append(evs, e)
		}
		if err := rows.Err(); err != nil {
			fail(err)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(evs)
		return
	}
	var in struct{ Name string }
	if err := json.NewDecoder(req.Body).Decode(&in); err != nil {
		http.Error(w, err.Error(), 400)
		return
	}
	var e event
	if err := n.p.DB.QueryRowContext(ctx, `INSERT INTO events (name) VALUES (?) RETURNING id, name`, in.Name).Scan(&e.ID, &e.Name); err != nil {
		fail(err)
		return
	}
	gen, ok := n.p.Generation(id)
	if !ok {
		w.Header().Set("X-Sqliteproxy-Outcome", "unknown")
		http.Error(w, "unknown", http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("X-Sqliteproxy-Node", n.id)
	w.Header().Set("X-Sqliteproxy-Generation", strconv.FormatInt(gen, 10))
	if req.URL.Query().Get("durable") == "1" {
		if err := n.p.SyncTenant(ctx, id); err != nil {
			fail(err)
			return
		}
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	json.NewEncoder(w).Encode(e)
}

func (n *adminNode) close(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	n.srv.Shutdown(ctx)
	cancel()
	if err := n.p.Close(); err != nil {
		t.Logf("na: Close: %v", err)
	}
	n.c.Close()
}

func (s *soak) pickTenant(rng *rand.Rand) (string, int, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for range 10 {
		id := s.tenants[rng.IntN(len(s.tenants))]
		st := s.st[id]
		if st.frozen {
			continue
		}
		st.inflight++
		return id, st.epoch, true
	}
	return "", 0, false
}

func (s *soak) done(id string) {
	s.mu.Lock()
	s.st[id].inflight--
	s.mu.Unlock()
}

func (s *soak) freeze(id string) {
	s.mu.Lock()
	s.st[id].frozen = true
	s.mu.Unlock()
	if err := poll(30*time.Second, func() error {
		s.mu.Lock()
		defer s.mu.Unlock()
		if n := s.st[id].inflight; n > 0 {
			return fmt.Errorf("%s: %d requests in flight", id, n)
		}
		return nil
	}); err != nil {
		s.t.Logf("freeze: %v", err)
	}
}

func (s *soak) unfreeze(id string) {
	s.mu.Lock()
	s.st[id].frozen = false
	s.mu.Unlock()
}

func (s *soak) writer(w int, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, uint64(w)))
	for i := 0; !s.stop.Load(); i++ {
		nodes := s.r.alive()
		id, epoch, ok := s.pickTenant(rng)
		if len(nodes) == 0 || !ok {
			if ok {
				s.done(id)
			}
			time.Sleep(20 * time.Millisecond) // nothing to send to
			continue
		}
		durable := rng.IntN(2) == 0
		name := fmt.Sprintf("%s.e%d.w%d-%06d", id, epoch, w, i)
		a := s.r.post(nodes[rng.IntN(len(nodes))], id, name, durable)
		s.done(id)
		if a.ok() {
			s.acked.Add(1)
		} else if a.err != nil || a.status >= 500 {
			time.Sleep(20 * time.Millisecond)
		}
		s.mu.Lock()
		s.acks = append(s.acks, &sAck{ack: a, epoch: epoch})
		s.mu.Unlock()
	}
}

// checkRows checks rows read of tenant id (read sent at sent): each row is
// the tenant's own; none of a deleted epoch or rolled back, if acked.
func (s *soak) checkRows(id string, evs []event, sent time.Time, where string) {
	s.rowsRead.Add(int64(len(evs)))
	var delBack, rbBack int
	var delEx, rbEx string
	defer func() {
		if delBack > 0 {
			s.violate("DELETED ROWS BACK: %s read via %s at %s returned %d rows acknowledged before a DeleteTenant that returned nil, e.g. %s", id, where, sent.Format("15:04:05.000"), delBack, delEx)
		}
		if rbBack > 0 {
			s.violate("ROLLED-BACK ROWS BACK: %s read via %s at %s returned %d rows acknowledged after the backup that RestoreTenant restored, e.g. %s", id, where, sent.Format("15:04:05.000"), rbBack, rbEx)
		}
	}()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range evs {
		if !strings.HasPrefix(e.Name, id+".") {
			s.mu.Unlock()
			s.violate("WRONG TENANT: %s read via %s returned row id %d %q", id, where, e.ID, e.Name)
			s.mu.Lock()
			continue
		}
		if dt, ok := s.deleted[e.Name]; ok && sent.After(dt) {
			delBack++
			if delEx == "" {
				delEx = fmt.Sprintf("%q (id %d)", e.Name, e.ID)
			}
		}
		if s.rolledBack[e.Name] {
			rbBack++
			if rbEx == "" {
				rbEx = fmt.Sprintf("%q (id %d)", e.Name, e.ID)
			}
		}
		// Older epoch, never acknowledged: a write that landed after the delete.
		var ep int
		if _, rest, ok := strings.Cut(e.Name, ".e"); ok {
			ep, _ = strconv.Atoi(strings.SplitN(rest, ".", 2)[0])
		}
		if _, del := s.deleted[e.Name]; ep < s.st[id].epoch && !del {
			s.lateOld = append(s.lateOld, fmt.Sprintf("%s %q id %d via %s", id, e.Name, e.ID, where))
		}
	}
}

func (s *soak) reader(w int, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, uint64(100+w)))
	for !s.stop.Load() {
		nodes := s.r.alive()
		if len(nodes) == 0 {
			time.Sleep(20 * time.Millisecond)
			continue
		}
		id := s.tenants[rng.IntN(len(s.tenants))]
		n := nodes[rng.IntN(len(nodes))]
		sent := time.Now()
		_, evs, err := s.r.get(n, id)
		if err != nil {
			time.Sleep(50 * time.Millisecond)
			continue
		}
		s.reads.Add(1)
		s.checkRows(id, evs, sent, n.id)
		time.Sleep(30 * time.Millisecond) // pacing
	}
}

// verify reads every tenant and checks every acknowledged durable write
// answered before the read began is there with its id.
func (s *soak) verify(label string) (durableChecked, missingNonDurable int) {
	start := time.Now()
	got, _, err := s.r.serveAll(s.tenants, 90*time.Second, 4)
	if err != nil {
		s.violate("%s: not every tenant served: %v", label, err)
	}
	for id, evs := range got {
		s.checkRows(id, evs, start, "verify")
	}
	s.mu.Lock()
	acks := slices.Clone(s.acks)
	deleted, rolled := s.deleted, s.rolledBack
	s.mu.Unlock()
	have := map[string]map[string]int64{}
	for id, evs := range got {
		m := map[string]int64{}
		for _, e := range evs {
			m[e.Name] = e.ID
		}
		have[id] = m
	}
	for _, a := range acks {
		if _, del := deleted[a.name]; !a.ok() || !a.at.Before(start) || del || rolled[a.name] {
			continue
		}
		m, served := have[a.tenant]
		if !served {
			continue
		}
		id, ok := m[a.name]
		if a.durable {
			durableChecked++
			if !ok {
				s.violate("%s: LOST durable: %s %q (id %d, node %s gen %d, acked %s via %s)", label, a.tenant, a.name, a.id, a.node, a.gen, a.at.Format("15:04:05.000"), a.via)
			} else if id != a.id {
				s.violate("%s: durable %s %q acked id %d, now id %d", label, a.tenant, a.name, a.id, id)
			}
		} else if !ok {
			missingNonDurable++
		}
	}
	return durableChecked, missingNonDurable
}

func (s *soak) record(ev chaosEv) {
	s.mu.Lock()
	s.events = append(s.events, ev)
	s.mu.Unlock()
	s.t.Logf("EVENT %s %s: %v %s", ev.kind, ev.node, ev.end.Sub(ev.start).Round(time.Millisecond), ev.note)
}

func (s *soak) realAlive() []*cnode { return s.r.alive() }

func (s *soak) moveTo(id, target string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return s.r.admin.Move(ctx, id, target)
}

func (s *soak) waitProgress(n int64, timeout time.Duration) error {
	want := s.acked.Load() + n
	return poll(timeout, func() error {
		if got := s.acked.Load(); got < want {
			return fmt.Errorf("%d acked, want %d", got, want)
		}
		return nil
	})
}

func TestClusterSoak(t *testing.T) {
	if os.Getenv("CLUSTER_SOAK") != "1" {
		t.Skip("CLUSTER_SOAK=1 to run (make soak-cluster)")
	}
	dur := 15 * time.Minute
	if d, err := time.ParseDuration(os.Getenv("CLUSTER_SOAK_DUR")); err == nil {
		dur = d
	}
	const nTenants = 36
	r := newCluster(t, 3, 0)
	s := &soak{t: t, r: r, tenants: tenantIDs("s", nTenants), st: map[string]*sTenant{},
		deleted: map[string]time.Time{}, rolledBack: map[string]bool{}}
	for _, id := range s.tenants {
		s.st[id] = &sTenant{}
	}
	s.na = startAdminNode(t, r)
	defer func() {
		if s.na != nil {
			s.na.close(t)
		}
	}()
	r.waitNodes([]string{"n0", "n1", "n2", "na"}, 30*time.Second)
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 7))
	for w := range 6 {
		s.wg.Go(func() { s.writer(w, seed) })
	}
	for w := range 2 {
		s.wg.Go(func() { s.reader(w, seed) })
	}
	// descriptor sampler
	type sample struct {
		at                  time.Time
		node                string
		pid, fds, threads   int
		rssKB               int64
		lsPid, lsFds, lsThr int
	}
	var samples []sample
	var smu sync.Mutex
	samplerDone := make(chan struct{})
	go func() {
		defer close(samplerDone)
		for !s.stop.Load() {
			for _, n := range r.nodes {
				c := n.current()
				if c == nil || c.exited() {
					continue
				}
				pid := c.cmd.Process.Pid
				fds, thr, rss, err := harness.ProcStats(pid)
				if err != nil {
					continue
				}
				lp := n.ls.PID()
				lf, lt, _, _ := harness.ProcStats(lp)
				smu.Lock()
				samples = append(samples, sample{time.Now(), n.id, pid, fds, thr, rss, lp, lf, lt})
				smu.Unlock()
			}
			for i := 0; i < 100 && !s.stop.Load(); i++ {
				time.Sleep(100 * time.Millisecond) // sampling period
			}
		}
	}()
	if err := s.waitProgress(100, 90*time.Second); err != nil {
		t.Fatal(err)
	}
	kinds := []string{"delete", "restore", "kill", "wipe", "pause", "etcd", "s3", "move"}
	logDir := os.Getenv("CLUSTER_SOAK_LOGS")
	defer func() {
		if logDir == "" || os.MkdirAll(logDir, 0o755) != nil {
			return
		}
		for _, n := range r.nodes {
			b, _ := os.ReadFile(n.logPath)
			os.WriteFile(filepath.Join(logDir, n.id+".log"), b, 0o644)
			b, _ = os.ReadFile(n.ls.LogPath)
			os.WriteFile(filepath.Join(logDir, n.id+"-litestream.log"), b, 0o644)
		}
	}()
	if k := os.Getenv("CLUSTER_SOAK_KINDS"); k != "" {
		kinds = strings.Split(k, ",")
	}
	counts := map[string]int{}
	deadline := time.Now().Add(dur)
	evn := 0
	for time.Now().Before(deadline) {
		// Wait 20-60 s between events (the experiment's pacing).
		gap := time.Duration(20+rng.IntN(41)) * time.Second
		if evn < len(kinds) {
			gap = 20 * time.Second
		}
		if g, err := time.ParseDuration(os.Getenv("CLUSTER_SOAK_GAP")); err == nil {
			gap = g
		}
		time.Sleep(min(gap, time.Until(deadline)))
		if !time.Now().Before(deadline) {
			break
		}
		kind := kinds[rng.IntN(len(kinds))]
		if evn < len(kinds) {
			kind = kinds[evn] // every kind at least once
		}
		evn++
		ev := s.chaos(kind, rng)
		counts[kind]++
		s.record(ev)
		// Stabilize: every node back, traffic going, then check.
		r.waitNodes([]string{"n0", "n1", "n2", "na"}, 60*time.Second)
		if err := s.waitProgress(30, 90*time.Second); err != nil {
			s.violate("after %s: traffic did not recover: %v", kind, err)
		}
		dc, mnd := s.verify("after " + kind)
		t.Logf("  verified: %d durable acks present; %d non-durable acks missing so far; %d acked total", dc, mnd, s.acked.Load())
	}
	s.stop.Store(true)
	s.wg.Wait()
	<-samplerDone
	dc, mnd := s.verify("final")
	s.mu.Lock()
	acks := slices.Clone(s.acks)
	s.mu.Unlock()

	// Final detailed accounting from a last read of every tenant.
	got, _, err := r.serveAll(s.tenants, 90*time.Second, 4)
	if err != nil {
		s.violate("final read: %v", err)
	}
	var okN, durN, ndN, deletedN, rolledN int
	status := map[string]int{}
	var lostND []*sAck
	for _, a := range acks {
		switch {
		case a.ok():
			status["201"]++
		case a.err != nil:
			status["no answer"]++
		default:
			status[fmt.Sprintf("%d %s", a.status, truncate(a.body, 60))]++
		}
		if !a.ok() {
			continue
		}
		okN++
		if a.durable {
			durN++
		} else {
			ndN++
		}
		if _, del := s.deleted[a.name]; del {
			deletedN++
			continue
		}
		if s.rolledBack[a.name] {
			rolledN++
			continue
		}
		if a.durable {
			continue
		}
		found := false
		for _, e := range got[a.tenant] {
			if e.Name == a.name {
				found = true
			}
		}
		if !found {
			lostND = append(lostND, a)
		}
	}
	// Classify lost non-durable writes by the nearest event after the ack.
	cls := map[string]int{}
	for _, a := range lostND {
		best := "no event within 15s after the ack"
		for _, ev := range s.events {
			d := ev.start.Sub(a.at)
			if d < -2*time.Second || d > 15*time.Second {
				continue
			}
			if ev.node != "" && ev.node != a.node && ev.kind != "move" {
				continue
			}
			best = fmt.Sprintf("%s of %s, %s after the ack", ev.kind, ev.node, d.Round(100*time.Millisecond))
			break
		}
		cls[best]++
		t.Logf("lost non-durable: %s %q id %d node %s gen %d acked %s: %s", a.tenant, a.name, a.id, a.node, a.gen, a.at.Format("15:04:05.000"), best)
	}
	// Single writer over the final state: acks present with their id,
	// ordered by id, generations never down; one node per generation over
	// every ack.
	for _, id := range s.tenants {
		have := map[string]int64{}
		for _, e := range got[id] {
			have[e.Name] = e.ID
		}
		var surv []*sAck
		genNode := map[int64]string{}
		for _, a := range acks {
			if !a.ok() || a.tenant != id {
				continue
			}
			if n, ok := genNode[a.gen]; ok && n != a.node {
				s.violate("TWO WRITERS: %s generation %d written by %s and %s", id, a.gen, n, a.node)
			}
			genNode[a.gen] = a.node
			if a.gen == 0 || a.node == "" {
				s.violate("%s %q acked without node/generation", id, a.name)
			}
			if hid, ok := have[a.name]; ok && hid == a.id {
				surv = append(surv, a)
			}
		}
		slices.SortFunc(surv, func(a, b *sAck) int { return int(a.id - b.id) })
		for i := 1; i < len(surv); i++ {
			if surv[i].gen < surv[i-1].gen {
				s.violate("GENERATION WENT DOWN: %s id %d gen %d (%s) after id %d gen %d (%s)", id, surv[i].id, surv[i].gen, surv[i].node, surv[i-1].id, surv[i-1].gen, surv[i-1].node)
			}
		}
	}
	t.Logf("SUMMARY: duration %v, events %v", dur, counts)
	t.Logf("SUMMARY: %d requests: %s", len(acks), func() string {
		var o []string
		for k, v := range status {
			o = append(o, fmt.Sprintf("%s: %d", k, v))
		}
		sort.Strings(o)
		return strings.Join(o, "; ")
	}())
	t.Logf("SUMMARY: acked %d (durable %d, non-durable %d); of them deleted by DeleteTenant %d, rolled back by RestoreTenant %d; durable checked at end %d; non-durable missing %d (verify said %d)", okN, durN, ndN, deletedN, rolledN, dc, len(lostND), mnd)
	t.Logf("SUMMARY: lost non-durable by cause: %v", cls)
	t.Logf("SUMMARY: reads %d, rows read %d; unacknowledged older-epoch rows seen after a delete: %d %v", s.reads.Load(), s.rowsRead.Load(), len(s.lateOld), s.lateOld[:min(5, len(s.lateOld))])
	smu.Lock()
	byProc := map[string][]sample{}
	for _, sm := range samples {
		k := fmt.Sprintf("%s pid %d", sm.node, sm.pid)
		byProc[k] = append(byProc[k], sm)
	}
	smu.Unlock()
	keys := slices.Sorted(func(yield func(string) bool) {
		for k := range byProc {
			if !yield(k) {
				return
			}
		}
	})
	for _, k := range keys {
		ss := byProc[k]
		var fds, thr, lfd []int
		for _, sm := range ss {
			fds = append(fds, sm.fds)
			thr = append(thr, sm.threads)
			lfd = append(lfd, sm.lsFds)
		}
		t.Logf("FDS %s (%v): events fds first %d max %d last %d; threads max %d; rss last %d kB; litestream fds first %d max %d last %d", k,
			ss[len(ss)-1].at.Sub(ss[0].at).Round(time.Second), fds[0], slices.Max(fds), fds[len(fds)-1], slices.Max(thr), ss[len(ss)-1].rssKB, lfd[0], slices.Max(lfd), lfd[len(lfd)-1])
	}
	s.mu.Lock()
	for _, ev := range s.events {
		t.Logf("EV %s %-8s %-3s %6v %s", ev.start.Format("15:04:05"), ev.kind, ev.node, ev.end.Sub(ev.start).Round(time.Millisecond), ev.note)
	}
	s.mu.Unlock()

	// Stop every node gracefully, then check the files.
	for _, n := range r.nodes {
		n.stop()
	}
	s.na.close(t)
	s.na = nil
	t.Logf("node errors by kind:\n%s", r.errorKinds())
	dirs := map[string]string{"na": filepath.Join(t.TempDir(), "..")}
	_ = dirs
	checkDir := func(node, dir string) {
		ents, err := os.ReadDir(dir)
		if err != nil {
			t.Errorf("%s: %v", node, err)
			return
		}
		var names, odd []string
		for _, e := range ents {
			nm := e.Name()
			names = append(names, nm)
			switch {
			case strings.HasSuffix(nm, ".db"):
				id := strings.TrimSuffix(nm, ".db")
				if !slices.Contains(s.tenants, id) {
					odd = append(odd, nm)
				}
				db, err := sql.Open("sqlite3", "file:"+filepath.Join(dir, nm)+"?mode=ro")
				if err != nil {
					t.Errorf("%s %s: %v", node, nm, err)
					continue
				}
				var res string
				err = db.QueryRow(`PRAGMA integrity_check`).Scan(&res)
				db.Close()
				if err != nil || res != "ok" {
					s.violate("INTEGRITY %s %s: %q %v", node, nm, res, err)
				}
			case strings.HasSuffix(nm, ".db-wal"), strings.HasSuffix(nm, ".db-shm"):
			case strings.HasPrefix(nm, ".sqliteproxy-"):
			case strings.HasPrefix(nm, ".") && strings.Contains(nm, ".db-"):
				if !strings.HasSuffix(nm, ".db-litestream") {
					odd = append(odd, nm)
				}
			default:
				odd = append(odd, nm)
			}
		}
		t.Logf("DIR %s %s: %d entries; not a tenant file, its -wal/-shm, Litestream dir or .sqliteproxy-*: %v", node, dir, len(names), odd)
	}
	for _, n := range r.nodes {
		checkDir(n.id, n.dir)
	}
	checkDir("na", s.na0dir())
	s.mu.Lock()
	t.Logf("VIOLATIONS by kind: %v", s.vkinds)
	for _, v := range s.violations {
		t.Logf("  %s", v)
	}
	s.mu.Unlock()
}

var naDir string

func (s *soak) na0dir() string { return naDir }

// chaos runs one event.
func (s *soak) chaos(kind string, rng *rand.Rand) chaosEv {
	r := s.r
	ev := chaosEv{kind: kind, start: time.Now()}
	pick := func() *cnode { return r.nodes[rng.IntN(len(r.nodes))] }
	switch kind {
	case "kill":
		n := pick()
		ev.node = n.id
		n.kill()
		n.restart()
	case "wipe":
		n := pick()
		ev.node = n.id
		n.kill()
		ents, _ := os.ReadDir(n.dir)
		for _, e := range ents {
			os.RemoveAll(filepath.Join(n.dir, e.Name()))
		}
		ev.note = fmt.Sprintf("%d entries removed", len(ents))
		n.restart()
	case "pause":
		n := pick()
		ev.node = n.id
		n.pause()
		var others []string
		for _, o := range r.nodes {
			if o != n {
				others = append(others, o.id)
			}
		}
		others = append(others, "na")
		slices.Sort(others)
		err := poll(30*time.Second, func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			nodes, err := r.admin.Nodes(ctx)
			if err != nil {
				return err
			}
			for _, x := range nodes {
				if x.ID == n.id {
					return fmt.Errorf("%s still live", n.id)
				}
			}
			return nil
		})
		// Past the lease: one TTL more after it left (the experiment's parameter).
		time.Sleep(clusterTTL)
		n.resume()
		ev.note = fmt.Sprintf("lease gone: %v", err)
	case "etcd":
		stopped := make(chan struct{})
		go func() { defer close(stopped); r.etcd.Stop() }()
		out := time.Duration(1+rng.IntN(3)) * clusterTTL
		time.Sleep(out) // the outage's length: the experiment's parameter
		select {
		case <-stopped:
		case <-time.After(30 * time.Second):
			s.violate("etcd Stop did not return within 30s")
		}
		r.etcd.Restart(s.t)
		ev.note = fmt.Sprintf("down %v", out)
	case "s3":
		r.s3.Stop()
		out := time.Duration(3+rng.IntN(4)) * time.Second
		time.Sleep(out) // the outage's length
		r.s3.Restart()
		ev.note = fmt.Sprintf("down %v", out)
	case "move":
		owners, err := r.owners()
		if err != nil {
			ev.note = err.Error()
			break
		}
		var notes []string
		for range 3 {
			id := s.tenants[rng.IntN(len(s.tenants))]
			from := owners[id].Node
			var to string
			for {
				to = pick().id
				if to != from {
					break
				}
			}
			st := time.Now()
			err := s.moveTo(id, to, 30*time.Second)
			notes = append(notes, fmt.Sprintf("%s %s->%s %v err=%v", id, from, to, time.Since(st).Round(time.Millisecond), err))
			if err != nil {
				s.t.Logf("move %s to %s: %v", id, to, err)
			}
		}
		ev.note = strings.Join(notes, "; ")
	case "delete":
		id := s.tenants[rng.IntN(len(s.tenants))]
		ev.node = ""
		s.freeze(id)
		owners, _ := r.owners()
		before := owners[id]
		err := s.moveTo(id, "na", 30*time.Second)
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		var cerr error
		if err == nil {
			err = s.na.p.DeleteTenant(ctx, id)
			if err == nil {
				now := time.Now()
				g1, ok1 := s.na.p.Generation(id)
				s.mu.Lock()
				for _, a := range s.acks {
					if a.tenant == id && a.ok() {
						s.deleted[a.name] = now
					}
				}
				s.st[id].epoch++
				s.mu.Unlock()
				cerr = s.na.p.CreateTenant(ctx, id)
				g2, ok2 := s.na.p.Generation(id)
				ev.note += fmt.Sprintf("owner before %s gen %d; na gen after delete %d %v, after create %d %v; create: %v; ", before.Node, before.Generation, g1, ok1, g2, ok2, cerr)
			} else {
				err = fmt.Errorf("DeleteTenant: %w", err)
			}
		} else {
			err = fmt.Errorf("move to na: %w", err)
		}
		cancel()
		// Right after the delete, the tenant read through every node has
		// nothing of before.
		if err == nil {
			st := time.Now()
			q := s.na.p.DB.QueryRowContext(sqliteproxy.WithOrgID(context.Background(), id), `SELECT count(*) FROM events`)
			var cnt int
			qerr := q.Scan(&cnt)
			ev.note += fmt.Sprintf("na count right after: %d %v (%v); ", cnt, qerr, time.Since(st).Round(time.Millisecond))
			if cnt != 0 {
				s.violate("after DeleteTenant of %s on na, na itself counts %d rows", id, cnt)
			}
			for _, n := range r.alive() {
				st := time.Now()
				_, evs, gerr := r.get(n, id)
				if gerr == nil {
					s.checkRows(id, evs, st, n.id+" right after delete")
					if len(evs) != 0 {
						s.violate("after DeleteTenant+CreateTenant of %s, read via %s: %d rows, want 0", id, n.id, len(evs))
					}
				}
			}
		}
		s.unfreeze(id)
		to := pick().id
		merr := s.moveTo(id, to, 30*time.Second)
		ev.note += fmt.Sprintf("%s: err=%v; moved back to %s: %v", id, err, to, merr)
		if err != nil {
			s.violate("delete event %s: %v", id, err)
		}
	case "restore":
		id := s.tenants[rng.IntN(len(s.tenants))]
		s.freeze(id)
		bk := filepath.Join(s.t.TempDir(), id+".bak")
		err := s.moveTo(id, "na", 30*time.Second)
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		var backedUp time.Time
		var nBackup int
		if err == nil {
			berr := s.na.p.BackupTenant(ctx, id, bk)
			if berr != nil {
				// The owner has not opened it yet: open it, then back up.
				ev.note += fmt.Sprintf("first BackupTenant on the owner: %v; ", berr)
				var cnt int
				_ = s.na.p.DB.QueryRowContext(sqliteproxy.WithOrgID(context.Background(), id), `SELECT count(*) FROM events`).Scan(&cnt)
				berr = s.na.p.BackupTenant(ctx, id, bk)
			}
			err = berr
			backedUp = time.Now()
			if err != nil {
				err = fmt.Errorf("BackupTenant: %w", err)
			}
		} else {
			err = fmt.Errorf("move to na: %w", err)
		}
		s.unfreeze(id)
		if err == nil {
			// Some writes to the tenant after the backup (to be rolled back).
			_ = poll(15*time.Second, func() error {
				s.mu.Lock()
				defer s.mu.Unlock()
				n := 0
				for _, a := range s.acks {
					if a.tenant == id && a.ok() && a.sent.After(backedUp) {
						n++
					}
				}
				if n < 5 {
					return fmt.Errorf("%d", n)
				}
				return nil
			})
			s.freeze(id)
			s.mu.Lock()
			for _, a := range s.acks {
				if a.tenant == id && a.ok() && a.sent.After(backedUp) {
					s.rolledBack[a.name] = true
					nBackup++
				}
			}
			s.mu.Unlock()
			err = s.na.p.RestoreTenant(ctx, id, bk)
			if errors.Is(err, sqliteproxy.ErrNotOwner) {
				if merr := s.moveTo(id, "na", 30*time.Second); merr == nil {
					err = s.na.p.RestoreTenant(ctx, id, bk)
				}
			}
			if err != nil {
				err = fmt.Errorf("RestoreTenant: %w", err)
			}
			s.unfreeze(id)
		}
		to := pick().id
		merr := s.moveTo(id, to, 30*time.Second)
		ev.note += fmt.Sprintf("%s: err=%v; %d acked writes between backup and restore; moved back to %s: %v", id, err, nBackup, to, merr)
		if err != nil {
			s.violate("restore event %s: %v", id, err)
		}
	}
	ev.end = time.Now()
	_ = io.Discard
	return ev
}
