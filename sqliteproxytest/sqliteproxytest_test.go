package sqliteproxytest_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sqliteproxy/sqliteproxy"
	"github.com/sqliteproxy/sqliteproxy/sqliteproxytest"
)

// fakeTB stands in for the test handed to a helper, to see the helper fail
// without failing this test. The rest of testing.TB (TempDir, Context) is
// the real test's.
type fakeTB struct {
	testing.TB
	mu       sync.Mutex
	failures []string
	cleanups []func()
}

func (f *fakeTB) Helper() {}

func (f *fakeTB) Errorf(format string, args ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failures = append(f.failures, fmt.Sprintf(format, args...))
}

// Fatalf records the failure and ends the goroutine, as FailNow does.
func (f *fakeTB) Fatalf(format string, args ...any) {
	f.Errorf(format, args...)
	runtime.Goexit()
}

func (f *fakeTB) Cleanup(fn func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cleanups = append(f.cleanups, fn)
}

// run runs body as the testing package runs a test: on a goroutine of its
// own, then the cleanups, last registered first. It returns the failures.
func (f *fakeTB) run(body func(tb testing.TB)) []string {
	done := make(chan struct{})
	go func() {
		defer close(done)
		body(f)
	}()
	<-done
	for i := len(f.cleanups) - 1; i >= 0; i-- {
		f.cleanups[i]()
	}
	return f.failures
}

func TestNew(t *testing.T) {
	t.Parallel()
	migs := []string{`CREATE TABLE notes (body TEXT)`}
	var p *sqliteproxy.Proxy
	failures := (&fakeTB{TB: t}).run(func(tb testing.TB) {
		p = sqliteproxytest.New(tb, sqliteproxy.Config{Migrations: migs})
		if _, err := p.ExecContext(sqliteproxytest.Context(tb, "acme"), `INSERT INTO notes VALUES ('hi')`); err != nil {
			tb.Fatalf("insert: %v", err)
		}
	})
	if len(failures) != 0 {
		t.Fatalf("failures: %q", failures)
	}
	// A fresh directory: the test's own, holding just the tenant it used.
	dir := p.Config().Dir
	if filepath.Dir(dir) != filepath.Dir(t.TempDir()) {
		t.Errorf("Dir %s is not one of the test's temporary directories", dir)
	}
	// (and the file every proxy process keeps locked there to say it has
	// the directory open)
	ents, err := os.ReadDir(dir)
	ents = slices.DeleteFunc(ents, func(e os.DirEntry) bool { return e.Name() == ".sqliteproxy-processes" })
	if err != nil || len(ents) == 0 || ents[0].Name() != "acme.db" {
		t.Errorf("Dir holds %v, %v; want acme.db and its side files", ents, err)
	}
	// Closed by the cleanup.
	if _, err := p.Tenants(context.Background()); !errors.Is(err, sqliteproxy.ErrClosed) {
		t.Errorf("Tenants after the test's cleanups: %v, want ErrClosed", err)
	}
}

func TestNew_GivenDir(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	first := sqliteproxytest.New(t, sqliteproxy.Config{Dir: dir})
	if _, err := first.ExecContext(sqliteproxytest.Context(t, "acme"), `CREATE TABLE t (a)`); err != nil {
		t.Fatal(err)
	}
	if err := first.Close(); err != nil { // closing early is fine; the cleanup closes again
		t.Fatal(err)
	}
	second := sqliteproxytest.New(t, sqliteproxy.Config{Dir: dir})
	if got := second.Config().Dir; got != dir {
		t.Errorf("Dir = %s, want %s", got, dir)
	}
	if ids, err := second.Tenants(context.Background()); err != nil || len(ids) != 1 || ids[0] != "acme" {
		t.Errorf("the second Proxy sees tenants %v, %v; want [acme]", ids, err)
	}
}

func TestNew_FailsTheTest(t *testing.T) {
	t.Parallel()
	reached := false
	failures := (&fakeTB{TB: t}).run(func(tb testing.TB) {
		sqliteproxytest.New(tb, sqliteproxy.Config{Migrations: []string{" "}})
		reached = true
	})
	if reached || len(failures) != 1 || !strings.HasPrefix(failures[0], "sqliteproxy.New: ") {
		t.Errorf("New with an empty migration: went on %v, failures %q", reached, failures)
	}
}

