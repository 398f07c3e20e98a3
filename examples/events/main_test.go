package main

import (
	"bytes"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
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

func postEvent(t *testing.T, h http.Handler, tenant, typ, payload string) event {
	t.Helper()
	body, err := json.Marshal(newEvent{Type: typ, Payload: payload})
	if err != nil {
		t.Fatal(err)
	}
	rec := do(t, h, http.MethodPost, "/events", tenant, string(body))
	if rec.Code != http.StatusCreated {
		t.Fatalf("POST /events as %q: status %d, body %s", tenant, rec.Code, rec.Body)
	}
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("POST /events: Content-Type %q, want application/json", ct)
	}
	var e event
	if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil {
		t.Fatalf("POST /events: decoding %s: %v", rec.Body, err)
	}
	if e.ID <= 0 || e.Type != typ || e.Payload != payload {
		t.Errorf("POST /events as %q: got %+v, want a positive id, type %q, payload %q", tenant, e, typ, payload)
	}
	if d := time.Since(e.CreatedAt); e.CreatedAt.IsZero() || d < -time.Minute || d > time.Minute {
		t.Errorf("POST /events as %q: created_at %v is not about now", tenant, e.CreatedAt)
	}
	return e
}

func listEvents(t *testing.T, h http.Handler, tenant, target string) []event {
	t.Helper()
	rec := do(t, h, http.MethodGet, target, tenant, "")
	if rec.Code != http.StatusOK {
		t.Fatalf("GET %s as %q: status %d, body %s", target, tenant, rec.Code, rec.Body)
	}
	var es []event
	if err := json.Unmarshal(rec.Body.Bytes(), &es); err != nil {
		t.Fatalf("GET %s: decoding %s: %v", target, rec.Body, err)
	}
	if es == nil {
		t.Errorf("GET %s as %q: body %s, want a JSON array", target, tenant, rec.Body)
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

func TestTenantsSeeOnlyTheirOwnEvents(t *testing.T) {
	p := sqliteproxytest.New(t, sqliteproxy.Config{Migrations: migrations})
	h := newServer(p)

	acme := []event{
		postEvent(t, h, "acme", "signup", "alice"),
		postEvent(t, h, "acme", "login", "alice"),
	}
	globex := []event{postEvent(t, h, "globex", "signup", "bob")}
	acme = append(acme, postEvent(t, h, "acme", "signup", "carol"))

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

	if diff := cmp.Diff(acme, listEvents(t, h, "acme", "/events")); diff != "" {
		t.Errorf("GET /events as acme (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(globex, listEvents(t, h, "globex", "/events")); diff != "" {
		t.Errorf("GET /events as globex (-want +got):\n%s", diff)
	}
	wantSignups := []event{acme[0], acme[2]}
	if diff := cmp.Diff(wantSignups, listEvents(t, h, "acme", "/events?type=signup")); diff != "" {
		t.Errorf("GET /events?type=signup as acme (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]event{}, listEvents(t, h, "globex", "/events?type=login")); diff != "" {
		t.Errorf("GET /events?type=login as globex (-want +got):\n%s", diff)
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

func TestEachTenantIsItsOwnFile(t *testing.T) {
	dir := t.TempDir()
	p := sqliteproxytest.New(t, sqliteproxy.Config{Dir: dir, Migrations: migrations})
	h := newServer(p)

	type row struct{ Type, Payload string }
	want := map[string][]row{
		"acme":   {{"signup", "alice"}, {"login", "alice"}, {"logout", "alice"}},
		"globex": {{"signup", "bob"}},
	}
	for _, tenant := range []string{"acme", "globex"} {
		for _, r := range want[tenant] {
			postEvent(t, h, tenant, r.Type, r.Payload)
		}
	}

	sqlite3CLI, cliErr := exec.LookPath("sqlite3")
	for tenant, rows := range want {
		path := filepath.Join(dir, tenant+".db")
		if _, err := os.Stat(path); err != nil {
			t.Fatalf("tenant %s: %v", tenant, err)
		}

		// Read the file directly, bypassing the proxy (which still has it open).
		db, err := sql.Open("sqlite3", path)
		if err != nil {
			t.Fatal(err)
		}
		rs, err := db.QueryContext(t.Context(), `SELECT type, payload FROM events ORDER BY id`)
		if err != nil {
			db.Close()
			t.Fatalf("tenant %s: reading %s directly: %v", tenant, path, err)
		}
		var got []row
		for rs.Next() {
			var r row
			if err := rs.Scan(&r.Type, &r.Payload); err != nil {
				t.Fatal(err)
			}
			got = append(got, r)
		}
		if err := rs.Err(); err != nil {
			t.Fatal(err)
		}
		rs.Close()
		db.Close()
		if diff := cmp.Diff(rows, got); diff != "" {
			t.Errorf("rows in %s (-want +got):\n%s", path, diff)
		}

		if cliErr != nil {
			continue
		}
		out, err := exec.CommandContext(t.Context(), sqlite3CLI, path, "select count(*) from events").CombinedOutput()
		if err != nil {
			t.Fatalf("sqlite3 %s: %v\n%s", path, err, out)
		}
		if got, want := strings.TrimSpace(string(out)), strconv.Itoa(len(rows)); got != want {
			t.Errorf("sqlite3 %s 'select count(*) from events' = %q, want %q", path, got, want)
		}
	}
	if cliErr != nil {
		t.Logf("sqlite3 shell not on PATH; skipped the command-line check: %v", cliErr)
	}
}

func TestBadRequests(t *testing.T) {
	dir := t.TempDir()
	p := sqliteproxytest.New(t, sqliteproxy.Config{Dir: dir, Migrations: migrations})
	h := newServer(p)
	valid := postEvent(t, h, "acme", "signup", "alice")

	for _, method := range []string{http.MethodGet, http.MethodPost} {
		body := ""
		if method == http.MethodPost {
			body = `{"type":"signup","payload":"mallory"}`
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

	for _, body := range []string{`{"payload":"x"}`, `{"type":""}`, `{}`} {
		checkError(t, do(t, h, http.MethodPost, "/events", "acme", body), http.StatusBadRequest, "POST "+body)
	}
	for _, body := range []string{``, `{"type":`, `not json`, `{"type":5}`, `["signup"]`, `{"type":"a"} {"type":"b"}`} {
		checkError(t, do(t, h, http.MethodPost, "/events", "acme", body), http.StatusBadRequest, fmt.Sprintf("POST %q", body))
	}
	big := `{"type":"big","payload":"` + strings.Repeat("x", maxBodyBytes) + `"}`
	checkError(t, do(t, h, http.MethodPost, "/events", "acme", big), http.StatusRequestEntityTooLarge, "POST of more than 1 MiB")

	if rec := do(t, h, http.MethodDelete, "/events", "acme", ""); rec.Code != http.StatusMethodNotAllowed {
		t.Errorf("DELETE /events: status %d, want 405", rec.Code)
	}

	// None of the rejected requests wrote anything or created a file.
	if diff := cmp.Diff([]event{valid}, listEvents(t, h, "acme", "/events")); diff != "" {
		t.Errorf("acme's events after bad requests (-want +got):\n%s", diff)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		switch e.Name() {
		case "acme.db", "acme.db-wal", "acme.db-shm", "acme.db-journal":
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
	h := newServer(p)
	rec := do(t, h, http.MethodGet, "/healthz", "", "")
	if rec.Code != http.StatusOK || rec.Body.String() != "ok" {
		t.Errorf("GET /healthz: status %d, body %q; want 200 ok", rec.Code, rec.Body)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
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
	h := newServer(p)
	tenants := []string{"t1", "t2", "t3", "t4"}
	const perTenant = 10

	var wg sync.WaitGroup
	for _, tenant := range tenants {
		for i := range perTenant {
			wg.Go(func() {
				body := fmt.Sprintf(`{"type":"tick","payload":"%s-%d"}`, tenant, i)
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
		es := listEvents(t, h, tenant, "/events")
		var payloads, want []string
		for i, e := range es {
			if e.ID != int64(i+1) {
				t.Errorf("%s: event %d has id %d, want %d", tenant, i, e.ID, i+1)
			}
			payloads = append(payloads, e.Payload)
		}
		for i := range perTenant {
			want = append(want, fmt.Sprintf("%s-%d", tenant, i))
		}
		slices.Sort(payloads)
		slices.Sort(want)
		if diff := cmp.Diff(want, payloads); diff != "" {
			t.Errorf("%s's payloads (-want +got):\n%s", tenant, diff)
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

	cmd := exec.Command(bin, "-addr", addr, "-dir", dataDir)
	logs := exerciseBinary(t, cmd, addr)
	if _, err := os.Stat(filepath.Join(dataDir, "acme.db")); err != nil {
		t.Errorf("tenant file: %v", err)
	}
	out := logs
	for _, want := range []string{"addr=" + addr, "dir=" + dataDir} {
		if !strings.Contains(out, want) {
			t.Errorf("server log lacks %q:\n%s", want, out)
		}
	}
}

// exerciseBinary starts cmd (an events server listening on addr), waits for
// /healthz, POSTs an event for tenant acme and reads it back, then stops
// the server with SIGTERM and checks it exits 0. It returns the server's output.
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
	code, body := send(http.MethodPost, "/events", `{"type":"signup","payload":"alice"}`)
	if code != http.StatusCreated {
		t.Fatalf("POST /events: status %d, body %s", code, body)
	}
	var created event
	if err := json.Unmarshal(body, &created); err != nil {
		t.Fatalf("POST /events: decoding %s: %v", body, err)
	}
	if created.ID != 1 || created.Type != "signup" || created.Payload != "alice" || created.CreatedAt.IsZero() {
		t.Errorf("POST /events: got %+v", created)
	}
	code, body = send(http.MethodGet, "/events", "")
	if code != http.StatusOK {
		t.Fatalf("GET /events: status %d, body %s", code, body)
	}
	var list []event
	if err := json.Unmarshal(body, &list); err != nil {
		t.Fatalf("GET /events: decoding %s: %v", body, err)
	}
	if diff := cmp.Diff([]event{created}, list); diff != "" {
		t.Errorf("GET /events (-want +got):\n%s", diff)
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
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
