//go:build linux

package replication_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sqliteproxy/sqliteproxy/cluster"
	"github.com/sqliteproxy/sqliteproxy/cluster/etcdtest"
	"github.com/sqliteproxy/sqliteproxy/replication/harness"
)

// A cluster rig: one real etcd (in this process), one real S3 server
// (versitygw), and N node processes, each the examples/events binary with
// a data directory and a Litestream process of its own, all streaming to
// one shared S3 replica. Nodes are started, killed (SIGKILL, with their
// Litestream: the machine is gone), stopped (SIGTERM), paused (SIGSTOP) and
// resumed (SIGCONT) by the tests; every wait polls visible state under a
// deadline.

// clusterTTL is the nodes' lease TTL (-ttl): a dead node's tenants move
// after this long.
const clusterTTL = 2 * time.Second

var (
	eventsBinOnce sync.Once
	eventsBinPath string
	eventsBinErr  error
	eventsBinDir  string // removed by TestMain
)

// eventsBinary builds examples/events once per test binary run (the
// examples module, beside this one) and returns its path.
func eventsBinary(tb testing.TB) string {
	tb.Helper()
	eventsBinOnce.Do(func() {
		root, err := harness.ModuleRoot()
		if err != nil {
			eventsBinErr = err
			return
		}
		dir := filepath.Join(root, "..", "examples")
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err != nil || !strings.HasPrefix(string(b), "module github.com/sqliteproxy/sqliteproxy/examples\n") {
			eventsBinErr = fmt.Errorf("%s is not the examples module: %v", dir, err)
			return
		}
		if eventsBinDir, err = os.MkdirTemp("", "events-bin"); err != nil {
			eventsBinErr = err
			return
		}
		out := filepath.Join(eventsBinDir, "events")
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "go", "build", "-tags", "sqlite_omit_load_extension", "-o", out, "./events")
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
		start := time.Now()
		if b, err := cmd.CombinedOutput(); err != nil {
			eventsBinErr = fmt.Errorf("go build ./events in %s: %v\n%s", dir, err, b)
			return
		}
		tb.Logf("built examples/events in %v", time.Since(start).Round(time.Millisecond))
		eventsBinPath = out
	})
	if eventsBinErr != nil {
		tb.Fatal(eventsBinErr)
	}
	return eventsBinPath
}

func TestMain(m *testing.M) {
	code := m.Run()
	if eventsBinDir != "" {
		os.RemoveAll(eventsBinDir)
	}
	os.Exit(code)
}

// crig is a cluster rig.
type crig struct {
	tb       testing.TB
	etcd     *etcdtest.Server
	s3       *harness.S3
	env      []string // S3 credentials, without AWS_CA_BUNDLE
	replica  string   // shared by every node
	bin      string
	maxConns int // -max-connections (0: the service's default)
	nodes    []*cnode
	admin    *cluster.Admin
	hc       *http.Client
}

// cnode is one node: an events process and its Litestream.
type cnode struct {
	r       *crig
	id      string // n0, n1, ...
	addr    string // 127.0.0.1:PORT, kept across restarts
	base    string // http://addr
	dir     string // data directory, kept across restarts
	logPath string
	ls      *harness.Litestream

	mu     sync.Mutex
	proc   *child // nil before the first start
	paused bool
}

// newCluster starts etcd, S3 and n nodes, and waits until every node is
// healthy and registered in etcd.
func newCluster(tb testing.TB, n, maxConns int) *crig {
	tb.Helper()
	r := &crig{tb: tb, bin: eventsBinary(tb), maxConns: maxConns}
	r.etcd = etcdtest.Start(tb)
	r.s3 = harness.StartS3(tb)
	r.env = append(r.s3.Env(), "AWS_CA_BUNDLE=", "AWS_EC2_METADATA_DISABLED=true")
	r.replica = r.s3.ReplicaURL("tenants")
	tr := &http.Transport{MaxIdleConnsPerHost: 16, DisableCompression: true}
	// Short enough that clients stuck on a paused or cut-off node move on
	// within a few TTLs; a durable write takes well under a second.
	r.hc = &http.Client{Transport: tr, Timeout: 5 * time.Second}
	tb.Cleanup(tr.CloseIdleConnections)
	admin, err := cluster.NewAdmin(r.etcd.Endpoints())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { admin.Close() })
	r.admin = admin
	for i := range n {
		nd := &cnode{r: r, id: fmt.Sprintf("n%d", i), dir: tb.TempDir(), logPath: filepath.Join(tb.TempDir(), "events.log")}
		nd.ls = harness.StartLitestream(tb, r.env...)
		port, err := harness.FreePort()
		if err != nil {
			tb.Fatal(err)
		}
		nd.addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		nd.base = "http://" + nd.addr
		r.nodes = append(r.nodes, nd)
		tb.Cleanup(func() {
			nd.kill()
			if tb.Failed() {
				tb.Logf("node %s log: errors by kind:\n%s\ntail:\n%s", nd.id, errorKinds(nd.logPath), tail(nd.logPath, 3000))
			}
		})
	}
	for _, nd := range r.nodes {
		nd.start(false)
	}
	r.waitNodes(r.ids(r.nodes...), 30*time.Second)
	return r
}

