package main

import (
	"bytes"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	_ "github.com/mattn/go-sqlite3"
	"github.com/sqliteproxy/sqliteproxy"
	"github.com/sqliteproxy/sqliteproxy/sqliteproxytest"
)

// do sends one request to h. An empty tenant sends no X-Tenant-ID header.
func do(t *testing.T, h http.Handler, method, target, tenant, body string) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest(method, target, strings.NewReader(body))
	if tenant != "" {
		req.Header.Set(tenantHeader, tenant)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

// postEvent creates the event name for tenant, sending {field: name}
// (field is "Name" or "name": encoding/json accepts either), and checks the
// 201 answer.
func postEvent(t *testing.T, h http.Handler, tenant, field, name string) event {
	t.Helper()
	body, err := json.Marshal(map[string]string{field: name})
	if err != nil {
		t.Fatal(err)
	}
	rec := do(t, h, http.MethodPost, "/events", tenant, string(body))
	if rec.Code != http.StatusCreated {
		t.Fatalf("POST /events %s as %q: status %d, body %s", body, tenant, rec.Code, rec.Body)
	}
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("POST /events: Content-Type %q, want application/json", ct)
	}
	var e event
	if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil {
		t.Fatalf("POST /events: decoding %s: %v", rec.Body, err)
	}
	if e.ID <= 0 || e.Name != name {
		t.Errorf("POST /events %s as %q: got %+v, want a positive id and name %q", body, tenant, e, name)
	}
	if d := time.Since(e.CreatedAt); e.CreatedAt.IsZero() || d < -time.Minute || d > time.Minute {
		t.Errorf("POST /events as %q: created_at %v is not about now", tenant, e.CreatedAt)
	}
	return e
}

// newestFirst returns es in reverse order: the order of GET /events for
// events created in the order of es.
func newestFirst(es []event) []event {
	out := slices.Clone(es)
	slices.Reverse(out)
	return out
}

func listEvents(t *testing.T, h http.Handler, tenant string) []event {
	t.Helper()
	rec := do(t, h, http.MethodGet, "/events", tenant, "")
	if rec.Code != http.StatusOK {
		t.Fatalf("GET /events as %q: status %d, body %s", tenant, rec.Code, rec.Body)
	}
	var es []event
	if err := json.Unmarshal(rec.Body.Bytes(), &es); err != nil {
		t.Fatalf("GET /events: decoding %s: %v", rec.Body, err)
	}
	if es == nil {
		t.Errorf("GET /events as %q: body %s, want a JSON array", tenant, rec.Body)
	}
	return es
}

// checkError checks that rec is a JSON error response with status want.
func checkError(t *testing.T, rec *httptest.ResponseRecorder, want int, what string) {
	t.Helper()
	if rec.Code != want {
		t.Errorf("%s: status %d, want %d (body %s)", what, rec.Code, want, rec.Body)
		return
	}
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("%s: Content-Type %q, want application/json", what, ct)
	}
	var body map[string]string
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil || body["error"] == "" {
		t.Errorf(`%s: body %s is not {"error": "..."} (%v)`, what, rec.Body, err)
	}
}

// TestArticleRequests sends the requests of the article the example
// follows, byte for byte: {"Name":"x"} and {"name":"y"} are both created,
// and GET /events answers [{"id","name","created_at"}], newest first.
func TestArticleRequests(t *testing.T) {
	p := sqliteproxytest.New(t, sqliteproxy.Config{Migrations: migrations})
	h := newServer(p, nil)

	for _, body := range []string{`{"Name":"x"}`, `{"name":"y"}`} {
		rec := do(t, h, http.MethodPost, "/events", "acme", body)
		if rec.Code != http.StatusCreated {
			t.Fatalf("POST /events %s: status %d, body %s; want 201", body, rec.Code, rec.Body)
		}
	}

	rec := do(t, h, http.MethodGet, "/events", "acme", "")
	if rec.Code != http.StatusOK {
		t.Fatalf("GET /events: status %d, body %s", rec.Code, rec.Body)
	}
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("GET /events: Content-Type %q, want application/json", ct)
	}
	// Decode loosely, to see the field names as they are on the wire.
	var got []map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
		t.Fatalf("GET /events: decoding %s: %v", rec.Body, err)
	}
	if len(got) != 2 {
		t.Fatalf("GET /events: %s, want 2 events", rec.Body)
	}
	for i, want := range []struct {
		id   float64
		name string
	}{{2, "y"}, {1, "x"}} {
		e := got[i]
		if diff := cmp.Diff([]string{"created_at", "id", "name"}, slices.Sorted(maps.Keys(e))); diff != "" {
			t.Errorf("GET /events: fields of event %d (-want +got):\n%s", i, diff)
		}
		if e["id"] != want.id || e["name"] != want.name {
			t.Errorf("GET /events: event %d is %v, want id %v and name %q (newest first)", i, e, want.id, want.name)
		}
		if s, ok := e["created_at"].(string); !ok {
			t.Errorf("GET /events: event %d created_at %v is not a string", i, e["created_at"])
		} else if _, err := time.Parse(time.RFC3339, s); err != nil {
			t.Errorf("GET /events: event %d created_at: %v", i, err)
		}
	}
}

