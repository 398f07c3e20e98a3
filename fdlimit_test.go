//go:build linux

package sqliteproxy

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
)

const fdLimitEnv = "SQLITEPROXY_TEST_FD_LIMIT_DIR"

// TestFDLimit: with RLIMIT_NOFILE below what MaxConnections needs (a
// container's limit), opening one tenant after another closes idle tenants
// for descriptors, as for budget slots, instead of failing every open until
// IdleTimeout closes them (a fault trial: from the 12th tenant on, every
// open failed with "too many open files" for five minutes). It runs in a
// child process, whose limit it lowers.
//
// Modes: flat; buckets (a new bucket's folder is made and synced); disk
// (the template copied on disk, as one too large for memory: a copy that
// failed for want of descriptors dropped the template as damaged, and the
// next creation built it again).
func TestFDLimit(t *testing.T) {
	for _, mode := range []string{"flat", "buckets", "disk"} {
		t.Run("mode="+mode, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run", "^TestFDLimitChild$", "-test.v")
			cmd.Env = append(os.Environ(), fdLimitEnv+"="+t.TempDir(), fdLimitModeEnv+"="+mode)
			out, err := cmd.CombinedOutput()
			if err != nil || !strings.Contains(string(out), "--- PASS: TestFDLimitChild") {
				t.Fatalf("child: %v\n%s", err, out)
			}
		})
	}
}

const fdLimitModeEnv = "SQLITEPROXY_TEST_FD_LIMIT_MODE"

// TestFDLimitChild is TestFDLimit's child.
func TestFDLimitChild(t *testing.T) {
	dir := os.Getenv(fdLimitEnv)
	if dir == "" {
		t.Skip("run by TestFDLimit")
	}
	cfg := Config{Dir: dir, Migrations: []string{eventsTable}}
	switch os.Getenv(fdLimitModeEnv) {
	case "buckets":
		cfg.Layout = LayoutBuckets
	case "disk":
		memTemplateOff.Store(true) // a process of its own
	}
	p := newTestProxy(t, cfg)
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	open := fdsOpen(t)
	// Room for about ten tenants of three descriptors (file, -wal, -shm).
	lim.Cur = uint64(open + 30)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	for i := range 40 {
		id := fmt.Sprintf("t%02d", i)
		if _, err := p.ExecContext(tctx(id), `INSERT INTO events (tenant) VALUES (?)`, id); err != nil {
			t.Fatalf("tenant %d of 40: %v", i+1, err)
		}
	}
	if n := p.Stats().OpenTenants; n > 12 {
		t.Errorf("%d tenants open under a limit of %d descriptors", n, lim.Cur)
	}
	// Not one descriptor left (whether one was depended on other
	// goroutines: CI once found none for the new file a creation writes
	// before it opens a connection): creating a tenant, by CreateTenant
	// or by its first use, closes idle tenants for descriptors too.
	var held []*os.File
	for {
		f, err := os.Open(os.DevNull)
		if err != nil {
			if !errors.Is(err, syscall.EMFILE) {
				t.Fatal(err)
			}
			break
		}
		held = append(held, f)
	}
	tp := &p.c.r.tmpl
	tp.mu.Lock()
	built := tp.built
	tp.img = nil // loaded again by the creation below, with no descriptor free
	tp.mu.Unlock()
	if err := p.CreateTenant(t.Context(), "made"); err != nil {
		t.Errorf("CreateTenant with no descriptor free: %v", err)
	}
	for range held { // whatever the creation freed, taken again
		f, err := os.Open(os.DevNull)
		if err != nil {
			break
		}
		held = append(held, f)
	}
	if _, err := p.ExecContext(tctx("used"), `INSERT INTO events (tenant) VALUES ('used')`); err != nil {
		t.Errorf("first use with no descriptor free: %v", err)
	}
	for _, f := range held {
		f.Close()
	}
	tp.mu.Lock()
	if tp.built != built {
		t.Error("the template was built again: a copy that failed for want of descriptors dropped it")
	}
	if os.Getenv(fdLimitModeEnv) != "disk" && tp.noImage != "" {
		t.Errorf("the template is no longer held in memory (%s): a load that failed for want of descriptors", tp.noImage)
	}
	tp.mu.Unlock()
	if n := countRows(t, p, "used"); n != 1 {
		t.Errorf("used: %d rows", n)
	}
	for i := range 40 {
		if n := countRows(t, p, fmt.Sprintf("t%02d", i)); n != 1 {
			t.Errorf("t%02d: %d rows", i, n)
		}
	}
}

// fdsOpen counts this process's open descriptors.
func fdsOpen(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}