func (r *crig) ids(nodes ...*cnode) []string {
	var ids []string
	for _, n := range nodes {
		ids = append(ids, n.id)
	}
	slices.Sort(ids)
	return ids
}

func (r *crig) node(id string) *cnode {
	for _, n := range r.nodes {
		if n.id == id {
			return n
		}
	}
	r.tb.Fatalf("no node %q", id)
	return nil
}

// start starts the node's events process (restarting its Litestream first
// when restartLS: after a kill) and returns once /healthz answers.
func (nd *cnode) start(restartLS bool) {
	tb := nd.r.tb
	tb.Helper()
	if restartLS {
		nd.ls.Restart()
	}
	for attempt := 0; ; attempt++ {
		logf, err := os.OpenFile(nd.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			tb.Fatal(err)
		}
		args := []string{"-addr", nd.addr, "-dir", nd.dir, "-replica", nd.r.replica,
			"-litestream-socket", nd.ls.SocketPath, "-litestream", nd.ls.Bin(),
			"-etcd", strings.Join(nd.r.etcd.Endpoints(), ","), "-node", nd.id, "-advertise", nd.base,
			"-ttl", clusterTTL.String()}
		if nd.r.maxConns > 0 {
			args = append(args, "-max-connections", strconv.Itoa(nd.r.maxConns))
		}
		fmt.Fprintf(logf, "==== %s events %s\n", time.Now().Format(time.RFC3339Nano), strings.Join(args, " "))
		cmd := exec.Command(nd.r.bin, args...)
		cmd.Env = append(slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "AWS_CA_BUNDLE=") }), nd.r.env...)
		cmd.Stdout, cmd.Stderr = logf, logf
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // dies with the test binary
		err = cmd.Start()
		logf.Close() // the child has its own copy
		if err != nil {
			tb.Fatal(err)
		}
		c := &child{cmd: cmd, base: nd.base, done: make(chan struct{})}
		go func() {
			c.err = cmd.Wait()
			close(c.done)
		}()
		nd.mu.Lock()
		nd.proc, nd.paused = c, false
		nd.mu.Unlock()
		err = waitHealthy(c, 60*time.Second)
		if err == nil {
			return
		}
		c.kill()
		if attempt < 2 && strings.Contains(tail(nd.logPath, 2048), "address already in use") {
			// The port was taken meanwhile: another one (the node
			// advertises its new URL).
			port, perr := harness.FreePort()
			if perr != nil {
				tb.Fatal(perr)
			}
			nd.addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
			nd.base = "http://" + nd.addr
			continue
		}
		tb.Fatalf("node %s: %v\n%s", nd.id, err, tail(nd.logPath, 4096))
	}
}

func (nd *cnode) current() *child {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	return nd.proc
}

// alive: started, not exited, not paused.
func (nd *cnode) alive() bool {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	return nd.proc != nil && !nd.proc.exited() && !nd.paused
}

// kill SIGKILLs the events process and its Litestream (the machine is
// gone), returning once both have exited.
func (nd *cnode) kill() {
	if c := nd.current(); c != nil {
		c.kill()
	}
	nd.ls.Kill()
}

// restart starts a killed or stopped node again on its data directory.
func (nd *cnode) restart() { nd.start(true) }

// stop sends SIGTERM (the node releases its tenants with their final
// positions and leaves the cluster) and waits for it to exit, SIGKILLing
// after a bound.
func (nd *cnode) stop() {
	c := nd.current()
	if c == nil || c.exited() {
		return
	}
	_ = c.cmd.Process.Signal(syscall.SIGCONT) // a paused node cannot handle SIGTERM
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(20 * time.Second):
		nd.r.tb.Errorf("node %s did not exit within 20s of SIGTERM; killed", nd.id)
		c.kill()
	}
}

// pause SIGSTOPs the events process (a partition: it neither renews its
// lease nor answers), leaving its Litestream running.
func (nd *cnode) pause() {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	if err := nd.proc.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		nd.r.tb.Fatal(err)
	}
	nd.paused = true
}

// resume SIGCONTs a paused node.
func (nd *cnode) resume() {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	if err := nd.proc.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		nd.r.tb.Fatal(err)
	}
	nd.paused = false
}