func TestTenantsSeeOnlyTheirOwnEvents(t *testing.T) {
	p := sqliteproxytest.New(t, sqliteproxy.Config{Migrations: migrations})
	h := newServer(p, nil)

	acme := []event{
		postEvent(t, h, "acme", "Name", "signup"),
		postEvent(t, h, "acme", "name", "login"),
	}
	globex := []event{postEvent(t, h, "globex", "Name", "signup")}
	acme = append(acme, postEvent(t, h, "acme", "name", "logout"))

	// Each tenant has its own file, so its own id sequence.
	for _, tc := range []struct {
		tenant string
		events []event
	}{{"acme", acme}, {"globex", globex}} {
		for i, e := range tc.events {
			if e.ID != int64(i+1) {
				t.Errorf("%s event %d has id %d, want %d", tc.tenant, i, e.ID, i+1)
			}
		}
	}

	if diff := cmp.Diff(newestFirst(acme), listEvents(t, h, "acme")); diff != "" {
		t.Errorf("GET /events as acme (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(newestFirst(globex), listEvents(t, h, "globex")); diff != "" {
		t.Errorf("GET /events as globex (-want +got):\n%s", diff)
	}

	// A tenant without events gets [], not null.
	rec := do(t, h, http.MethodGet, "/events", "initech", "")
	if rec.Code != http.StatusOK || strings.TrimSpace(rec.Body.String()) != "[]" {
		t.Errorf("GET /events as a new tenant: status %d, body %q; want 200 and []", rec.Code, rec.Body)
	}

	tenants, err := p.Tenants(t.Context())
	if err != nil {
		t.Fatalf("Tenants: %v", err)
	}
	if diff := cmp.Diff([]string{"acme", "globex", "initech"}, tenants); diff != "" {
		t.Errorf("Tenants (-want +got):\n%s", diff)
	}
}

// TestEachTenantIsItsOwnFile reads the tenants' files directly, bypassing
// the proxy: each holds its own tenant's rows, in the table of the article.
func TestEachTenantIsItsOwnFile(t *testing.T) {
	dir := t.TempDir()
	p := sqliteproxytest.New(t, sqliteproxy.Config{Dir: dir, Migrations: migrations})
	h := newServer(p, nil)

	want := map[string][]string{
		"acme":   {"signup", "login", "logout"},
		"globex": {"signup"},
	}
	for _, tenant := range []string{"acme", "globex"} {
		for _, name := range want[tenant] {
			postEvent(t, h, tenant, "Name", name)
		}
	}

	// PRAGMA table_info: cid, name, type, notnull, dflt_value, pk.
	type column struct {
		Name, Type string
		NotNull    bool
		Default    sql.NullString
		PK         int
	}
	wantColumns := []column{
		{Name: "id", Type: "INTEGER", PK: 1},
		{Name: "name", Type: "TEXT", NotNull: true},
		{Name: "created_at", Type: "DATETIME", Default: sql.NullString{String: "CURRENT_TIMESTAMP", Valid: true}},
	}

	sqlite3CLI, cliErr := exec.LookPath("sqlite3")
	for tenant, names := range want {
		path := filepath.Join(dir, tenant+".db")
		if _, err := os.Stat(path); err != nil {
			t.Fatalf("tenant %s: %v", tenant, err)
		}

		// Read the file directly, bypassing the proxy (which still has it open).
		db, err := sql.Open("sqlite3", path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		got := queryAll(t, db, `SELECT name FROM events ORDER BY id`, func(rs *sql.Rows) (string, error) {
			var name string
			return name, rs.Scan(&name)
		})
		if diff := cmp.Diff(names, got); diff != "" {
			t.Errorf("rows in %s (-want +got):\n%s", path, diff)
		}
		columns := queryAll(t, db, `PRAGMA table_info(events)`, func(rs *sql.Rows) (column, error) {
			var c column
			var cid int
			return c, rs.Scan(&cid, &c.Name, &c.Type, &c.NotNull, &c.Default, &c.PK)
		})
		if diff := cmp.Diff(wantColumns, columns); diff != "" {
			t.Errorf("columns of events in %s (-want +got):\n%s", path, diff)
		}

		if cliErr != nil {
			continue
		}
		out, err := exec.CommandContext(t.Context(), sqlite3CLI, path, "select count(*) from events").CombinedOutput()
		if err != nil {
			t.Fatalf("sqlite3 %s: %v\n%s", path, err, out)
		}
		if got, want := strings.TrimSpace(string(out)), strconv.Itoa(len(names)); got != want {
			t.Errorf("sqlite3 %s 'select count(*) from events' = %q, want %q", path, got, want)
		}
	}
	if cliErr != nil {
		t.Logf("sqlite3 shell not on PATH; skipped the command-line check: %v", cliErr)
	}
}

// queryAll runs query on db and scans every row with scan.
func queryAll[T any](t *testing.T, db *sql.DB, query string, scan func(*sql.Rows) (T, error)) []T {
	t.Helper()
	rs, err := db.QueryContext(t.Context(), query)
	if err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	defer rs.Close()
	var out []T
	for rs.Next() {
		v, err := scan(rs)
		if err != nil {
			t.Fatalf("%s: %v", query, err)
		}
		out = append(out, v)
	}
	if err := rs.Err(); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return out
}

func TestBadRequests(t *testing.T) {
	dir := t.TempDir()
	p := sqliteproxytest.New(t, sqliteproxy.Config{Dir: dir, Migrations: migrations})
	h := newServer(p, nil)
	valid := postEvent(t, h, "acme", "Name", "signup")

	for _, method := range []string{http.MethodGet, http.MethodPost} {
		body := ""
		if method == http.MethodPost {
			body = `{"Name":"mallory"}`
		}
		checkError(t, do(t, h, method, "/events", "", body), http.StatusBadRequest, method+" without "+tenantHeader)
		for _, id := range []string{"../x", "a/b", "ACME", " ", "../acme", "acme.db", "-acme", "con", "acme\x00", strings.Repeat("a", 65)} {
			checkError(t, do(t, h, method, "/events", id, body), http.StatusBadRequest, fmt.Sprintf("%s with tenant %q", method, id))
		}

		req := httptest.NewRequest(method, "/events", strings.NewReader(body))
		req.Header.Add(tenantHeader, "acme")
		req.Header.Add(tenantHeader, "globex")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		checkError(t, rec, http.StatusBadRequest, method+" with two "+tenantHeader+" headers")
	}

	// A missing or empty name, including the body of the earlier version of
	// this example, is a 400 that says what is missing.
	for _, body := range []string{`{}`, `{"Name":""}`, `{"name":""}`, `{"Name":null}`, `{"type":"signup","payload":"alice"}`} {
		rec := do(t, h, http.MethodPost, "/events", "acme", body)
		checkError(t, rec, http.StatusBadRequest, "POST "+body)
		if !strings.Contains(rec.Body.String(), `\"Name\" is required`) {
			t.Errorf("POST %s: error %s does not say that Name is required", body, rec.Body)
		}
	}
	for _, body := range []string{``, `{"Name":`, `not json`, `{"Name":5}`, `["x"]`, `"x"`, `{"Name":"a"} {"Name":"b"}`} {
		checkError(t, do(t, h, http.MethodPost, "/events", "acme", body), http.StatusBadRequest, fmt.Sprintf("POST %q", body))
	}
	big := `{"Name":"` + strings.Repeat("x", maxBodyBytes) + `"}`
	checkError(t, do(t, h, http.MethodPost, "/events", "acme", big), http.StatusRequestEntityTooLarge, "POST of more than 1 MiB")

	if rec := do(t, h, http.MethodDelete, "/events", "acme", ""); rec.Code != http.StatusMethodNotAllowed {
		t.Errorf("DELETE /events: status %d, want 405", rec.Code)
	}

	// None of the rejected requests wrote anything or created a file.
	if diff := cmp.Diff([]event{valid}, listEvents(t, h, "acme")); diff != "" {
		t.Errorf("acme's events after bad requests (-want +got):\n%s", diff)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		switch e.Name() {
		case "acme.db", "acme.db-wal", "acme.db-shm", "acme.db-journal":
		case ".sqliteproxy-processes": // every proxy process keeps it locked while it has the directory open
		default:
			t.Errorf("unexpected %s in the data directory", e.Name())
		}
	}
	tenants, err := p.Tenants(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"acme"}, tenants); diff != "" {
		t.Errorf("Tenants (-want +got):\n%s", diff)
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(dir), "x.db")); err == nil {
		t.Errorf("a file was created outside the data directory")
	}
}

