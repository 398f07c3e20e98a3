//go:build linux

// Package harness starts the real parts that replication tests need: an
// S3-compatible object store (versitygw with its POSIX backend over a
// temporary directory) and a Litestream process driven over its control
// socket. Both binaries are the versions pinned by `tool` lines in this
// module's go.mod.
//
// Binaries are found, in order: $HARNESS_BIN_DIR/<name>; <module root>/bin/<name>
// when its embedded build info matches the version in go.mod (build it with
// `go build -o bin/ github.com/benbjohnson/litestream/cmd/litestream
// github.com/versity/versitygw/cmd/versitygw`); otherwise `go tool -n <name>`,
// which builds the pinned version into the Go build cache on first use.
//
// Every process is started with Pdeathsig, listens on 127.0.0.1 or a unix
// socket only, and is stopped at tb.Cleanup (SIGTERM, then SIGKILL after a
// grace period).
package harness

import (
	"bufio"
	"bytes"
	"context"
	"debug/buildinfo"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sqliteproxy/sqliteproxy/internal/s3lite"
)

// Module paths of the pinned tools, as required in go.mod.
const (
	LitestreamModule = "github.com/benbjohnson/litestream"
	VersitygwModule  = "github.com/versity/versitygw"
)

const (
	startTimeout = 60 * time.Second // a process must answer within this
	stopGrace    = 10 * time.Second // SIGTERM → SIGKILL
)

var toolModules = map[string]string{
	"litestream": LitestreamModule,
	"versitygw":  VersitygwModule,
}

var (
	binMu    sync.Mutex
	binCache = map[string]string{}
)

// Binary returns the path of the pinned tool binary name ("litestream" or
// "versitygw"), resolving it once per process.
func Binary(tb testing.TB, name string) string {
	tb.Helper()
	binMu.Lock()
	defer binMu.Unlock()
	if p, ok := binCache[name]; ok {
		return p
	}
	p, how, err := resolveBinary(name)
	if err != nil {
		tb.Fatalf("harness: find %s binary: %v", name, err)
	}
	tb.Logf("harness: %s binary %s (%s)", name, p, how)
	binCache[name] = p
	return p
}

func resolveBinary(name string) (binPath, how string, err error) {
	if dir := os.Getenv("HARNESS_BIN_DIR"); dir != "" {
		p := filepath.Join(dir, name)
		if _, err := os.Stat(p); err != nil {
			return "", "", fmt.Errorf("HARNESS_BIN_DIR: %w", err)
		}
		return p, "HARNESS_BIN_DIR", nil
	}
	root, err := ModuleRoot()
	if err != nil {
		return "", "", err
	}
	mod, ok := toolModules[name]
	if !ok {
		return "", "", fmt.Errorf("unknown tool %q", name)
	}
	want, err := requiredVersion(filepath.Join(root, "go.mod"), mod)
	if err != nil {
		return "", "", err
	}
	p := filepath.Join(root, "bin", name)
	if _, err := os.Stat(p); err == nil {
		got, err := builtVersion(p, mod)
		if err == nil && got == want {
			return p, "bin/, " + mod + " " + got, nil
		}
		// Stale or unreadable: fall through to the build cache.
	}
	cmd := exec.Command("go", "tool", "-n", name)
	cmd.Dir = root
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", "", fmt.Errorf("go tool -n %s: %v: %s", name, err, stderr.String())
	}
	return strings.TrimSpace(string(out)), "go tool -n, " + mod + " " + want, nil
}

// ModuleRoot returns the directory of the nearest go.mod at or above the
// working directory (a test's working directory is its package directory).
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = parent
	}
}

// requiredVersion reads the version of mod required by the go.mod file.
func requiredVersion(gomod, mod string) (string, error) {
	b, err := os.ReadFile(gomod)
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[0] == "require" {
			f = f[1:]
		}
		if len(f) >= 2 && f[0] == mod {
			return f[1], nil
		}
	}
	return "", fmt.Errorf("%s does not require %s", gomod, mod)
}

