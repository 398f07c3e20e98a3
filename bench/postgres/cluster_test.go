package pgbench

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	_ "github.com/jackc/pgx/v5/stdlib" // registers database/sql driver "pgx"
)

// A throwaway PostgreSQL cluster, one per test process: initdb into a
// fresh directory under os.TempDir(), postgres listening on a unix socket
// only (listen_addresses=''), stopped (fast shutdown) and removed when the
// process's tests end (TestMain). initdb and postgres refuse to run as
// root: as root they run as the postgres system user that Debian's package
// creates; otherwise as the current user.

// pgSettings are the server settings the clusters run with, besides
// PostgreSQL 15's defaults (shared_buffers=128MB, wal_sync_method=fdatasync,
// full_page_writes=on, autovacuum=on, ...): max_connections leaves room
// for the superuser's connections beside the application's pool of
// pgPoolSize. synchronous_commit is set per connection pool (pairing).
var pgSettings = []string{
	"listen_addresses=",
	"fsync=on",
	"synchronous_commit=on",
	"max_connections=120",
}

type pgCluster struct {
	base    string // removed at stop; holds data/ and sock/
	data    string
	sock    string
	version string // postgres --version
	cmd     *exec.Cmd
	exited  chan struct{} // closed when postgres has exited
	log     *syncBuffer   // postgres's stderr
}

var (
	clusterOnce sync.Once
	cluster     *pgCluster
	clusterErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if cluster != nil {
		if err := cluster.stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stop postgres:", err)
			if code == 0 {
				code = 1
			}
		}
	}
	os.Exit(code)
}

// sharedCluster starts the process's cluster on first use.
func sharedCluster(tb testing.TB) *pgCluster {
	tb.Helper()
	clusterOnce.Do(func() { cluster, clusterErr = startCluster() })
	if clusterErr != nil {
		tb.Fatal(clusterErr)
	}
	return cluster
}

// pgBinDir returns the directory of initdb and postgres: the newest of
// /usr/lib/postgresql/*/bin (Debian's layout), else initdb's directory on
// PATH. When neither has one it runs install-postgres.sh (apt-get install
// postgresql, as `make bench-postgres` does) and looks again.
func pgBinDir() (string, error) {
	find := func() string {
		dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
		slices.SortFunc(dirs, func(a, b string) int { return majorOf(b) - majorOf(a) })
		for _, d := range dirs {
			if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
				return d
			}
		}
		if p, err := exec.LookPath("initdb"); err == nil {
			if real, err := filepath.EvalSymlinks(p); err == nil {
				return filepath.Dir(real)
			}
		}
		return ""
	}
	if d := find(); d != "" {
		return d, nil
	}
	fmt.Fprintln(os.Stderr, "initdb not found: running install-postgres.sh (apt-get install postgresql)")
	cmd := exec.Command("./install-postgres.sh")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("install postgresql: %w", err)
	}
	if d := find(); d != "" {
		return d, nil
	}
	return "", errors.New("install postgresql: still no initdb")
}

// majorOf reads the major version out of /usr/lib/postgresql/<major>/bin.
func majorOf(dir string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(dir)))
	return n
}

// asServerUser makes cmd run as the postgres system user when this
// process is root, and chowns dirs to that user.
func asServerUser(cmd *exec.Cmd, dirs ...string) error {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGINT}
	if os.Geteuid() != 0 {
		return nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return fmt.Errorf("running as root needs the postgres system user: %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	for _, d := range dirs {
		if err := os.Chown(d, uid, gid); err != nil {
			return err
		}
	}
	cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), NoSetGroups: true}
	return nil
}

