package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// lockedBuffer is a bytes.Buffer read by the test while the command writes.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Ctrl-C at delete's prompt ends the command, nothing deleted: it was
// ignored, and a "y" typed afterwards deleted the tenant.
func TestDelete_InterruptAtThePrompt(t *testing.T) {
	t.Parallel()
	dir := fleet(t, migrationsDir(t, "0001_init.sql"), 1, "acme")
	stdin, typed := io.Pipe()
	defer typed.Close()
	ctx, interrupt := context.WithCancel(context.Background())
	defer interrupt()
	var stdout, stderr lockedBuffer
	e := &env{ctx: ctx, stdin: stdin, stdout: &stdout, stderr: &stderr}
	done := make(chan int, 1)
	go func() { done <- e.main([]string{"delete", "-dir", dir, "acme"}) }()
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(stderr.String(), "[y/N]") {
		if time.Now().After(deadline) {
			t.Fatalf("no prompt; stderr %q", stderr.String())
		}
		time.Sleep(time.Millisecond)
	}
	interrupt()
	var code int
	select {
	case code = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("delete still waits for an answer after the interrupt")
	}
	typed.Write([]byte("y\n")) // too late
	if code != exitFailed || !strings.Contains(stderr.String(), "delete acme: interrupted, nothing deleted") {
		t.Errorf("exit %d, stderr %q", code, stderr.String())
	}
	if _, err := os.Stat(filepath.Join(dir, "acme.db")); err != nil {
		t.Errorf("acme.db after the interrupted delete: %v", err)
	}
}

// status -json of a tenant that does not exist prints an array, as
// tenants -json and query -json do: it printed nothing on stdout.
func TestStatus_JSONOfAMissingTenantIsAnArray(t *testing.T) {
	t.Parallel()
	dir := fleet(t, migrationsDir(t, "0001_init.sql"), 1, "acme")
	r := cli(t, nil, "status", "-dir", dir, "-json", "nosuch").want(t, exitFailed)
	if strings.TrimSpace(r.stdout) != "[]" {
		t.Errorf("stdout %q, want []", r.stdout)
	}
}

// backup -all removes the temporary files of backups killed midway (each a
// whole copy of a tenant) once they are old; young ones (a backup in
// flight) and other files stay. So does a backup of one tenant, in its
// file's folder (adv43: only -all did).
func TestBackupAll_SweepsOldTemporaryFiles(t *testing.T) {
	t.Parallel()
	for _, all := range []bool{true, false} {
		t.Run(fmt.Sprintf("all=%v", all), func(t *testing.T) { sweepsOldTemporaryFiles(t, all) })
	}
}

func sweepsOldTemporaryFiles(t *testing.T, all bool) {
	dir := fleet(t, migrationsDir(t, "0001_init.sql"), 1, "acme")
	out := t.TempDir()
	old := filepath.Join(out, ".backup-acme-0123456789abcdef.db")
	young := filepath.Join(out, ".backup-acme-fedcba9876543210.db")
	mine := filepath.Join(out, ".backup-notes.txt")
	for _, p := range []string{old, old + "-journal", young, mine} {
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	long := time.Now().Add(-2 * backupTempAge)
	for _, p := range []string{old, old + "-journal", mine} {
		if err := os.Chtimes(p, long, long); err != nil {
			t.Fatal(err)
		}
	}
	if all {
		cli(t, nil, "backup", "-dir", dir, "-all", out).want(t, exitOK)
	} else {
		cli(t, nil, "backup", "-dir", dir, "acme", filepath.Join(out, "acme.db")).want(t, exitOK)
	}
	for p, want := range map[string]bool{old: false, old + "-journal": false, young: true, mine: true, filepath.Join(out, "acme.db"): true} {
		if _, err := os.Stat(p); (err == nil) != want {
			t.Errorf("%s: exists %v, want %v", filepath.Base(p), err == nil, want)
		}
	}
}