// builtVersion reads the version of mod linked into the binary at p.
func builtVersion(p, mod string) (string, error) {
	bi, err := buildinfo.ReadFile(p)
	if err != nil {
		return "", err
	}
	if bi.Main.Path == mod {
		return bi.Main.Version, nil
	}
	for _, d := range bi.Deps {
		if d.Path == mod {
			if d.Replace != nil {
				return "", fmt.Errorf("%s is replaced", mod)
			}
			return d.Version, nil
		}
	}
	return "", fmt.Errorf("%s not in build info of %s", mod, p)
}

// process is one child process whose output goes to a log file.
type process struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{} // closed when the process has exited
	err     error         // Wait's result, valid after done
}

func startProcess(name, bin string, args, env []string, dir, logPath string) (*process, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logf.Close() // the child keeps its own copy
	fmt.Fprintf(logf, "==== %s %s %s\n", time.Now().Format(time.RFC3339Nano), bin, strings.Join(args, " "))
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Env = env
	cmd.Stdout = logf
	cmd.Stderr = logf
	// Die with the test binary even when it cannot run its cleanups
	// (panic, -timeout).
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &process{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM, waits up to grace, then SIGKILLs; it returns after the
// process has exited.
func (p *process) stop(grace time.Duration) {
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.done:
	case <-t.C:
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// kill sends SIGKILL and returns after the process has exited.
func (p *process) kill() {
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Kill()
	<-p.done
}

// logTail returns the last n bytes of the log file.
func logTail(logPath string, n int64) string {
	f, err := os.Open(logPath)
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

// waitFor polls ready until it returns nil, the process exits, or the
// deadline passes.
func waitFor(p *process, timeout time.Duration, ready func() error) error {
	deadline := time.Now().Add(timeout)
	delay := 5 * time.Millisecond
	for {
		err := ready()
		if err == nil {
			return nil
		}
		if p.exited() {
			return fmt.Errorf("%s exited (%v) before it was ready: %w", p.name, p.err, err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %v: %w", p.name, timeout, err)
		}
		time.Sleep(delay) // poll interval, not ordering
		delay = min(2*delay, 100*time.Millisecond)
	}
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// ---------------------------------------------------------------------------
// S3-compatible server (versitygw)

// S3 is a running versitygw gateway over a temporary directory.
type S3 struct {
	Endpoint  string // http://127.0.0.1:PORT
	Bucket    string // created at start
	AccessKey string
	SecretKey string
	Region    string
	Root      string // the POSIX backend's directory: <Root>/<bucket>/<key>

	tb      testing.TB
	bin     string
	dir     string
	logPath string
	hc      *http.Client
	mu      sync.Mutex
	proc    *process
}

// StartS3 starts versitygw's POSIX backend over a tb.TempDir() on
// 127.0.0.1:<free port>, creates the bucket "replicas", and stops the
// gateway at tb.Cleanup.
func StartS3(tb testing.TB) *S3 {
	tb.Helper()
	dir := tb.TempDir()
	s := &S3{
		Bucket:    "replicas",
		AccessKey: "harnessaccesskey",
		SecretKey: "harnesssecretkey0123456789",
		Region:    "us-east-1",
		Root:      filepath.Join(dir, "root"),
		tb:        tb,
		bin:       Binary(tb, "versitygw"),
		dir:       dir,
		logPath:   filepath.Join(dir, "versitygw.log"),
		hc:        &http.Client{Timeout: 30 * time.Second},
	}
	if err := os.Mkdir(s.Root, 0o700); err != nil {
		tb.Fatal(err)
	}
	var err error
	for attempt := 0; attempt < 3; attempt++ { // a new port if one was taken meanwhile
		var port int
		if port, err = FreePort(); err != nil {
			tb.Fatal(err)
		}
		s.Endpoint = "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		if err = s.start(); err == nil {
			break
		}
	}
	if err != nil {
		tb.Fatalf("harness: versitygw: %v\n%s", err, logTail(s.logPath, 4096))
	}
	tb.Cleanup(func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.proc.stop(stopGrace)
		if tb.Failed() {
			tb.Logf("versitygw log tail:\n%s", logTail(s.logPath, 4096))
		}
	})
	if err := s.CreateBucket(); err != nil {
		tb.Fatalf("harness: create bucket: %v", err)
	}
	return s
}

func (s *S3) start() error {
	args := []string{
		"--access", s.AccessKey, "--secret", s.SecretKey, "--region", s.Region,
		"--port", strings.TrimPrefix(s.Endpoint, "http://"), "--health", "/health", "--quiet", "--keep-alive",
		"posix", s.Root,
	}
	p, err := startProcess("versitygw", s.bin, args, os.Environ(), s.dir, s.logPath)
	if err != nil {
		return err
	}
	if err := waitFor(p, startTimeout, func() error {
		resp, err := s.hc.Get(s.Endpoint + "/health")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("health: %s", resp.Status)
		}
		return nil
	}); err != nil {
		p.stop(stopGrace)
		return err
	}
	s.proc = p
	return nil
}

// Stop stops the gateway (SIGTERM, then SIGKILL): the object store is down
// until Restart.
func (s *S3) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.proc.stop(stopGrace)
}

// Restart starts the gateway again on the same address and directory, so the
// bucket and its objects are back.
func (s *S3) Restart() {
	s.tb.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.proc.stop(stopGrace)
	if err := s.start(); err != nil {
		s.tb.Fatalf("harness: restart versitygw: %v\n%s", err, logTail(s.logPath, 4096))
	}
}

// Env returns the environment variables that give Litestream (replicate and
// restore) this server's credentials. Litestream v0.5.18 reads S3 credentials
// only from the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, else
// LITESTREAM_ACCESS_KEY_ID / LITESTREAM_SECRET_ACCESS_KEY, else the AWS default
// chain); the user:password part of a replica URL is ignored.
func (s *S3) Env() []string {
	return []string{
		"AWS_ACCESS_KEY_ID=" + s.AccessKey,
		"AWS_SECRET_ACCESS_KEY=" + s.SecretKey,
	}
}

// ReplicaURL returns the Litestream v0.5 replica URL for prefix in the bucket:
// s3://BUCKET/PREFIX?endpoint=http://127.0.0.1:PORT&forcePathStyle=true&region=us-east-1
// (forcePathStyle is already the default when endpoint is given).
func (s *S3) ReplicaURL(prefix string) string {
	q := url.Values{
		"endpoint":       {s.Endpoint},
		"region":         {s.Region},
		"forcePathStyle": {"true"},
	}
	return (&url.URL{
		Scheme:   "s3",
		Host:     s.Bucket,
		Path:     "/" + strings.Trim(prefix, "/"),
		RawQuery: q.Encode(),
	}).String()
}

// JoinReplicaURL appends name to the path of a replica URL, keeping its query
// (a plain string append would land in the query of an s3:// URL).
func JoinReplicaURL(base, name string) (string, error) {
	u, err := url.Parse(base)
	if err != nil {
		return "", err
	}
	u.Path = path.Join("/", u.Path, name)
	u.RawPath = ""
	return u.String(), nil
}

// Client returns an S3 client of the bucket (SigV4, path-style: the
// driver's own, internal/s3lite).
func (s *S3) Client() *s3lite.Client {
	return &s3lite.Client{Endpoint: s.Endpoint, Region: s.Region, Bucket: s.Bucket,
		AccessKey: s.AccessKey, SecretKey: s.SecretKey, HTTP: s.hc}
}

// CreateBucket creates the bucket.
func (s *S3) CreateBucket() error { return s.Client().CreateBucket(context.Background()) }

// List lists the bucket under prefix with ListObjectsV2. With a delimiter it
// also returns the common prefixes (e.g. one per tenant for "tenants/" and "/").
func (s *S3) List(prefix, delimiter string) ([]s3lite.Object, []string, error) {
	return s.Client().List(context.Background(), prefix, delimiter)
}

// ---------------------------------------------------------------------------
// Litestream

// Litestream is a running `litestream replicate` with the control socket on
// and no databases in its config.
type Litestream struct {
	SocketPath string
	ConfigPath string
	LogPath    string
	Client     *Client

	tb   testing.TB
	bin  string
	env  []string
	dir  string
	mu   sync.Mutex
	proc *process
}

// StartLitestream starts `litestream replicate -config <file>` with the
// control socket enabled, waits until GET /info answers, and stops it at
// tb.Cleanup. env (KEY=VALUE) is added to the process environment, e.g.
// S3.Env().
func StartLitestream(tb testing.TB, env ...string) *Litestream {
	tb.Helper()
	return StartLitestreamLevels(tb, nil, env...)
}

// StartLitestreamLevels is StartLitestream with Litestream's compaction
// levels set: levels[i] is how often level i+1 is compacted (Litestream's
// defaults are 30s, 5m and 1h), so that a test sees compactions in seconds.
func StartLitestreamLevels(tb testing.TB, levels []time.Duration, env ...string) *Litestream {
	tb.Helper()
	dir := tb.TempDir()
	sockDir := dir
	if len(filepath.Join(dir, "litestream.sock")) > 100 { // sun_path is 108 bytes
		d, err := os.MkdirTemp("", "ls")
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { os.RemoveAll(d) })
		sockDir = d
	}
	l := &Litestream{
		SocketPath: filepath.Join(sockDir, "litestream.sock"),
		ConfigPath: filepath.Join(dir, "litestream.yml"),
		LogPath:    filepath.Join(dir, "litestream.log"),
		tb:         tb,
		bin:        Binary(tb, "litestream"),
		env:        append(baseEnv(), env...),
		dir:        dir,
	}
	l.Client = NewClient(l.SocketPath)
	cfg := "# written by harness.StartLitestream\n" +
		"socket:\n" +
		"  enabled: true\n" +
		"  path: " + strconv.Quote(l.SocketPath) + "\n" +
		"  permissions: 0600\n" +
		"logging:\n" +
		"  level: info\n"
	if len(levels) > 0 {
		cfg += "levels:\n"
		for _, d := range levels {
			cfg += "  - interval: " + d.String() + "\n"
		}
	}
	if err := os.WriteFile(l.ConfigPath, []byte(cfg), 0o600); err != nil {
		tb.Fatal(err)
	}
	if err := l.start(); err != nil {
		tb.Fatalf("harness: %v\n%s", err, logTail(l.LogPath, 4096))
	}
	tb.Cleanup(func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		l.proc.stop(stopGrace)
		if tb.Failed() {
			tb.Logf("litestream log tail:\n%s", logTail(l.LogPath, 8192))
		}
	})
	return l
}

