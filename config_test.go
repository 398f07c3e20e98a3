package sqliteproxy

import (
	"context"
	"database/sql"
	"errors"
	"math"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

var dsnTests = []struct {
	dsn  string
	want Config
}{
	{"dir=./data", Config{Dir: "./data"}},
	{"dir=./data&max_connections=50", Config{Dir: "./data", MaxConnections: 50}},
	{"dir=%2Ftmp%2Fa+b%26c&readers=2&idle_timeout=90s&busy_timeout=1s&synchronous=FULL&stmt_cache_size=-1&foreign_keys=true&explicit_create=true",
		Config{Dir: "/tmp/a b&c", ReadersPerTenant: 2, IdleTimeout: 90 * time.Second, BusyTimeout: time.Second,
			Synchronous: "FULL", StmtCacheSize: -1, ForeignKeys: true, ExplicitCreate: true}},
	{"dir=x&layout=buckets", Config{Dir: "x", Layout: LayoutBuckets}},
	{"dir=x&layout=flat", Config{Dir: "x", Layout: LayoutFlat}},
	{"dir=d&migration_mode=manual", Config{Dir: "d", MigrationMode: MigrateManual}},
	{"dir=d&migration_mode=check", Config{Dir: "d", MigrationMode: MigrateCheck}},
	{"dir=d&busy_timeout=0", Config{Dir: "d", BusyTimeout: -1}}, // 0 written out: no wait, not the default
	{"dir=d&busy_timeout=0s", Config{Dir: "d", BusyTimeout: -1}},
	{"dir=d&group_commit=off&foreign_keys=on&explicit_create=yes&trace_queries=no", Config{Dir: "d", GroupCommit: GroupCommitOff, ForeignKeys: true, ExplicitCreate: true}},
	{"dir=d&group_commit=ON", Config{Dir: "d", GroupCommit: GroupCommitOn}},
	{"dir=d&keep_wal=true", Config{Dir: "d", KeepWAL: true}},
	{"dir=d&keep_wal=0", Config{Dir: "d"}},
	{"", Config{}},
}

func TestParseDSN(t *testing.T) {
	t.Parallel()
	for _, tt := range dsnTests {
		got, err := ParseDSN(tt.dsn)
		if err != nil {
			t.Errorf("ParseDSN(%q): %v", tt.dsn, err)
			continue
		}
		if diff := cmp.Diff(tt.want, *got); diff != "" {
			t.Errorf("ParseDSN(%q) (-want +got):\n%s", tt.dsn, diff)
		}
		back, err := ParseDSN(got.FormatDSN())
		if err != nil {
			t.Errorf("ParseDSN(FormatDSN()) of %q: %v", tt.dsn, err)
		} else if diff := cmp.Diff(*got, *back); diff != "" {
			t.Errorf("round trip of %q (-want +got):\n%s", tt.dsn, diff)
		}
	}
}

func TestParseDSN_Errors(t *testing.T) {
	t.Parallel()
	for _, dsn := range []string{
		"dir=a&dir=b", "directory=x", "max_connections=many", "idle_timeout=5", "foreign_keys=maybe", "dir=%zz", "dir=a;b",
		"layout=nested", "layout=Buckets", "layout=", "migration_mode=sometimes", "migration_mode=",
		"keep_wal=sometimes", "keep_wal=",
	} {
		if _, err := ParseDSN(dsn); err == nil {
			t.Errorf("ParseDSN(%q) succeeded", dsn)
		}
	}
	// The error names the key, and says how to write what it could not read.
	for dsn, want := range map[string]string{
		"max_connections=5&dir=/srv/100%/data": `key "dir"`,
		"group_commit=sometimes":               `key "group_commit": "sometimes" is not a flag`,
		"max_connections=5&dir=/srv/a;b":       `key "dir": invalid semicolon separator in query (URL query syntax: write ; as %3B`,
	} {
		if _, err := ParseDSN(dsn); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseDSN(%q): %v, want it to say %s", dsn, err, want)
		}
	}
	if _, err := ParseDSN("dir=/srv/100%/data"); err == nil || !strings.Contains(err.Error(), "%25") {
		t.Errorf("ParseDSN of a bare %%: %v, want it to say how to write one", err)
	}
	// Semantic errors surface when opening.
	for _, dsn := range []string{"", "dir=x&max_connections=-1", "dir=x&synchronous=SOMETIMES"} {
		if _, err := sql.Open(DriverName, dsn); err == nil {
			t.Errorf("sql.Open(%q) succeeded", dsn)
		}
	}
}