func startCluster() (c *pgCluster, err error) {
	bin, err := pgBinDir()
	if err != nil {
		return nil, err
	}
	base, err := os.MkdirTemp("", "sqliteproxy-pg-")
	if err != nil {
		return nil, err
	}
	c = &pgCluster{base: base, data: filepath.Join(base, "data"), sock: filepath.Join(base, "sock"), log: &syncBuffer{}}
	defer func() {
		if err != nil {
			os.RemoveAll(base)
		}
	}()
	if err := os.Mkdir(c.sock, 0o700); err != nil {
		return nil, err
	}
	env := []string{"PATH=" + os.Getenv("PATH"), "LANG=C", "LC_ALL=C"}
	out, err := exec.Command(filepath.Join(bin, "postgres"), "--version").Output()
	if err != nil {
		return nil, fmt.Errorf("postgres --version: %w", err)
	}
	c.version = strings.TrimSpace(string(out))

	initdb := exec.Command(filepath.Join(bin, "initdb"), "-D", c.data, "-U", "bench", "-A", "trust",
		"-E", "UTF8", "--locale=C", "--no-sync")
	initdb.Dir, initdb.Env = base, env
	if err := asServerUser(initdb, base, c.sock); err != nil {
		return nil, err
	}
	if out, err := initdb.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("initdb: %w\n%s", err, out)
	}

	args := []string{"-D", c.data, "-k", c.sock}
	for _, s := range pgSettings {
		args = append(args, "-c", s)
	}
	c.cmd = exec.Command(filepath.Join(bin, "postgres"), args...)
	c.cmd.Dir, c.cmd.Env = base, env
	c.cmd.Stdout, c.cmd.Stderr = c.log, c.log
	if err := asServerUser(c.cmd); err != nil {
		return nil, err
	}
	if err := c.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start postgres: %w", err)
	}
	c.exited = make(chan struct{})
	go func() { c.cmd.Wait(); close(c.exited) }()
	defer func() {
		if err != nil {
			c.cmd.Process.Signal(syscall.SIGQUIT)
			<-c.exited
		}
	}()

	// Ready when the superuser can connect; then the application role.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var conn *pgx.Conn
	for {
		conn, err = pgx.Connect(ctx, c.dsn("bench", "postgres"))
		if err == nil {
			break
		}
		select {
		case <-c.exited:
			return nil, fmt.Errorf("postgres exited: %v\n%s", c.cmd.ProcessState, c.log)
		case <-ctx.Done():
			return nil, fmt.Errorf("postgres not ready after 60s: %w\n%s", err, c.log)
		case <-time.After(20 * time.Millisecond):
		}
	}
	defer conn.Close(context.Background())
	// app: the application's role. Not a superuser, owns nothing, so row
	// level security applies to it.
	if _, err := conn.Exec(ctx, `CREATE ROLE app LOGIN NOSUPERUSER NOBYPASSRLS`); err != nil {
		return nil, err
	}
	return c, nil
}

// dsn is a pgx connection string for role on database db, over the socket.
func (c *pgCluster) dsn(role, db string) string {
	return fmt.Sprintf("host=%s user=%s dbname=%s sslmode=disable", c.sock, role, db)
}

// stop shuts postgres down (SIGINT: fast shutdown) and removes its files.
func (c *pgCluster) stop() error {
	defer os.RemoveAll(c.base)
	c.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-c.exited:
	case <-time.After(60 * time.Second):
		c.cmd.Process.Kill()
		<-c.exited
		return errors.New("postgres did not stop within 60s of SIGINT; killed")
	}
	return nil
}

// pgSchema is the article's events table plus tenant_id (filled in from
// app.tenant by default, so the application's INSERT is the single-tenant
// one), an index on (tenant_id, id), and row level security enabled,
// forced, and keyed on the per-transaction setting app.tenant. The CHECK
// matters: once a session has set app.tenant in a transaction, the
// setting reads ” afterwards, and without it a statement run outside a
// tenant's transaction would insert rows of tenant ” (the policy's
// WITH CHECK holds: ” = ”).
const pgSchema = `
CREATE TABLE events (
	id         BIGSERIAL PRIMARY KEY,
	tenant_id  TEXT NOT NULL DEFAULT current_setting('app.tenant') CHECK (tenant_id <> ''),
	name       TEXT NOT NULL,
	created_at TIMESTAMPTZ DEFAULT now()
);
CREATE INDEX events_tenant_id_id ON events (tenant_id, id);
ALTER TABLE events ENABLE ROW LEVEL SECURITY;
ALTER TABLE events FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON events
	USING (tenant_id = current_setting('app.tenant'))
	WITH CHECK (tenant_id = current_setting('app.tenant'));
GRANT SELECT, INSERT, UPDATE, DELETE ON events TO app;
GRANT USAGE ON SEQUENCE events_id_seq TO app;
`