// baseEnv is the test's environment for Litestream without AWS_CA_BUNDLE:
// with it set, Litestream v0.5.18's S3 client fails every request with "cannot
// load aws config: unable to add custom RootCAs HTTPClient, has no
// WithTransportOptions, *http.Client" (s3/replica_client.go passes a plain
// *http.Client to config.LoadDefaultConfig). The EC2 metadata lookup of the
// AWS default credential chain is switched off so that missing credentials
// fail locally instead of reaching for 169.254.169.254.
func baseEnv() []string {
	env := slices.DeleteFunc(os.Environ(), func(kv string) bool {
		return strings.HasPrefix(kv, "AWS_CA_BUNDLE=")
	})
	return append(env, "AWS_EC2_METADATA_DISABLED=true")
}

func (l *Litestream) start() error {
	p, err := startProcess("litestream", l.bin,
		[]string{"replicate", "-config", l.ConfigPath, "-no-expand-env"}, l.env, l.dir, l.LogPath)
	if err != nil {
		return fmt.Errorf("start litestream: %w", err)
	}
	// A socket that fails to listen is only a warning in v0.5.18 (the process
	// keeps running), so readiness is "GET /info answers", not "started".
	if err := waitFor(p, startTimeout, func() error {
		_, err := l.Client.Info()
		return err
	}); err != nil {
		p.stop(stopGrace)
		return err
	}
	l.proc = p
	return nil
}