func FuzzFormatDSN(f *testing.F) {
	for _, tt := range dsnTests {
		f.Add(tt.dsn)
	}
	f.Fuzz(func(t *testing.T, dsn string) {
		cfg, err := ParseDSN(dsn)
		if err != nil {
			return
		}
		back, err := ParseDSN(cfg.FormatDSN())
		if err != nil {
			t.Fatalf("FormatDSN of parsed %q gives unparsable %q: %v", dsn, cfg.FormatDSN(), err)
		}
		if diff := cmp.Diff(*cfg, *back); diff != "" {
			t.Fatalf("round trip of %q (-want +got):\n%s", dsn, diff)
		}
	})
}

func TestConfigDefaultsAndNoMutation(t *testing.T) {
	t.Parallel()
	migs := []string{"CREATE TABLE t (a)"}
	cfg := Config{Dir: t.TempDir(), Migrations: migs}
	orig := *cfg.Clone()
	p := newTestProxy(t, cfg)
	if diff := cmp.Diff(orig, cfg); diff != "" {
		t.Errorf("New modified the caller's Config:\n%s", diff)
	}
	got := p.Config()
	want := Config{Dir: cfg.Dir, MaxConnections: DefaultMaxConnections, ReadersPerTenant: DefaultReadersPerTenant,
		IdleTimeout: DefaultIdleTimeout, BusyTimeout: DefaultBusyTimeout, Synchronous: DefaultSynchronous,
		StmtCacheSize: DefaultStmtCacheSize, LitestreamPath: DefaultLitestreamPath, Migrations: migs, KeepWAL: keepWALSweep}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("resolved config (-want +got):\n%s", diff)
	}
	if _, err := New(Config{}); err == nil || !strings.Contains(err.Error(), "Dir is required") {
		t.Errorf("New without Dir: %v", err)
	}
	if _, err := New(Config{Dir: t.TempDir(), Migrations: []string{" "}}); err == nil {
		t.Error("New with an empty migration succeeded")
	}
	var pe *Error
	if _, err := Open("dir=x&bogus=1"); !errors.As(err, &pe) {
		t.Errorf("Open with a bad DSN: %v", err)
	}
}

func TestSynchronousApplied(t *testing.T) {
	t.Parallel()
	for _, mode := range []struct {
		name string
		want int
	}{{"NORMAL", 1}, {"FULL", 2}, {"off", 0}} {
		p := newTestProxy(t, Config{Synchronous: mode.name})
		ctx := tctx("acme")
		if got := queryInt(t, p, ctx, `PRAGMA synchronous`); got != mode.want {
			t.Errorf("synchronous=%s: PRAGMA synchronous = %d, want %d", mode.name, got, mode.want)
		}
		var jm string
		if err := p.QueryRowContext(ctx, `PRAGMA journal_mode`).Scan(&jm); err != nil || jm != "wal" {
			t.Errorf("journal_mode = %q, %v; want wal", jm, err)
		}
	}
}

