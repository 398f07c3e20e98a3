//go:build linux

package replication_test

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sqliteproxy/sqliteproxy"
	"github.com/sqliteproxy/sqliteproxy/replication/harness"
	"github.com/sqliteproxy/sqliteproxy/sqliteproxytest"
)

var crashSeed = flag.Uint64("replication.crash-seed", 0, "seed of the crash tests' kill points and traffic (0: from the clock)")

// eventsMigrations are examples/events' migrations, for the node that opens
// the tenants that service made: MigrationStatus compares checksums, so if
// the example's schema changes without this list, the crash tests say so
// (drift) rather than pass.
var eventsMigrations = []string{
	`CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, name TEXT NOT NULL, created_at DATETIME DEFAULT CURRENT_TIMESTAMP)`,
}

// A node running examples/events and Litestream is SIGKILLed at random
// points while several clients POST events with ?durable=1 (201 only once
// the event is in the replica), and restarts on the same data directory,
// cycle after cycle. After every kill the replica holds every acknowledged
// event; after the last, another node (an empty data directory) restores
// every tenant on first access: every acknowledged event, integrity ok,
// migrations applied.
func TestCrash_AcknowledgedRowsSurvive(t *testing.T) {
	tenants, cycles := 200, 20 // the size: it runs in make test (~2 min)
	r := newCrashRun(t, tenants, true, 300*time.Millisecond, 3*time.Second)
	for c := range cycles {
		r.cycle(c)
		have := r.replicaState()
		missing, carried, holes := r.compare(c, have)
		missing = append(missing, carried...) // durable: every acknowledged event, whatever its cycle
		for _, p := range missing {
			t.Errorf("LOST: seed %d, after cycle %d's kill (%s): %s's event %q (id %d, acknowledged in cycle %d, %v before that cycle's kill) is not in the replica",
				r.seed, c, r.kills[c].order, p.tenant, p.name, p.id, p.cycle, r.kills[p.cycle].at.Sub(p.at).Round(time.Millisecond))
		}
		for _, p := range holes {
			t.Errorf("HOLE: seed %d, cycle %d: %s's event %q (id %d, cycle %d) is not in the replica, later events are",
				r.seed, c, p.tenant, p.name, p.id, p.cycle)
		}
		r.logCycle(c, have, missing)
		if len(missing)+len(holes) > 0 {
			t.FailNow()
		}
	}

	got := r.anotherNode()
	lost, unacked := 0, 0
	for _, p := range r.posts {
		switch in := got[p.tenant][p.name]; {
		case p.acked() && !in:
			lost++
			t.Errorf("LOST on another node: seed %d: %s's event %q (id %d, cycle %d, acknowledged %v before that cycle's kill)",
				r.seed, p.tenant, p.name, p.id, p.cycle, r.kills[p.cycle].at.Sub(p.at).Round(time.Millisecond))
		case !p.acked() && in:
			unacked++
		}
	}
	t.Logf("another node after %d crash cycles of %d tenants: %d acknowledged (durable) events, %d lost; %d of %d unacknowledged events are there too",
		cycles, tenants, r.count(func(p *post) bool { return p.acked() }), lost, unacked, r.count(func(p *post) bool { return !p.acked() }))
}