// PID returns the process id of the running litestream.
func (l *Litestream) PID() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.proc.cmd.Process.Pid
}

// Kill sends SIGKILL and waits for the process to exit.
func (l *Litestream) Kill() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.proc.kill()
}

// Stop sends SIGTERM (Litestream then syncs and closes every database) and
// waits, SIGKILLing after a grace period.
func (l *Litestream) Stop() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.proc.stop(stopGrace)
}

// Restart stops the process if it still runs (SIGTERM) and starts it again
// with the same config and environment. Registrations do not survive: the
// control socket's databases live only in memory.
func (l *Litestream) Restart() {
	l.tb.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.proc.stop(stopGrace)
	if err := l.start(); err != nil {
		l.tb.Fatalf("harness: restart: %v\n%s", err, logTail(l.LogPath, 4096))
	}
}

// Restore runs `litestream restore -o out [args...] replicaURL` with the
// Litestream environment, e.g. args "-timestamp", t.Format(time.RFC3339Nano).
func (l *Litestream) Restore(ctx context.Context, replicaURL, out string, args ...string) error {
	a := append([]string{"restore", "-o", out}, args...)
	a = append(a, replicaURL)
	cmd := exec.CommandContext(ctx, l.bin, a...)
	cmd.Env = l.env
	b, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("litestream %s: %v\n%s", strings.Join(a, " "), err, b)
	}
	return nil
}