// pgPoolSize is the application pool's size (SetMaxOpenConns and
// SetMaxIdleConns): enough for the eight writers of Writers8 to run at
// once, 8 backends per core on this 2-core machine; the 400 goroutines of
// Tenants100x4 queue for it (pgxpool's default would be max(4, cores)).
const pgPoolSize = 100

var dbSeq int

// pgDatabase is one fresh database of the cluster with pgSchema.
type pgDatabase struct {
	c     *pgCluster
	name  string
	admin *sql.DB // the superuser (bypasses RLS): setup and operations
}

// newDatabase creates a fresh database with pgSchema, dropped when tb ends.
func newDatabase(tb testing.TB) *pgDatabase {
	tb.Helper()
	c := sharedCluster(tb)
	dbSeq++
	d := &pgDatabase{c: c, name: fmt.Sprintf("bench%d", dbSeq)}
	root := d.open(tb, "bench", "postgres", "")
	if _, err := root.Exec(`CREATE DATABASE ` + d.name); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if _, err := root.Exec(`DROP DATABASE ` + d.name + ` WITH (FORCE)`); err != nil {
			tb.Error(err)
		}
	})
	d.admin = d.open(tb, "bench", d.name, "")
	if _, err := d.admin.Exec(pgSchema); err != nil {
		tb.Fatal(err)
	}
	return d
}

// open opens a pool on database db as role, with synchronous_commit set
// to syncCommit (on, off) for its sessions unless it is "". Closed when tb
// ends (before the database is dropped: cleanups run last-in first-out).
func (d *pgDatabase) open(tb testing.TB, role, db, syncCommit string) *sql.DB {
	tb.Helper()
	dsn := d.c.dsn(role, db)
	if syncCommit != "" {
		dsn += " synchronous_commit=" + syncCommit
	}
	pool, err := sql.Open("pgx", dsn)
	if err != nil {
		tb.Fatal(err)
	}
	pool.SetMaxOpenConns(pgPoolSize)
	pool.SetMaxIdleConns(pgPoolSize)
	tb.Cleanup(func() { pool.Close() })
	if syncCommit != "" {
		var got string
		if err := pool.QueryRow(`SHOW synchronous_commit`).Scan(&got); err != nil || got != syncCommit {
			tb.Fatalf("synchronous_commit = %q (%v), want %q", got, err, syncCommit)
		}
	}
	return pool
}

// app opens the application's pool (role app, subject to RLS).
func (d *pgDatabase) app(tb testing.TB, syncCommit string) *sql.DB {
	return d.open(tb, "app", d.name, syncCommit)
}

// seed gives tenants ids[i] rows rows each (names row1, row2, ...), in
// tenant order, as the superuser, then VACUUM ANALYZE, and returns the
// smallest id of each tenant's rows (their ids are consecutive).
func (d *pgDatabase) seed(tb testing.TB, ids []string, rows int) []int64 {
	tb.Helper()
	if _, err := d.admin.Exec(`INSERT INTO events (tenant_id, name)
		SELECT t, 'row' || r FROM unnest($1::text[]) WITH ORDINALITY AS u(t, o), generate_series(1, $2) AS r
		ORDER BY o, r`, ids, rows); err != nil {
		tb.Fatal(err)
	}
	if _, err := d.admin.Exec(`VACUUM ANALYZE events`); err != nil {
		tb.Fatal(err)
	}
	base := make(map[string]int64, len(ids))
	rs, err := d.admin.Query(`SELECT tenant_id, min(id), max(id) FROM events GROUP BY tenant_id`)
	if err != nil {
		tb.Fatal(err)
	}
	defer rs.Close()
	for rs.Next() {
		var t string
		var lo, hi int64
		if err := rs.Scan(&t, &lo, &hi); err != nil {
			tb.Fatal(err)
		}
		if hi-lo+1 != int64(rows) {
			tb.Fatalf("tenant %s: ids %d..%d are not %d consecutive ids", t, lo, hi, rows)
		}
		base[t] = lo
	}
	if err := rs.Err(); err != nil {
		tb.Fatal(err)
	}
	out := make([]int64, len(ids))
	for i, id := range ids {
		b, ok := base[id]
		if !ok {
			tb.Fatalf("tenant %s has no rows", id)
		}
		out[i] = b
	}
	return out
}

// syncBuffer is a bytes.Buffer safe for concurrent use.
type syncBuffer struct {
	mu sync.Mutex // guards b
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