// The same crashes without ?durable=1: events are acknowledged once
// committed on the node, and Litestream uploads them within about a second.
// After each kill, the events acknowledged in that cycle and missing from
// the replica measure the loss window: the kill time minus the
// acknowledgement time of the oldest of them. The test logs p50 and max
// over the cycles; it fails on errors, on an event missing although a
// later one of its tenant is there (a replica holds a prefix of a tenant's
// commits: that is a lost commit, not a late upload), and on an event
// acknowledged more than 10 s before the kill and still missing.
func TestCrash_LossWindowWithoutSync(t *testing.T) {
	tenants, cycles := 40, 5
	maxDelay := 4 * time.Second
	if *long {
		// Delays beyond the 10 s threshold, so that it can bite.
		tenants, cycles, maxDelay = 200, 20, 15*time.Second
	}
	const tooOld = 10 * time.Second
	r := newCrashRun(t, tenants, false, 500*time.Millisecond, maxDelay)
	windows := make([]time.Duration, cycles)
	lostRows := make([]int, cycles)
	for c := range cycles {
		r.cycle(c)
		have := r.replicaState()
		missing, carried, holes := r.compare(c, have)
		k := r.kills[c]
		for _, p := range missing {
			age := k.at.Sub(p.at)
			windows[c] = max(windows[c], age)
			if age > tooOld {
				t.Errorf("LOST: seed %d, cycle %d: %s's event %q (id %d) was acknowledged %v before the kill (%s) and is not in the replica",
					r.seed, c, p.tenant, p.name, p.id, age.Round(time.Millisecond), k.order)
			}
		}
		lostRows[c] = len(missing)
		for _, p := range holes {
			t.Errorf("HOLE: seed %d, cycle %d: %s's event %q (id %d, cycle %d) is not in the replica, later events are",
				r.seed, c, p.tenant, p.name, p.id, p.cycle)
		}
		r.logCycle(c, have, missing)
		if len(carried) > 0 {
			t.Logf("cycle %d: %d events of earlier cycles still only on the node (not uploaded since the restart)", c, len(carried))
		}
		if critical(missing, tooOld, k.at)+len(holes) > 0 {
			t.FailNow()
		}
	}
	sorted := slices.Clone(windows)
	slices.Sort(sorted)
	total := 0
	for _, n := range lostRows {
		total += n
	}
	t.Logf("loss window without SyncTenant over %d cycles: p50 %v, max %v (acknowledged events missing from the replica at the kill: %d of %d; per cycle %v; windows %v)",
		cycles, sorted[(len(sorted)-1)/2].Round(time.Millisecond), sorted[len(sorted)-1].Round(time.Millisecond),
		total, r.count(func(p *post) bool { return p.acked() }), lostRows, roundAll(windows))

	got := r.anotherNode()
	var lostLast, lostEarlier, unacked int
	for _, p := range r.posts {
		switch in := got[p.tenant][p.name]; {
		case p.acked() && !in && p.cycle == cycles-1:
			lostLast++
		case p.acked() && !in:
			lostEarlier++
		case !p.acked() && in:
			unacked++
		}
	}
	t.Logf("another node after %d crash cycles of %d tenants: %d acknowledged events missing (%d of the last cycle, %d of earlier cycles whose tenants were not uploaded again); %d of %d unacknowledged events are there",
		cycles, tenants, lostLast+lostEarlier, lostLast, lostEarlier, unacked, r.count(func(p *post) bool { return !p.acked() }))
}

// critical counts the events acknowledged more than tooOld before the kill.
func critical(missing []*post, tooOld time.Duration, killAt time.Time) int {
	n := 0
	for _, p := range missing {
		if killAt.Sub(p.at) > tooOld {
			n++
		}
	}
	return n
}

func roundAll(ds []time.Duration) []time.Duration {
	out := make([]time.Duration, len(ds))
	for i, d := range ds {
		out[i] = d.Round(time.Millisecond)
	}
	return out
}

// post is one POST /events of a crash test.
type post struct {
	tenant, name string
	cycle        int
	status       int       // 0: no answer (the node died first, or the request failed)
	id           int64     // the event's id, from a 201
	at           time.Time // when the answer came
	body         string    // of an answer other than 201
}

func (p *post) acked() bool { return p.status == http.StatusCreated }

// kill is how a cycle ended.
type kill struct {
	at       time.Time     // just before the first SIGKILL
	delay    time.Duration // the node's life, from healthy to at
	order    string
	streamed int // databases Litestream streamed just before (GET /list)
}

// crashRun is a node (one data directory) running examples/events as a
// child process beside the harness's Litestream, with a file:// replica.
type crashRun struct {
	t       *testing.T
	g       *rig
	bin     string // the events binary
	dir     string // the node's data directory, kept across cycles
	logPath string // the events child's output, all cycles
	tenants []string
	durable bool
	seed    uint64
	rng     *rand.Rand
	minKill time.Duration
	maxKill time.Duration

	posts []*post
	kills []kill
	last  map[string]map[string]bool // the replica after the last kill
}

const crashWorkers = 6

func newCrashRun(t *testing.T, tenants int, durable bool, minKill, maxKill time.Duration) *crashRun {
	seed := *crashSeed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("seed %d (rerun with -replication.crash-seed=%d)", seed, seed)
	r := &crashRun{
		t: t, g: newRig(t, "file"), bin: eventsBinary(t), dir: t.TempDir(),
		logPath: filepath.Join(t.TempDir(), "events.log"),
		durable: durable, seed: seed, rng: rand.New(rand.NewPCG(seed, 0)),
		minKill: minKill, maxKill: maxKill,
	}
	for i := range tenants {
		r.tenants = append(r.tenants, fmt.Sprintf("t%03d", i))
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("events log: errors by kind:\n%s\ntail:\n%s", errorKinds(r.logPath), tail(r.logPath, 4096))
		}
	})
	return r
}