// ack is one answered POST /events.
type ack struct {
	tenant, name string
	status       int
	id           int64
	node         string // X-Sqliteproxy-Node
	gen          int64  // X-Sqliteproxy-Generation
	via          string // the node the request was sent to
	durable      bool
	sent, at     time.Time // request sent, answer received
	body         string    // of an answer other than 201
	err          error     // no answer
}

func (a *ack) ok() bool { return a.status == http.StatusCreated }

// post sends POST /events for tenant to node via and returns the answer.
func (r *crig) post(via *cnode, tenant, name string, durable bool) *ack {
	return r.postWith(r.hc, via, tenant, name, durable)
}

func (r *crig) postWith(hc *http.Client, via *cnode, tenant, name string, durable bool) *ack {
	a := &ack{tenant: tenant, name: name, via: via.id, durable: durable, sent: time.Now()}
	u := via.base + "/events"
	if durable {
		u += "?durable=1"
	}
	body, _ := json.Marshal(map[string]string{"Name": name})
	req, err := http.NewRequest(http.MethodPost, u, strings.NewReader(string(body)))
	if err != nil {
		a.err = err
		return a
	}
	req.Header.Set("X-Tenant-ID", tenant)
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		a.err, a.at = err, time.Now()
		return a
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	a.at = time.Now()
	if err != nil {
		a.err = err // cut off: not an acknowledgement
		return a
	}
	a.status = resp.StatusCode
	if !a.ok() {
		a.body = strings.TrimSpace(string(b))
		return a
	}
	var e struct {
		ID   int64  `json:"id"`
		Name string `json:"name"`
	}
	if err := json.Unmarshal(b, &e); err != nil || e.Name != name || e.ID == 0 {
		a.status, a.body = -1, fmt.Sprintf("201 with %q (%v)", b, err)
		return a
	}
	a.id = e.ID
	a.node = resp.Header.Get("X-Sqliteproxy-Node")
	a.gen, _ = strconv.ParseInt(resp.Header.Get("X-Sqliteproxy-Generation"), 10, 64)
	return a
}

// event is one row of GET /events.
type event struct {
	ID   int64  `json:"id"`
	Name string `json:"name"`
}

// get sends GET /events for tenant to node via: the status and, on 200,
// the events.
func (r *crig) get(via *cnode, tenant string) (int, []event, error) {
	req, err := http.NewRequest(http.MethodGet, via.base+"/events", nil)
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("X-Tenant-ID", tenant)
	resp, err := r.hc.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return resp.StatusCode, nil, fmt.Errorf("GET /events: %s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	var evs []event
	if err := json.Unmarshal(b, &evs); err != nil {
		return resp.StatusCode, nil, err
	}
	return resp.StatusCode, evs, nil
}

// errorKinds counts the ERROR lines of every node's log by kind.
func (r *crig) errorKinds() string {
	var out []string
	for _, n := range r.nodes {
		out = append(out, n.id+":\n"+errorKinds(n.logPath))
	}
	return strings.Join(out, "\n")
}

// alive returns the nodes that are running and not paused.
func (r *crig) alive() []*cnode {
	var out []*cnode
	for _, n := range r.nodes {
		if n.alive() {
			out = append(out, n)
		}
	}
	return out
}

// waitNodes waits until the live nodes in etcd are exactly ids.
func (r *crig) waitNodes(ids []string, timeout time.Duration) {
	r.tb.Helper()
	var got []string
	err := poll(timeout, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		nodes, err := r.admin.Nodes(ctx)
		if err != nil {
			return err
		}
		got = got[:0]
		for _, n := range nodes {
			got = append(got, n.ID)
		}
		if !slices.Equal(got, ids) {
			return fmt.Errorf("live nodes %v, want %v", got, ids)
		}
		return nil
	})
	if err != nil {
		r.tb.Fatal(err)
	}
}

// owners returns tenant → owner node from etcd.
func (r *crig) owners() (map[string]cluster.Owner, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	list, err := r.admin.Owners(ctx)
	if err != nil {
		return nil, err
	}
	m := make(map[string]cluster.Owner, len(list))
	for _, o := range list {
		m[o.Tenant] = o
	}
	return m, nil
}