// Log returns the litestream log so far.
func (l *Litestream) Log() string { return logTail(l.LogPath, 1<<20) }

// ---------------------------------------------------------------------------
// Control-socket client (litestream v0.5.18 server.go)

// Client speaks the control API over the unix socket with net/http.
type Client struct {
	SocketPath string
	hc         *http.Client
}

// NewClient returns a client for the control socket at socketPath.
func NewClient(socketPath string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socketPath)
		},
		MaxIdleConnsPerHost: 4,
	}
	return &Client{SocketPath: socketPath, hc: &http.Client{Transport: tr}}
}

// APIError is a non-2xx answer of the control API.
type APIError struct {
	StatusCode int
	Message    string `json:"error"`
	Details    any    `json:"details,omitempty"`
}

func (e *APIError) Error() string {
	if e.Details != nil {
		return fmt.Sprintf("litestream: %d: %s (%v)", e.StatusCode, e.Message, e.Details)
	}
	return fmt.Sprintf("litestream: %d: %s", e.StatusCode, e.Message)
}

// SyncResult is the answer of POST /sync.
type SyncResult struct {
	Status         string `json:"status"` // "synced", "synced_local" (wait=false) or "no_change"
	Path           string `json:"path"`
	TXID           uint64 `json:"txid"`            // highest local LTX TXID after the sync
	ReplicatedTXID uint64 `json:"replicated_txid"` // highest L0 TXID uploaded to the replica
}

// UnregisterResult is the answer of POST /unregister.
type UnregisterResult struct {
	Status string `json:"status"` // "unregistered" or "already_unregistered"
	Path   string `json:"path"`
	TXID   uint64 `json:"txid"`
}

// Database is one entry of GET /list.
type Database struct {
	Path       string     `json:"path"`
	Status     string     `json:"status"` // "replicating", "open", "stopped"
	LastSyncAt *time.Time `json:"last_sync_at,omitempty"`
}

// Info is the answer of GET /info.
type Info struct {
	Version       string    `json:"version"`
	PID           int       `json:"pid"`
	UptimeSeconds int64     `json:"uptime_seconds"`
	StartedAt     time.Time `json:"started_at"`
	DatabaseCount int       `json:"database_count"`
}

func (c *Client) call(method, p string, timeout time.Duration, in, out any) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://litestream"+p, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		e := &APIError{StatusCode: resp.StatusCode}
		if json.Unmarshal(b, e) != nil || e.Message == "" {
			e.Message = strings.TrimSpace(string(b))
		}
		return e
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(b, out)
}

// requestTimeout bounds an HTTP call whose server-side timeout is sec seconds.
func requestTimeout(sec int) time.Duration {
	if sec <= 0 {
		sec = 30 // the server's default
	}
	return time.Duration(sec)*time.Second + 15*time.Second
}