// child is a running events process.
type child struct {
	cmd  *exec.Cmd
	base string // http://127.0.0.1:PORT
	done chan struct{}
	err  error // Wait's, after done
}

func (c *child) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// kill SIGKILLs the child and returns once it has exited.
func (c *child) kill() {
	if !c.exited() {
		_ = c.cmd.Process.Kill()
	}
	<-c.done
}

// startEvents starts the events service on the node's directory and
// returns once /healthz answers.
func (r *crashRun) startEvents() *child {
	t := r.t
	t.Helper()
	for attempt := 0; ; attempt++ {
		port, err := harness.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		logf, err := os.OpenFile(r.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		// A budget of a tenth of the tenants (20 for 200): they are evicted and reopened.
		args := []string{"-addr", addr, "-dir", r.dir, "-replica", r.g.replica, "-max-connections", strconv.Itoa(max(4, len(r.tenants)/10)),
			"-litestream-socket", r.g.ls.SocketPath, "-litestream", r.g.ls.Bin()}
		fmt.Fprintf(logf, "==== %s events %s\n", time.Now().Format(time.RFC3339Nano), strings.Join(args, " "))
		cmd := exec.Command(r.bin, args...)
		cmd.Stdout, cmd.Stderr = logf, logf
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // dies with the test binary
		err = cmd.Start()
		logf.Close() // the child has its own copy
		if err != nil {
			t.Fatal(err)
		}
		c := &child{cmd: cmd, base: "http://" + addr, done: make(chan struct{})}
		go func() {
			c.err = cmd.Wait()
			close(c.done)
		}()
		t.Cleanup(c.kill)
		err = waitHealthy(c, 60*time.Second)
		if err == nil {
			return c
		}
		c.kill()
		if attempt < 2 && strings.Contains(tail(r.logPath, 2048), "address already in use") {
			continue // the port was taken meanwhile
		}
		t.Fatalf("events: %v\n%s", err, tail(r.logPath, 4096))
	}
}

func waitHealthy(c *child, timeout time.Duration) error {
	hc := &http.Client{Timeout: 2 * time.Second}
	defer hc.CloseIdleConnections()
	deadline := time.Now().Add(timeout)
	delay := 2 * time.Millisecond
	for {
		resp, err := hc.Get(c.base + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("/healthz: %s", resp.Status)
		}
		if c.exited() {
			return fmt.Errorf("exited (%v) before it was healthy: %w", c.err, err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not healthy after %v: %w", timeout, err)
		}
		time.Sleep(delay) // poll interval, not ordering
		delay = min(2*delay, 50*time.Millisecond)
	}
}

// tail returns the last n bytes of the file at p.
func tail(p string, n int64) string {
	f, err := os.Open(p)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > n {
		_, _ = f.Seek(fi.Size()-n, io.SeekStart)
	}
	b, _ := io.ReadAll(f)
	return string(b)
}

// errorKinds counts the service's ERROR lines in its log by message, with
// digits masked (the numbers vary, the kinds do not).
func errorKinds(logPath string) string {
	b, err := os.ReadFile(logPath)
	if err != nil {
		return err.Error()
	}
	digits := regexp.MustCompile(`[0-9]+`)
	kinds := map[string]int{}
	for line := range strings.Lines(string(b)) {
		_, msg, ok := strings.Cut(line, " ERROR ")
		if !ok {
			continue
		}
		kinds[digits.ReplaceAllString(strings.TrimSpace(msg), "N")]++
	}
	var out []string
	for k, n := range kinds {
		out = append(out, fmt.Sprintf("%6d  %s", n, k))
	}
	slices.Sort(out)
	return strings.Join(out, "\n")
}

// cycle runs one life of the node: Litestream (re)started, the service
// started on the node's directory, traffic from several clients, then both
// SIGKILLed after a random delay.
func (r *crashRun) cycle(c int) {
	t := r.t
	t.Helper()
	if c > 0 {
		r.g.ls.Restart() // killed at the end of the last cycle: registrations are gone
	}
	ch := r.startEvents()
	delay := r.minKill + time.Duration(r.rng.Int64N(int64(r.maxKill-r.minKill)+1))
	order := "events first"
	lsFirst := r.rng.IntN(2) == 0
	if lsFirst {
		order = "litestream first"
	}

	tr := &http.Transport{MaxIdleConnsPerHost: crashWorkers, DisableCompression: true}
	hc := &http.Client{Transport: tr, Timeout: 60 * time.Second}
	defer tr.CloseIdleConnections()
	var stop atomic.Bool
	results := make([][]*post, crashWorkers)
	var wg sync.WaitGroup
	for w := range crashWorkers {
		rng := rand.New(rand.NewPCG(r.seed, uint64(c*crashWorkers+w+1)))
		wg.Go(func() {
			for i := 0; !stop.Load(); i++ {
				p := &post{tenant: r.tenants[rng.IntN(len(r.tenants))], name: fmt.Sprintf("c%02d-w%d-%06d", c, w, i), cycle: c}
				results[w] = append(results[w], p)
				r.send(hc, ch.base, p)
			}
		})
	}
	started := time.Now()
	timer := time.NewTimer(delay) // the workload: the node lives this long
	select {
	case <-timer.C:
	case <-ch.done:
		stop.Store(true)
		wg.Wait()
		t.Fatalf("cycle %d: events exited on its own (%v)", c, ch.err)
	}
	streamed := -1
	if dbs, err := r.g.ls.Client.List(); err == nil {
		streamed = len(dbs)
	}
	stop.Store(true)
	k := kill{at: time.Now(), order: order, streamed: streamed}
	k.delay = k.at.Sub(started)
	if lsFirst {
		r.g.ls.Kill()
		ch.kill()
	} else {
		ch.kill()
		r.g.ls.Kill()
	}
	wg.Wait() // in-flight requests fail at once: their server is gone
	r.kills = append(r.kills, k)
	for _, ps := range results {
		r.posts = append(r.posts, ps...)
	}
	var failed []string
	for _, ps := range results {
		for _, p := range ps {
			if p.status != 0 && !p.acked() && p.at.Before(k.at) {
				failed = append(failed, fmt.Sprintf("%s for %s: %d %s", p.name, p.tenant, p.status, p.body))
			}
		}
	}
	if len(failed) > 0 {
		t.Errorf("cycle %d: %d POSTs failed before the kill, e.g. %s (the service's log says why)", c, len(failed), strings.Join(failed[:min(3, len(failed))], "; "))
	}
}

// send POSTs p's event and records the answer.
func (r *crashRun) send(hc *http.Client, base string, p *post) {
	u := base + "/events"
	if r.durable {
		u += "?durable=1"
	}
	body, _ := json.Marshal(map[string]string{"Name": p.name})
	req, err := http.NewRequest(http.MethodPost, u, strings.NewReader(string(body)))
	if err != nil {
		r.t.Error(err)
		return
	}
	req.Header.Set("X-Tenant-ID", p.tenant)
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return // no answer: the node died
	}
	defer resp.Body.Close()
	at := time.Now()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return // cut off: not an acknowledgement
	}
	if resp.StatusCode != http.StatusCreated {
		p.status, p.at, p.body = resp.StatusCode, at, strings.TrimSpace(string(b))
		return
	}
	var e struct {
		ID   int64  `json:"id"`
		Name string `json:"name"`
	}
	if err := json.Unmarshal(b, &e); err != nil || e.Name != p.name || e.ID == 0 {
		r.t.Errorf("POST %s for %s: 201 with %q (%v)", p.name, p.tenant, b, err)
		return
	}
	p.status, p.at, p.id = resp.StatusCode, at, e.ID
}