// serveAll GETs every tenant through random live nodes until each has
// answered 200 once, within timeout, with parallel workers; it returns the
// events of each tenant from its first 200, and the time it took.
func (r *crig) serveAll(tenants []string, timeout time.Duration, workers int) (map[string][]event, time.Duration, error) {
	start := time.Now()
	deadline := start.Add(timeout)
	var (
		mu      sync.Mutex
		got     = make(map[string][]event, len(tenants))
		lastErr = map[string]string{}
		wg      sync.WaitGroup
		next    = make(chan string, len(tenants))
	)
	for _, id := range tenants {
		next <- id
	}
	close(next)
	for w := range workers {
		rng := rand.New(rand.NewPCG(uint64(start.UnixNano()), uint64(w)))
		wg.Go(func() {
			for id := range next {
				delay := 10 * time.Millisecond
				for {
					nodes := r.alive()
					var err error
					if len(nodes) == 0 {
						err = fmt.Errorf("no live node")
					} else {
						var evs []event
						_, evs, err = r.get(nodes[rng.IntN(len(nodes))], id)
						if err == nil {
							mu.Lock()
							got[id] = evs
							mu.Unlock()
							break
						}
					}
					if time.Now().After(deadline) {
						mu.Lock()
						lastErr[id] = err.Error()
						mu.Unlock()
						break
					}
					time.Sleep(delay) // poll interval, not ordering
					delay = min(2*delay, 200*time.Millisecond)
				}
			}
		})
	}
	wg.Wait()
	took := time.Since(start)
	if len(lastErr) > 0 {
		var ex []string
		for id, e := range lastErr {
			ex = append(ex, id+": "+e)
			if len(ex) == 3 {
				break
			}
		}
		return got, took, fmt.Errorf("%d of %d tenants not served within %v, e.g. %s", len(lastErr), len(tenants), timeout, strings.Join(ex, "; "))
	}
	return got, took, nil
}

// poll calls f until it returns nil or timeout passes (then its last
// error).
func poll(timeout time.Duration, f func() error) error {
	deadline := time.Now().Add(timeout)
	delay := 5 * time.Millisecond
	for {
		err := f()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("after %v: %w", timeout, err)
		}
		time.Sleep(delay) // poll interval, not ordering
		delay = min(2*delay, 100*time.Millisecond)
	}
}

// checkPresent reports every acknowledged durable write missing from
// have (tenant → events), or present with another id or in another tenant.
func checkPresent(tb testing.TB, acks []*ack, have map[string][]event) (checked int) {
	tb.Helper()
	for _, a := range acks {
		if !a.ok() || !a.durable {
			continue
		}
		checked++
		found := false
		for _, e := range have[a.tenant] {
			if e.Name == a.name {
				found = true
				if e.ID != a.id {
					tb.Errorf("%s's event %q: acknowledged with id %d (node %s, generation %d), now id %d", a.tenant, a.name, a.id, a.node, a.gen, e.ID)
				}
			}
		}
		if !found {
			tb.Errorf("LOST: %s's event %q (id %d, acknowledged durable by node %s in generation %d at %s via %s) is missing",
				a.tenant, a.name, a.id, a.node, a.gen, a.at.Format("15:04:05.000"), a.via)
		}
	}
	return checked
}

// checkSingleWriter orders each tenant's acknowledged writes by event id:
// generations never go down, one node per generation, no id twice.
func checkSingleWriter(tb testing.TB, acks []*ack) (tenants int) {
	tb.Helper()
	by := map[string][]*ack{}
	for _, a := range acks {
		if a.ok() {
			by[a.tenant] = append(by[a.tenant], a)
		}
	}
	for id, as := range by {
		slices.SortFunc(as, func(a, b *ack) int { return int(a.id - b.id) })
		genNode := map[int64]string{}
		for i, a := range as {
			if a.gen == 0 || a.node == "" {
				tb.Errorf("%s's event %q (id %d): acknowledged without node/generation headers (node %q, gen %d)", id, a.name, a.id, a.node, a.gen)
			}
			if n, ok := genNode[a.gen]; ok && n != a.node {
				tb.Errorf("TWO WRITERS: %s generation %d written by %s and %s (event %q, id %d)", id, a.gen, n, a.node, a.name, a.id)
			}
			genNode[a.gen] = a.node
			if i == 0 {
				continue
			}
			p := as[i-1]
			if a.id == p.id {
				tb.Errorf("TWO WRITERS: %s id %d acknowledged twice: %q by %s gen %d (at %s), %q by %s gen %d (at %s)",
					id, a.id, p.name, p.node, p.gen, p.at.Format("15:04:05.000"), a.name, a.node, a.gen, a.at.Format("15:04:05.000"))
			}
			if a.gen < p.gen {
				tb.Errorf("GENERATION WENT DOWN: %s id %d (%q) by %s in generation %d at %s after id %d (%q) by %s in generation %d at %s",
					id, a.id, a.name, a.node, a.gen, a.at.Format("15:04:05.000"), p.id, p.name, p.node, p.gen, p.at.Format("15:04:05.000"))
			}
		}
	}
	return len(by)
}