func TestContext(t *testing.T) {
	t.Parallel()
	var ctx context.Context
	t.Run("DuringTheTest", func(t *testing.T) {
		ctx = sqliteproxytest.Context(t, "acme")
		if id, ok := sqliteproxy.OrgID(ctx); id != "acme" || !ok {
			t.Errorf("OrgID = %q, %v", id, ok)
		}
		if _, ok := ctx.Deadline(); ok {
			t.Error("Context has a deadline")
		}
		if ctx.Err() != nil {
			t.Errorf("cancelled during the test: %v", ctx.Err())
		}
	})
	if !errors.Is(ctx.Err(), context.Canceled) {
		t.Errorf("after the test: %v, want context.Canceled", ctx.Err())
	}
}

func TestContextTimeout(t *testing.T) {
	t.Parallel()
	var ctx context.Context
	t.Run("DuringTheTest", func(t *testing.T) {
		before := time.Now()
		ctx = sqliteproxytest.ContextTimeout(t, "acme", time.Hour)
		if id, ok := sqliteproxy.OrgID(ctx); id != "acme" || !ok {
			t.Errorf("OrgID = %q, %v", id, ok)
		}
		if d, ok := ctx.Deadline(); !ok || d.Before(before.Add(time.Hour)) || d.After(time.Now().Add(time.Hour)) {
			t.Errorf("deadline %v, %v; want an hour from now", d, ok)
		}
	})
	if !errors.Is(ctx.Err(), context.Canceled) {
		t.Errorf("after the test: %v, want context.Canceled", ctx.Err())
	}
	short := sqliteproxytest.ContextTimeout(t, "acme", time.Nanosecond)
	<-short.Done() // bounded: the deadline has passed
	if !errors.Is(short.Err(), context.DeadlineExceeded) {
		t.Errorf("past its deadline: %v", short.Err())
	}
}

func TestWaitFor(t *testing.T) {
	t.Parallel()
	// Ready at the third call, whatever the scheduling (a timer started
	// before the first call could fire before it on a loaded machine).
	calls := 0
	sqliteproxytest.WaitFor(t, time.Minute, "the third call", func() bool {
		calls++
		return calls >= 3
	})
	if calls != 3 {
		t.Errorf("cond called %d times, want 3: WaitFor did not poll, or polled on", calls)
	}

	// The test fails once the timeout passes, naming what it waited for.
	start := time.Now()
	reached := false
	failures := (&fakeTB{TB: t}).run(func(tb testing.TB) {
		sqliteproxytest.WaitFor(tb, 30*time.Millisecond, "the moon", func() bool { return false })
		reached = true
	})
	if d := time.Since(start); d < 30*time.Millisecond {
		t.Errorf("gave up after %v, before the 30ms timeout", d)
	}
	if reached || len(failures) != 1 || failures[0] != "timed out after 30ms waiting for the moon" {
		t.Errorf("went on %v, failures %q", reached, failures)
	}
}

// WaitFor on a Proxy's own figures: the idle timeout closes a tenant.
func TestWaitFor_IdleTimeout(t *testing.T) {
	t.Parallel()
	p := sqliteproxytest.New(t, sqliteproxy.Config{IdleTimeout: 50 * time.Millisecond})
	if _, err := p.ExecContext(sqliteproxytest.Context(t, "acme"), `CREATE TABLE t (a)`); err != nil {
		t.Fatal(err)
	}
	sqliteproxytest.WaitFor(t, 10*time.Second, "the idle timeout to close acme", func() bool {
		st := p.Stats()
		return st.Evictions == 1 && st.OpenTenants == 0
	})
}

// TestExample runs the test that example_test.go shows.
func TestExample(t *testing.T) { notesTest(t) }

func TestStrings(t *testing.T) {
	t.Parallel()
	p := sqliteproxytest.New(t, sqliteproxy.Config{Migrations: []string{`CREATE TABLE t (s TEXT)`}})
	ctx := sqliteproxytest.Context(t, "acme")
	if _, err := p.ExecContext(ctx, `INSERT INTO t VALUES ('b'), ('a')`); err != nil {
		t.Fatal(err)
	}
	if got := sqliteproxytest.Strings(t, ctx, p, `SELECT s FROM t ORDER BY s`); strings.Join(got, ",") != "a,b" {
		t.Errorf("Strings: %q", got)
	}
	failures := (&fakeTB{TB: t}).run(func(tb testing.TB) {
		sqliteproxytest.Strings(tb, ctx, p, `SELECT nosuch FROM t`)
	})
	if len(failures) != 1 || !strings.Contains(failures[0], "no such column") {
		t.Errorf("Strings of a bad query: failures %q", failures)
	}
}
