//go:build linux

package main

import (
	"bytes"
	"debug/elf"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// staticBuildArgs are the flags of `make static` (see the Makefile): CGo
// with glibc linked statically. osusergo and netgo replace os/user and the
// resolver's use of getpwnam/getaddrinfo, which glibc cannot provide to a
// static binary (the linker warns about them), and sqlite_omit_load_extension
// removes SQLite's dlopen.
var staticBuildArgs = []string{
	"-tags", "sqlite_omit_load_extension osusergo netgo",
	"-ldflags", `-s -w -extldflags "-static"`,
	"-trimpath",
}

// cannotLinkStatic matches a build that failed because static linking is
// not available (no libc.a: glibc's static libraries are not installed),
// as opposed to a broken build.
var cannotLinkStatic = regexp.MustCompile(`cannot find -l\w+|C compiler "[^"]*" not found`)

// TestStaticBinaryInEmptyRoot builds the service as `make static` does and
// runs it in an empty root directory that holds only the binary and an
// empty /data: no libc, no /etc, no /tmp, no /proc, an empty environment.
// That is what the FROM scratch image (Dockerfile) gives it. The build is
// checked for linker warnings and for being static on any machine; the
// chroot needs root and is skipped otherwise.
func TestStaticBinaryInEmptyRoot(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a static binary; skipped in -short mode")
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("go tool not found: %v", err)
	}
	pkgDir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	bin := filepath.Join(root, "events")
	build := exec.CommandContext(t.Context(), goTool, slices.Concat([]string{"build"}, staticBuildArgs, []string{"-o", bin, "."})...)
	build.Dir = pkgDir
	build.Env = append(os.Environ(), "CGO_ENABLED=1")
	out, err := build.CombinedOutput()
	if err != nil {
		var why []string
		for line := range strings.Lines(string(out)) {
			if cannotLinkStatic.MatchString(line) {
				why = append(why, strings.TrimSpace(line))
			}
		}
		if len(why) > 0 {
			t.Skipf("static linking is not possible on this machine (it needs glibc's static libraries: Debian's libc6-dev): %s", strings.Join(why, "; "))
		}
		t.Fatalf("static build: %v\n%s", err, out)
	}
	if len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("the static build printed warnings (make static must build cleanly):\n%s", out)
	}
	checkStatic(t, bin)

	if os.Geteuid() != 0 {
		t.Skip("running the binary in an empty root directory needs chroot, which needs root")
	}
	if err := os.Mkdir(filepath.Join(root, "data"), 0o755); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()

	cmd := exec.Command("/events", "-addr", addr, "-dir", "/data")
	cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: root}
	cmd.Dir = "/"        // inside the new root
	cmd.Env = []string{} // nothing from the host: no TMPDIR, HOME, TZ
	var logs bytes.Buffer
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
		t.Fatalf("POST /events: status %d, body %s\n%s", code, body, logs.String())
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
	if t.Failed() {
		t.Logf("server output:\n%s", logs.String())
	}

	// The tenant's file is in /data, closed cleanly (no -wal or -shm left),
	// and nothing else was written anywhere in the root: no temporary files
	// (SQLite would fall back to the working directory without /tmp).
	if got, want := tree(t, root), []string{"data/", "data/acme.db", "events"}; !slices.Equal(got, want) {
		t.Errorf("files in the root after the run: %v, want %v", got, want)
	}
}

// checkStatic fails unless bin is an ELF executable without an interpreter
// (the dynamic loader) and without shared libraries.
func checkStatic(t *testing.T, bin string) {
	t.Helper()
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("%s has an ELF interpreter: it is dynamically linked", bin)
		}
	}
	if libs, err := f.ImportedLibraries(); err != nil || len(libs) > 0 {
		t.Errorf("%s needs shared libraries %v (%v)", bin, libs, err)
	}
}

// tree lists the files and directories under root, relative, sorted;
// directories end in a slash.
func tree(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil || path == root {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		if d.IsDir() {
			rel += "/"
		}
		out = append(out, rel)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(out)
	return out
}