func TestHealthz(t *testing.T) {
	dir := t.TempDir()
	p := sqliteproxytest.New(t, sqliteproxy.Config{Dir: dir, Migrations: migrations})
	h := newServer(p, nil)
	rec := do(t, h, http.MethodGet, "/healthz", "", "")
	if rec.Code != http.StatusOK || rec.Body.String() != "ok" {
		t.Errorf("GET /healthz: status %d, body %q; want 200 ok", rec.Code, rec.Body)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 || entries[0].Name() != ".sqliteproxy-processes" {
		t.Errorf("GET /healthz created files: %v", entries)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if rec := do(t, h, http.MethodGet, "/healthz", "", ""); rec.Code != http.StatusServiceUnavailable {
		t.Errorf("GET /healthz after Close: status %d, want 503", rec.Code)
	}
}

// TestConcurrentTenants has a few tenants write and read at once (run it
// with -race).
func TestConcurrentTenants(t *testing.T) {
	p := sqliteproxytest.New(t, sqliteproxy.Config{Migrations: migrations})
	h := newServer(p, nil)
	tenants := []string{"t1", "t2", "t3", "t4"}
	const perTenant = 10

	var wg sync.WaitGroup
	for _, tenant := range tenants {
		for i := range perTenant {
			wg.Go(func() {
				body := fmt.Sprintf(`{"Name":"%s-%d"}`, tenant, i)
				if rec := do(t, h, http.MethodPost, "/events", tenant, body); rec.Code != http.StatusCreated {
					t.Errorf("POST as %s: status %d, body %s", tenant, rec.Code, rec.Body)
				}
				if rec := do(t, h, http.MethodGet, "/events", tenant, ""); rec.Code != http.StatusOK {
					t.Errorf("GET as %s: status %d, body %s", tenant, rec.Code, rec.Body)
				}
			})
		}
	}
	wg.Wait()

	for _, tenant := range tenants {
		es := listEvents(t, h, tenant)
		var names, want []string
		for i, e := range es {
			if e.ID != int64(len(es)-i) { // newest first
				t.Errorf("%s: event %d has id %d, want %d", tenant, i, e.ID, len(es)-i)
			}
			names = append(names, e.Name)
		}
		for i := range perTenant {
			want = append(want, fmt.Sprintf("%s-%d", tenant, i))
		}
		slices.Sort(names)
		slices.Sort(want)
		if diff := cmp.Diff(want, names); diff != "" {
			t.Errorf("%s's names (-want +got):\n%s", tenant, diff)
		}
	}
}

// TestBinary builds the real command, runs it on a free port, talks to it
// over HTTP and stops it with SIGTERM.
func TestBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary; skipped in -short mode")
	}
	if runtime.GOOS == "windows" {
		t.Skip("needs SIGTERM")
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("go tool not found: %v", err)
	}
	pkgDir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	bin := filepath.Join(tmp, "events")
	build := exec.CommandContext(t.Context(), goTool, "build", "-tags", "sqlite_omit_load_extension", "-o", bin, "./")
	build.Dir = pkgDir
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	dataDir := filepath.Join(tmp, "data")

	// As the image runs it without REPLICA_URL (Dockerfile): the socket and
	// the litestream binary are passed, the replica is empty.
	cmd := exec.Command(bin, "-addr", addr, "-dir", dataDir, "-replica", "",
		"-litestream-socket", filepath.Join(tmp, "litestream.sock"), "-litestream", "/litestream")
	logs := exerciseBinary(t, cmd, addr)
	if _, err := os.Stat(filepath.Join(dataDir, "acme.db")); err != nil {
		t.Errorf("tenant file: %v", err)
	}
	out := logs
	for _, want := range []string{"addr=" + addr, "dir=" + dataDir, "replication off"} {
		if !strings.Contains(out, want) {
			t.Errorf("server log lacks %q:\n%s", want, out)
		}
	}
}