// Register calls POST /register. It returns "registered" or
// "already_registered". Registration only opens the database lazily: the
// first sync (monitor tick, 1 s, or Sync) initialises it.
func (c *Client) Register(dbPath, replicaURL string) (string, error) {
	var r struct {
		Status string `json:"status"`
	}
	err := c.call(http.MethodPost, "/register", 60*time.Second,
		map[string]string{"path": dbPath, "replica_url": replicaURL}, &r)
	return r.Status, err
}

// Unregister calls POST /unregister; the server syncs the database to its
// replica before it closes it, within timeoutSec (<= 0: 30 s).
func (c *Client) Unregister(dbPath string, timeoutSec int) (UnregisterResult, error) {
	var r UnregisterResult
	err := c.call(http.MethodPost, "/unregister", requestTimeout(timeoutSec),
		map[string]any{"path": dbPath, "timeout": timeoutSec}, &r)
	return r, err
}

// Sync calls POST /sync. With wait it returns after the WAL has been turned
// into LTX files and those have been uploaded (timeoutSec <= 0: 30 s): a nil
// error means everything committed before the call is in the replica. Judge
// by ReplicatedTXID, not by Status: "no_change" only says no new LTX file was
// made by this call (an earlier failed call may have made it, and this one
// uploaded it). TXID is read after the upload, so with other writers it may
// already count commits made during the call: compare ReplicatedTXID with
// the TXID of a first call, as the driver does (replicator.sync).
func (c *Client) Sync(dbPath string, wait bool, timeoutSec int) (SyncResult, error) {
	var r SyncResult
	err := c.call(http.MethodPost, "/sync", requestTimeout(timeoutSec),
		map[string]any{"path": dbPath, "wait": wait, "timeout": timeoutSec}, &r)
	return r, err
}

// TXID calls GET /txid: the local position (highest LTX TXID) of dbPath.
func (c *Client) TXID(dbPath string) (uint64, error) {
	var r struct {
		TXID uint64 `json:"txid"`
	}
	err := c.call(http.MethodGet, "/txid?path="+url.QueryEscape(dbPath), 30*time.Second, nil, &r)
	return r.TXID, err
}

// List calls GET /list.
func (c *Client) List() ([]Database, error) {
	var r struct {
		Databases []Database `json:"databases"`
	}
	err := c.call(http.MethodGet, "/list", 30*time.Second, nil, &r)
	return r.Databases, err
}

// Info calls GET /info.
func (c *Client) Info() (Info, error) {
	var r Info
	err := c.call(http.MethodGet, "/info", 5*time.Second, nil, &r)
	return r, err
}

// Goroutines returns the goroutine count of the litestream process from its
// pprof endpoint on the control socket.
func (c *Client) Goroutines() (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://litestream/debug/pprof/goroutine?debug=1", nil)
	if err != nil {
		return 0, err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil {
		return 0, err
	}
	// "goroutine profile: total 12"
	f := strings.Fields(line)
	if len(f) == 0 {
		return 0, fmt.Errorf("unexpected pprof answer %q", line)
	}
	return strconv.Atoi(f[len(f)-1])
}

// ProcStats reads the open descriptors, OS threads and resident memory of a
// process from /proc.
func ProcStats(pid int) (fds, threads int, rssKB int64, err error) {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return 0, 0, 0, err
	}
	fds = len(ents)
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "Threads:":
			threads, _ = strconv.Atoi(f[1])
		case "VmRSS:":
			rssKB, _ = strconv.ParseInt(f[1], 10, 64)
		}
	}
	return fds, threads, rssKB, nil
}

// FDTargets lists what the open descriptors of pid point to, sorted.
func FDTargets(pid int) []string {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, _ := os.ReadDir(dir)
	var out []string
	for _, e := range ents {
		if t, err := os.Readlink(filepath.Join(dir, e.Name())); err == nil {
			out = append(out, t)
		}
	}
	sort.Strings(out)
	return out
}

// Bin returns the path of the litestream binary, for Config.LitestreamPath.
func (l *Litestream) Bin() string { return l.bin }