// replicaState returns the event names in every tenant's replica, as
// another node would restore them now (after a kill: nothing moves).
func (r *crashRun) replicaState() map[string]map[string]bool {
	t := r.t
	t.Helper()
	dir := t.TempDir()
	var (
		mu    sync.Mutex
		have  []string
		next  atomic.Int64
		wg    sync.WaitGroup
		fetch = func(id string) error {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			return sqliteproxy.FetchReplica(ctx, r.g.replica, id, time.Time{}, filepath.Join(dir, id+".db"), r.g.ls.Bin())
		}
	)
	for range 2 {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= len(r.tenants) {
					return
				}
				id := r.tenants[i]
				switch err := fetch(id); {
				case errors.Is(err, sqliteproxy.ErrTenantNotFound):
				case err != nil:
					t.Errorf("fetch %s's replica: %v", id, err)
				default:
					mu.Lock()
					have = append(have, id)
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	out := make(map[string]map[string]bool, len(r.tenants))
	p := sqliteproxytest.New(t, sqliteproxy.Config{Dir: dir})
	for _, id := range have {
		out[id] = set(names(t, p, id))
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	r.last = out
	return out
}

func set(ss []string) map[string]bool {
	m := make(map[string]bool, len(ss))
	for _, s := range ss {
		m[s] = true
	}
	return m
}

// compare checks a replica state taken after cycle c's kill against the
// acknowledged events so far. missing: events acknowledged in cycle c that
// are not there; carried: events of earlier cycles not there, and no later
// event of their tenant is (without SyncTenant: still only on the node's
// disk, not uploaded since the node restarted); holes:
// events not there although a later event of their tenant is. A replica
// holds a prefix of each tenant's commits, in (cycle, id) order, so a hole
// is a lost commit.
func (r *crashRun) compare(c int, have map[string]map[string]bool) (missing, carried, holes []*post) {
	byTenant := map[string][]*post{}
	for _, p := range r.posts {
		if p.acked() {
			byTenant[p.tenant] = append(byTenant[p.tenant], p)
		}
	}
	for id, ps := range byTenant {
		slices.SortFunc(ps, func(a, b *post) int {
			if a.cycle != b.cycle {
				return a.cycle - b.cycle
			}
			return int(a.id - b.id)
		})
		last := -1 // the last acknowledged event there
		for i, p := range ps {
			if have[id][p.name] {
				last = i
			}
		}
		for i, p := range ps {
			switch {
			case have[id][p.name]:
			case i < last:
				holes = append(holes, p)
			case p.cycle == c:
				missing = append(missing, p)
			default:
				carried = append(carried, p)
			}
		}
	}
	slices.SortFunc(missing, func(a, b *post) int { return a.at.Compare(b.at) })
	for name := range unknownNames(r.posts, have) {
		r.t.Errorf("cycle %d: event %q is in the replica, but no client sent it", c, name)
	}
	return missing, carried, holes
}

// unknownNames returns the names in have that no post sent.
func unknownNames(posts []*post, have map[string]map[string]bool) map[string]bool {
	sent := map[string]string{}
	for _, p := range posts {
		sent[p.name] = p.tenant
	}
	out := map[string]bool{}
	for id, names := range have {
		for n := range names {
			if sent[n] != id {
				out[id+"/"+n] = true
			}
		}
	}
	return out
}

func (r *crashRun) count(f func(*post) bool) int {
	n := 0
	for _, p := range r.posts {
		if f(p) {
			n++
		}
	}
	return n
}

// logCycle logs one line about cycle c.
func (r *crashRun) logCycle(c int, have map[string]map[string]bool, missing []*post) {
	var sent, acked, unacked int
	written := map[string]bool{}
	for _, p := range r.posts {
		if p.cycle != c {
			continue
		}
		sent++
		written[p.tenant] = true
		if p.acked() {
			acked++
		} else if have[p.tenant][p.name] {
			unacked++
		}
	}
	k := r.kills[c]
	window := time.Duration(0)
	if len(missing) > 0 {
		window = k.at.Sub(missing[0].at)
	}
	r.t.Logf("cycle %d: killed after %v (%s); %d POSTs to %d tenants (Litestream streamed %d at the kill), %d acknowledged, %d acknowledged missing from the replica (window %v), %d unacknowledged in it",
		c, k.delay.Round(time.Millisecond), k.order, sent, len(written), k.streamed, acked, len(missing), window.Round(time.Millisecond), unacked)
}

// anotherNode restarts Litestream and opens a proxy on an empty data
// directory, which restores every tenant on first access; it checks
// integrity and migrations, and returns the event names of every tenant.
func (r *crashRun) anotherNode() map[string]map[string]bool {
	t := r.t
	t.Helper()
	r.g.ls.Restart()
	start := time.Now()
	b := sqliteproxytest.New(t, sqliteproxy.Config{
		Dir: t.TempDir(), MaxConnections: 20, Migrations: eventsMigrations,
		ReplicaURL: r.g.replica, LitestreamSocket: r.g.ls.SocketPath, LitestreamPath: r.g.ls.Bin(),
	})
	out := make(map[string]map[string]bool, len(r.tenants))
	ctx := context.Background()
	for _, id := range r.tenants {
		out[id] = set(names(t, b, id))
		if err := b.CheckTenant(ctx, id); err != nil {
			t.Errorf("%s on another node: %v", id, err)
		}
		st, err := b.MigrationStatus(ctx, id)
		if err != nil || st.Drift != nil || len(st.Applied) != len(eventsMigrations) || len(st.Pending) != 0 {
			t.Errorf("%s on another node: migration status %+v, %v", id, st, err)
		}
	}
	t.Logf("another node restored %d tenants in %v", len(r.tenants), time.Since(start).Round(time.Millisecond))
	for _, id := range r.tenants {
		if !maps.Equal(out[id], r.last[id]) && len(out[id])+len(r.last[id]) > 0 {
			t.Errorf("%s on another node: %d events; the replica held %d after the last kill", id, len(out[id]), len(r.last[id]))
		}
	}
	if err := b.Close(); err != nil {
		t.Error(err)
	}
	return out
}