// exerciseBinary starts cmd (an events server listening on addr), waits for
// /healthz, POSTs two events for tenant acme ({"Name":"x"}, {"name":"y"}),
// reads them back newest first, then stops the server with SIGTERM and
// SIGINT at once and checks it exits 0. It returns the server's output.
func exerciseBinary(t *testing.T, cmd *exec.Cmd, addr string) string {
	t.Helper()
	var logs bytes.Buffer // read only once the process has been waited for
	cmd.Stdout = &logs
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	done := false
	t.Cleanup(func() {
		if !done {
			cmd.Process.Kill()
			<-exited
			t.Logf("server output:\n%s", logs.String())
		}
	})

	base := "http://" + addr
	client := &http.Client{Timeout: 5 * time.Second}
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case err := <-exited:
			done = true
			t.Fatalf("server exited before it was up: %v\n%s", err, logs.String())
		default:
		}
		resp, err := client.Get(base + "/healthz")
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && string(body) == "ok" {
				break
			}
			err = fmt.Errorf("status %d, body %q", resp.StatusCode, body)
		}
		if time.Now().After(deadline) {
			t.Fatalf("server not up after 30s: last /healthz: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}

	send := func(method, path, body string) (int, []byte) {
		t.Helper()
		req, err := http.NewRequestWithContext(t.Context(), method, base+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set(tenantHeader, "acme")
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, b
	}
	// The article's requests: the field name in either case.
	var created []event
	for i, tc := range []struct{ body, name string }{{`{"Name":"x"}`, "x"}, {`{"name":"y"}`, "y"}} {
		code, body := send(http.MethodPost, "/events", tc.body)
		if code != http.StatusCreated {
			t.Fatalf("POST /events %s: status %d, body %s", tc.body, code, body)
		}
		var e event
		if err := json.Unmarshal(body, &e); err != nil {
			t.Fatalf("POST /events: decoding %s: %v", body, err)
		}
		if e.ID != int64(i+1) || e.Name != tc.name || e.CreatedAt.IsZero() {
			t.Errorf("POST /events %s: got %+v", tc.body, e)
		}
		created = append(created, e)
	}
	code, body := send(http.MethodGet, "/events", "")
	if code != http.StatusOK {
		t.Fatalf("GET /events: status %d, body %s", code, body)
	}
	var list []event
	if err := json.Unmarshal(body, &list); err != nil {
		t.Fatalf("GET /events: decoding %s: %v", body, err)
	}
	if diff := cmp.Diff(newestFirst(created), list); diff != "" {
		t.Errorf("GET /events (-want +got):\n%s", diff)
	}

	// A Ctrl-C under litestream replicate -exec reaches the service twice
	// (the process group's, and Litestream's relay): one stop, not a kill.
	// The second comes once the server has stopped listening (the first
	// is being handled).
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	quick := &http.Client{Timeout: 100 * time.Millisecond}
	for start := time.Now(); time.Since(start) < 10*time.Second; {
		resp, err := quick.Get(base + "/healthz")
		if err != nil {
			break
		}
		resp.Body.Close()
	}
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil && !errors.Is(err, os.ErrProcessDone) {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		done = true
		if err != nil {
			t.Errorf("after SIGTERM the server exited with %v, want status 0\n%s", err, logs.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("server still running 10s after SIGTERM")
	}
	return logs.String()
}

// A tenant refused for a replica conflict answers 503 saying an operator
// must choose, not 500 "internal error" (nor a Retry-After: retrying does
// not help).
func TestServerError_ReplicaConflict(t *testing.T) {
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodGet, "/events", nil)
	err := fmt.Errorf("open tenant: %w: never streamed", sqliteproxy.ErrReplicaConflict)
	serverError(rec, req, "list events", err)
	if rec.Code != http.StatusServiceUnavailable || rec.Header().Get("Retry-After") != "" || !strings.Contains(rec.Body.String(), "an operator must choose") {
		t.Errorf("got %d %q (Retry-After %q)", rec.Code, rec.Body.String(), rec.Header().Get("Retry-After"))
	}
	rec = httptest.NewRecorder()
	serverError(rec, req, "list events", errors.New("disk I/O error"))
	if rec.Code != http.StatusInternalServerError || strings.Contains(rec.Body.String(), "disk") {
		t.Errorf("another error: %d %q", rec.Code, rec.Body.String())
	}
}