// Values at the far end of each setting: a BusyTimeout past SQLite's
// 32-bit milliseconds became busy_timeout 0 (fail at once, the opposite of
// what was asked); MaxConnections meant as "no cap" allocated a ring of that
// many IDs in New (4.9 GB for 1e8, a crash for math.MaxInt); a huge
// StmtCacheSize allocated its capacity on every connection.
func TestConfigExtremes(t *testing.T) {
	dir := t.TempDir()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	p := newTestProxy(t, Config{Dir: dir, BusyTimeout: 1000 * time.Hour, MaxConnections: 10_000_000})
	runtime.ReadMemStats(&after)
	if grew := int64(after.HeapAlloc) - int64(before.HeapAlloc); grew > 50<<20 {
		t.Errorf("New with MaxConnections 1e7: heap +%d MB", grew>>20)
	}
	if got := p.c.r.cfg.BusyTimeout; got != math.MaxInt32*time.Millisecond {
		t.Errorf("BusyTimeout 1000h resolved to %v", got)
	}
	if v := writerBusyTimeout(t, p, "acme"); v != math.MaxInt32*time.Millisecond {
		t.Errorf("busy timeout of a tenant connection = %v, want %v", v, math.MaxInt32*time.Millisecond)
	}
	// SQLite counts whole milliseconds: 500µs was busy_timeout 0.
	short := newTestProxy(t, Config{Dir: t.TempDir(), BusyTimeout: 500 * time.Microsecond})
	if v := writerBusyTimeout(t, short, "acme"); v != time.Millisecond {
		t.Errorf("BusyTimeout 500µs: busy timeout of a tenant connection = %v, want 1ms", v)
	}
	if _, err := New(Config{Dir: dir, StmtCacheSize: 1 << 24}); err == nil || !strings.Contains(err.Error(), "StmtCacheSize") {
		t.Errorf("StmtCacheSize 1<<24: %v, want an error naming it", err)
	}
}

// Proxy.Config gives back a configuration that opens a Proxy configured
// the same, through New and through FormatDSN: settings turned off stay
// off (0 would mean their default), and the defaults filled in stay.
func TestConfig_RoundTrip(t *testing.T) {
	t.Parallel()
	for _, cfg := range []Config{
		{},
		{ReadersPerTenant: -1, BusyTimeout: -1, StmtCacheSize: -1, IdleTimeout: -1},
		{ReadersPerTenant: 2, BusyTimeout: 1500 * time.Microsecond, StmtCacheSize: 8, MaxConnections: 9},
	} {
		cfg.Dir = t.TempDir()
		p := newTestProxy(t, cfg)
		want := p.Config()
		again := newTestProxy(t, want)
		if diff := cmp.Diff(want, again.Config()); diff != "" {
			t.Errorf("New(p.Config()) of %+v: (-p +again)\n%s", cfg, diff)
		}
		db, err := Open(p.Config().FormatDSN()) // as the doc comment writes it
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(want, db.Config()); diff != "" {
			t.Errorf("Open(p.Config().FormatDSN()) of %+v: (-p +again)\n%s", cfg, diff)
		}
		db.Close()
		if got := again.c.cfg; got.ReadersPerTenant != p.c.cfg.ReadersPerTenant || got.BusyTimeout != p.c.cfg.BusyTimeout || got.StmtCacheSize != p.c.cfg.StmtCacheSize {
			t.Errorf("%+v: resolved %d readers, %v, cache %d; again %d, %v, %d", cfg, p.c.cfg.ReadersPerTenant, p.c.cfg.BusyTimeout, p.c.cfg.StmtCacheSize, got.ReadersPerTenant, got.BusyTimeout, got.StmtCacheSize)
		}
	}
}

// writerBusyTimeout returns the busy timeout of tenant id's writer (opening
// it): its busy handler's (busy.go; PRAGMA busy_timeout reads 0 there).
func writerBusyTimeout(t *testing.T, p *Proxy, id string) time.Duration {
	t.Helper()
	tn, err := p.c.r.tenant(id)
	if err != nil {
		t.Fatal(err)
	}
	defer tn.unpin()
	pc, err := tn.acquireWriter(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer tn.releaseWriter()
	d, err := busyTimeoutOf(pc.c)
	if err != nil {
		t.Fatal(err)
	}
	return d
}
