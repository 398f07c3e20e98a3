package sqliteproxy

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"net/url"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
)

// Defaults applied to zero-valued Config fields.
const (
	DefaultMaxConnections   = 100
	DefaultReadersPerTenant = 4
	DefaultIdleTimeout      = 5 * time.Minute
	DefaultBusyTimeout      = 5 * time.Second
	DefaultSynchronous      = "NORMAL"
	DefaultStmtCacheSize    = 64
	DefaultLitestreamPath   = "litestream"
)

const (
	maxBusyTimeout   = math.MaxInt32 * time.Millisecond // what SQLite's busy_timeout can hold
	maxStmtCacheSize = 1 << 16
)

// Config configures a Proxy or a Connector. The zero value of every field
// except Dir means "the default"; each field's DSN key is given in brackets.
type Config struct {
	// Dir is the directory holding one SQLite file per tenant, <Dir>/<id>.db
	// (see Layout). It is created (mode 0700) if missing. Required. [dir]
	Dir string

	// Layout says where tenant files live under Dir: LayoutFlat,
	// <Dir>/<id>.db (the default), or LayoutBuckets,
	// <Dir>/<bucket>/<id>.db in 256 folders, for directories of many
	// thousands of tenants. New refuses a directory in the other layout;
	// convert one with Relayout. [layout=flat|buckets]
	Layout Layout

	// MaxConnections caps the SQLite connections open at once, all tenants
	// together (each is a file descriptor on the tenant's file). When the cap
	// is reached, idle tenants are closed, least recently used first; when
	// none is idle, callers wait, honouring their context. While tenants
	// churn through the cap and under a tenth of uses find their tenant
	// open, fewer idle tenants are kept open (down to 8), and the cap comes
	// back when recently closed tenants return (retention.go; each open
	// connection makes every open and close dearer). Default 100. It counts
	// the tenants' connections: RestoreTenant and BackupTenant read and
	// check their copies on connections of their own, one or two each while
	// they run, besides the cap. [max_connections]
	MaxConnections int

	// ReadersPerTenant is how many read-only connections a tenant may open
	// besides its single writer. Readers serve queries that SQLite reports as
	// read-only and read-only transactions, concurrently with the writer.
	// Default 4; a negative value means none (the writer serves everything). [readers]
	ReadersPerTenant int

	// IdleTimeout closes every connection of a tenant that has not been used
	// for this long. Default 5 minutes; negative disables it. [idle_timeout]
	IdleTimeout time.Duration

	// BusyTimeout bounds a wait whose context has no deadline: within this
	// process, for a tenant's writer (writers queue in Go, not in SQLite's
	// busy handler), the group-commit queue or a connection slot; against
	// other processes writing the same files, the busy handler of tenant
	// connections (SQLite's delays; it also gives up when the statement's
	// context ends; PRAGMA busy_timeout reads 0 there). Such a wait then
	// fails with SQLITE_BUSY
	// ("database is locked"). Default 5s, rounded up to a whole millisecond;
	// negative means 0: fail at once, even between this process's own
	// writers. In a DSN, busy_timeout=0 means 0 too. [busy_timeout]
	BusyTimeout time.Duration

	// Synchronous is PRAGMA synchronous on tenant connections: OFF, NORMAL,
	// FULL or EXTRA. With WAL (always on), NORMAL loses nothing committed on
	// a process crash; FULL also survives power loss. Default NORMAL. [synchronous]
	Synchronous string

	// StmtCacheSize is the number of prepared statements each tenant
	// connection keeps for reuse. Default 64; negative disables the cache. [stmt_cache_size]
	StmtCacheSize int

	// ForeignKeys turns on PRAGMA foreign_keys on tenant connections.
	// Default false, as in SQLite (ent's schema migration needs it on). [foreign_keys]
	ForeignKeys bool

	// ExplicitCreate makes unknown tenants fail with ErrTenantNotFound (and
	// creates no file) instead of creating them on first access, so a typo in
	// a tenant header cannot create a database. Default false. [explicit_create]
	ExplicitCreate bool

	// GroupCommit batches autocommit writes that find a tenant's writer
	// busy: one transaction, one commit, then every caller gets its own
	// result; a statement that fails is undone alone, as SQLite undoes it in
	// autocommit mode (see the README's semantics).
	// GroupCommitOn (the zero value, the default) or GroupCommitOff.
	// [group_commit=true|false]
	GroupCommit GroupCommitMode

	// KeepWAL keeps a tenant's -wal and -shm files when its last connection
	// closes (SQLITE_FCNTL_PERSIST_WAL; the -wal is checkpointed and
	// emptied first, as SQLite does when it removes it), instead of
	// removing them: the next open reuses them rather than creating both
	// files, which halves a cold open on ext4 (see the README, "Many
	// tenants"). The cost is two more inodes and 32 KiB (the -shm) per
	// tenant opened since, and side files beside closed tenants, where a
	// tool that takes a -wal to mean "open elsewhere" sees one (the CLI
	// asks the file's locks instead, where the system tells). Default
	// false. [keep_wal]
	KeepWAL bool

	// Migrations is the ordered, append-only list of schema migrations. Each
	// tenant gets the ones it has not had, in order, on first access; each
	// runs in its own IMMEDIATE transaction and is recorded with a checksum
	// in the tenant's ledger table. Never edit or remove an applied migration
	// (that is ErrMigrationDrift); append a new one. Not settable by DSN.
	Migrations []string

	// MigrationsFS holds the migrations as SQL files (0001_init.sql,
	// 0002_add_severity.up.sql, ...; see loadMigrations), e.g. an embed.FS.
	// At most one of Migrations, MigrationsFS and MigrationsDir may be set.
	MigrationsFS fs.FS

	// MigrationsDir is a directory of migration files, as MigrationsFS. [migrations_dir]
	MigrationsDir string

	// MigrationMode says when tenants get pending migrations: on first
	// access (MigrateAuto, the default) or only through MigrateAll, tenants
	// behind being refused (MigrateCheck) or served as they are
	// (MigrateManual). [migration_mode: auto, check, manual]
	MigrationMode MigrationMode

	// MeterProvider receives the metrics (see telemetry.go for the list).
	// When nil, no metric is recorded and the hot path pays one branch. To
	// use the global provider, pass otel.GetMeterProvider() after setting
	// it. Not settable by DSN.
	MeterProvider metric.MeterProvider

	// TracerProvider receives spans for tenant opens, migrations,
	// evictions and waits. When nil, no span is made; pass
	// otel.GetTracerProvider() to use the global provider. Not settable by DSN.
	TracerProvider trace.TracerProvider

	// TraceQueries also makes a span of every exec, query, begin, commit,
	// rollback and prepare. Default false. [trace_queries]
	TraceQueries bool

	// TraceStatements adds the SQL text (db.query.text) to those spans, and
	// error messages to every span (SQLite's quote statements); without it
	// a failed span says its error.type only. Default false: statements may
	// carry personal data. [trace_statements]
	TraceStatements bool

	// MetricsTenantLimit bounds the cardinality of the tenant attribute
	// (sqliteproxy.tenant) on metrics: 0 puts it on every tenant's
	// measurements; a negative value leaves it off; N > 0 keeps it for the N
	// busiest tenants (re-ranked every 10 s) and labels the rest "_other".
	// It bounds the series each 10 s makes, not the series a reader keeps:
	// with cumulative temporality (the SDK's default) every tenant that was
	// ever among the N busiest keeps its series; use delta temporality to
	// keep the exported tenants to N + 1. With the OpenTelemetry SDK, also
	// raise its per-instrument cardinality limit (2 000 by default) for
	// large fleets. [metrics_tenant_limit]
	MetricsTenantLimit int

	// ReplicaURL turns on replication: every tenant is streamed by a
	// Litestream process (see LitestreamSocket) to <ReplicaURL>/<id>, and a
	// tenant missing here but present there is restored on first access.
	// A Litestream v0.5 replica URL: file:///backups/tenants, or
	// s3://bucket/prefix?region=eu-west-1 (AWS), or
	// s3://bucket/prefix?endpoint=http://host:port (S3-compatible stores):
	// the host is the bucket alone, and region or endpoint is given, so
	// that Litestream and the driver's own S3 requests (erasure, positions)
	// read it alike. Credentials come from the environment,
	// AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY. Default "" (off). [replica_url]
	ReplicaURL string

	// LitestreamSocket is the control socket of the Litestream process
	// (litestream replicate with socket.enabled in its config) that streams
	// open tenants. Required with ReplicaURL. [litestream_socket]
	LitestreamSocket string

	// LitestreamPath is the litestream binary used to restore tenants.
	// Default: "litestream", looked up on PATH when first needed. [litestream_path]
	LitestreamPath string

	// ReplicaCompactor keeps the replicas of closed tenants compact.
	// Litestream compacts a replica only while it streams it, and a tenant
	// is streamed only while it is open here: a tenant opened and evicted
	// again and again leaves a level-0 file per session in its replica, and
	// every file makes its next restore slower. With a compactor, a tenant
	// whose replica holds 8 or more level-0 files not yet compacted is
	// compacted after it is closed, in the background, one tenant at a time
	// (the tenant waits for it if it is opened meanwhile); with Ownership,
	// as it is closed, before its lease is released (up to 5 s). Package
	// github.com/sqliteproxy/sqliteproxy/replica provides Litestream's own
	// compaction (a nested module: the driver does not link Litestream).
	// Without one, run `sqliteproxy compact` from time to time. No DSN key.
	ReplicaCompactor ReplicaCompactor

	// ReplicaRestorer restores tenants from their replicas in this process
	// instead of running `litestream restore` (LitestreamPath) for each:
	// no process to start, which is most of a small tenant's restore.
	// Package github.com/sqliteproxy/sqliteproxy/replica provides
	// Litestream's own (Replica.Restore, which writes the file without
	// opening it with SQLite: safe in this process). No DSN key.
	ReplicaRestorer ReplicaRestorer

	// Ownership makes this proxy one node of a cluster: a tenant is opened
	// here only while this node holds its lease, streams to the replica
	// generation of that lease (<ReplicaURL>/<id>/g<generation>), and is
	// closed when the lease is lost. A statement for a tenant another node
	// owns fails with an *OwnerError (errors.Is ErrNotOwner). Package
	// github.com/sqliteproxy/sqliteproxy/cluster implements it with etcd.
	// Needs ReplicaURL (a tenant moves between nodes through its replica).
	// No DSN key.
	Ownership Ownership
}

// GroupCommitMode turns group commit on or off (Config.GroupCommit).
type GroupCommitMode int8

const (
	GroupCommitOn  GroupCommitMode = iota // batch contended autocommit writes (default)
	GroupCommitOff                        // every write takes the writer on its own
)

// A ReplicaRestorer writes the replica at url (one tenant's, or one
// generation of it), as it was at at (zero: its latest state), into the new
// file dst, written aside, synced and renamed. It fails with an error
// matching ErrTenantNotFound when the replica holds nothing, and one that
// says "timestamp does not exist" for a time outside the replica's.
type ReplicaRestorer interface {
	RestoreReplica(ctx context.Context, url, dst string, at time.Time) error
}

// A ReplicaCompactor compacts the replica of one tenant, at url
// (<ReplicaURL>/<id>), while nothing streams it: the driver calls it for a
// tenant it has closed and holds closed until it returns.
type ReplicaCompactor interface {
	CompactReplica(ctx context.Context, url string) error
}

// dsnKeys lists the DSN keys in the order FormatDSN writes them.
var dsnKeys = []string{
	"dir", "layout", "max_connections", "readers", "idle_timeout", "busy_timeout",
	"synchronous", "stmt_cache_size", "foreign_keys", "explicit_create", "group_commit", "keep_wal",
	"migrations_dir", "migration_mode", "trace_queries", "trace_statements", "metrics_tenant_limit",
	"replica_url", "litestream_socket", "litestream_path",
}

// ParseDSN parses a DSN of the form "dir=./data&max_connections=50" (URL
// query syntax; escape '&', '=', '%' and '+' in values). Unknown keys,
// repeated keys and malformed values are errors. The result is not yet
// validated or defaulted; New and OpenConnector do that.
func ParseDSN(dsn string) (*Config, error) {
	values, err := url.ParseQuery(strings.TrimPrefix(dsn, "?"))
	if err != nil {
		return nil, opError(opParseDSN, "", dsnSyntaxError(strings.TrimPrefix(dsn, "?"), err))
	}
	cfg := &Config{}
	for key, vals := range values {
		if len(vals) != 1 {
			return nil, opError(opParseDSN, "", fmt.Errorf("key %q given %d times", key, len(vals)))
		}
		if err := cfg.setDSNValue(key, vals[0]); err != nil {
			return nil, opError(opParseDSN, "", err)
		}
	}
	return cfg, nil
}

// parseBool parses a DSN flag: what strconv.ParseBool takes (1, t, true,
// 0, f, false, ...), and on, off, yes and no, as SQLite's PRAGMAs and the
// reference table's defaults say them.
func parseBool(v string) (bool, error) {
	switch strings.ToLower(v) {
	case "on", "yes":
		return true, nil
	case "off", "no":
		return false, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, fmt.Errorf("%q is not a flag (true, false, on, off, 1, 0)", v)
	}
	return b, nil
}

// dsnSyntaxError names the key whose text url.ParseQuery could not read
// (err), and how to write what it could not.
func dsnSyntaxError(query string, err error) error {
	for pair := range strings.SplitSeq(query, "&") {
		k, v, _ := strings.Cut(pair, "=")
		if strings.Contains(pair, ";") {
			// url.ParseQuery's "invalid semicolon separator in query" named
			// no key (walk25).
			return fmt.Errorf("key %q: %w (URL query syntax: write ; as %%3B; url.QueryEscape or FormatDSN does)", k, err)
		}
		if _, kerr := url.QueryUnescape(k); kerr != nil {
			return fmt.Errorf("key %q: %w (URL query syntax: write %% as %%25 and + as %%2B; url.QueryEscape or FormatDSN does)", k, kerr)
		}
		if _, verr := url.QueryUnescape(v); verr != nil {
			return fmt.Errorf("key %q: %w (URL query syntax: write %% as %%25 and + as %%2B; url.QueryEscape or FormatDSN does)", k, verr)
		}
	}
	return err
}

func (c *Config) setDSNValue(key, v string) error {
	var err error
	switch key {
	case "dir":
		c.Dir = v
	case "layout":
		c.Layout, err = parseLayout(v)
	case "max_connections":
		c.MaxConnections, err = strconv.Atoi(v)
	case "readers":
		c.ReadersPerTenant, err = strconv.Atoi(v)
	case "idle_timeout":
		c.IdleTimeout, err = time.ParseDuration(v)
	case "busy_timeout":
		c.BusyTimeout, err = time.ParseDuration(v)
		if err == nil && c.BusyTimeout == 0 {
			// Written out, 0 means no wait (SQLite's busy_timeout=0), not
			// the default that a Config's zero value means.
			c.BusyTimeout = -1
		}
	case "synchronous":
		c.Synchronous = v
	case "stmt_cache_size":
		c.StmtCacheSize, err = strconv.Atoi(v)
	case "foreign_keys":
		c.ForeignKeys, err = parseBool(v)
	case "explicit_create":
		c.ExplicitCreate, err = parseBool(v)
	case "group_commit":
		var on bool
		on, err = parseBool(v)
		c.GroupCommit = GroupCommitOn
		if !on {
			c.GroupCommit = GroupCommitOff
		}
	case "keep_wal":
		c.KeepWAL, err = parseBool(v)
	case "migrations_dir":
		c.MigrationsDir = v
	case "migration_mode":
		c.MigrationMode, err = parseMigrationMode(v)
	case "trace_queries":
		c.TraceQueries, err = parseBool(v)
	case "trace_statements":
		c.TraceStatements, err = parseBool(v)
	case "metrics_tenant_limit":
		c.MetricsTenantLimit, err = strconv.Atoi(v)
	case "replica_url":
		c.ReplicaURL = v
	case "litestream_socket":
		c.LitestreamSocket = v
	case "litestream_path":
		c.LitestreamPath = v
	default:
		return fmt.Errorf("unknown key %q (known: %s)", key, strings.Join(dsnKeys, ", "))
	}
	if err != nil {
		return fmt.Errorf("key %q: %w", key, err)
	}
	return nil
}

// FormatDSN returns the DSN for c: ParseDSN(c.FormatDSN()) gives back c
// apart from the fields a DSN cannot carry: Migrations, MigrationsFS, the
// meter and tracer providers, ReplicaCompactor, ReplicaRestorer and
// Ownership (a proxy opened from the DSN alone streams without leases:
// give Ownership through New). Zero fields are omitted.
func (c Config) FormatDSN() string {
	q := make([]string, 0, len(dsnKeys))
	add := func(key, v string) { q = append(q, key+"="+url.QueryEscape(v)) }
	if c.Dir != "" {
		add("dir", c.Dir)
	}
	if c.Layout != LayoutFlat {
		add("layout", c.Layout.String())
	}
	if c.MaxConnections != 0 {
		add("max_connections", strconv.Itoa(c.MaxConnections))
	}
	if c.ReadersPerTenant != 0 {
		add("readers", strconv.Itoa(c.ReadersPerTenant))
	}
	if c.IdleTimeout != 0 {
		add("idle_timeout", c.IdleTimeout.String())
	}
	if c.BusyTimeout != 0 {
		add("busy_timeout", c.BusyTimeout.String())
	}
	if c.Synchronous != "" {
		add("synchronous", c.Synchronous)
	}
	if c.StmtCacheSize != 0 {
		add("stmt_cache_size", strconv.Itoa(c.StmtCacheSize))
	}
	if c.ForeignKeys {
		add("foreign_keys", "true")
	}
	if c.ExplicitCreate {
		add("explicit_create", "true")
	}
	if c.GroupCommit == GroupCommitOff {
		add("group_commit", "false")
	}
	if c.KeepWAL {
		add("keep_wal", "true")
	}
	if c.MigrationsDir != "" {
		add("migrations_dir", c.MigrationsDir)
	}
	if c.MigrationMode != MigrateAuto {
		add("migration_mode", c.MigrationMode.String())
	}
	if c.TraceQueries {
		add("trace_queries", "true")
	}
	if c.TraceStatements {
		add("trace_statements", "true")
	}
	if c.MetricsTenantLimit != 0 {
		add("metrics_tenant_limit", strconv.Itoa(c.MetricsTenantLimit))
	}
	if c.ReplicaURL != "" {
		add("replica_url", c.ReplicaURL)
	}
	if c.LitestreamSocket != "" {
		add("litestream_socket", c.LitestreamSocket)
	}
	if c.LitestreamPath != "" {
		add("litestream_path", c.LitestreamPath)
	}
	return strings.Join(q, "&")
}

// Clone returns a deep copy of c.
func (c *Config) Clone() *Config {
	cp := *c
	cp.Migrations = slices.Clone(c.Migrations)
	return &cp
}

// resolved returns a validated copy of c with defaults filled in and Dir
// made absolute. The caller's Config is never modified.
func (c *Config) resolved() (*Config, error) {
	r := c.Clone()
	if r.Dir == "" {
		return nil, errors.New("Config.Dir is required")
	}
	dir, err := filepath.Abs(r.Dir)
	if err != nil {
		return nil, fmt.Errorf("Config.Dir: %w", err)
	}
	r.Dir = dir
	switch {
	case r.MaxConnections < 0:
		return nil, fmt.Errorf("Config.MaxConnections (DSN max_connections): %d is negative", r.MaxConnections)
	case r.MaxConnections == 0:
		r.MaxConnections = DefaultMaxConnections
	}
	switch {
	case r.ReadersPerTenant < 0:
		r.ReadersPerTenant = 0
	case r.ReadersPerTenant == 0:
		r.ReadersPerTenant = DefaultReadersPerTenant
	}
	if r.IdleTimeout == 0 {
		r.IdleTimeout = DefaultIdleTimeout
	}
	switch {
	case r.BusyTimeout < 0:
		r.BusyTimeout = 0
	case r.BusyTimeout == 0:
		r.BusyTimeout = DefaultBusyTimeout
	case r.BusyTimeout > maxBusyTimeout:
		// SQLite reads PRAGMA busy_timeout as a 32-bit count of
		// milliseconds and takes anything larger for 0: "wait as long as
		// it takes" became "fail at once".
		r.BusyTimeout = maxBusyTimeout
	case r.BusyTimeout%time.Millisecond != 0:
		// SQLite counts whole milliseconds: 500µs would have become 0,
		// fail at once.
		r.BusyTimeout = r.BusyTimeout.Truncate(time.Millisecond) + time.Millisecond
	}
	if r.Synchronous == "" {
		r.Synchronous = DefaultSynchronous
	}
	r.Synchronous = strings.ToUpper(r.Synchronous)
	switch r.Synchronous {
	case "OFF", "NORMAL", "FULL", "EXTRA":
	default:
		return nil, fmt.Errorf("Config.Synchronous (DSN synchronous): %q is not OFF, NORMAL, FULL or EXTRA", c.Synchronous)
	}
	switch {
	case r.StmtCacheSize < 0:
		r.StmtCacheSize = 0
	case r.StmtCacheSize == 0:
		r.StmtCacheSize = DefaultStmtCacheSize
	case r.StmtCacheSize > maxStmtCacheSize:
		// mattn allocates the cache's capacity with every connection.
		return nil, fmt.Errorf("Config.StmtCacheSize (DSN stmt_cache_size): %d is more than %d statements per connection", c.StmtCacheSize, maxStmtCacheSize)
	}
	set := 0
	for _, ok := range []bool{len(r.Migrations) > 0, r.MigrationsFS != nil, r.MigrationsDir != ""} {
		if ok {
			set++
		}
	}
	if set > 1 {
		return nil, errors.New("set at most one of Config.Migrations, Config.MigrationsFS and Config.MigrationsDir")
	}
	if r.ReplicaURL != "" {
		if _, err := tenantReplicaURL(r.ReplicaURL, "x"); err != nil {
			return nil, fmt.Errorf("Config.ReplicaURL: %w", err)
		}
		if err := replicaApartFromDir(r.ReplicaURL, r.Dir); err != nil {
			return nil, fmt.Errorf("Config.ReplicaURL: %w", err)
		}
		if r.LitestreamSocket == "" {
			return nil, errors.New("Config.ReplicaURL needs Config.LitestreamSocket, the control socket of the Litestream process")
		}
	} else if r.LitestreamSocket != "" {
		// A deployment that set the socket and lost the URL (an unset
		// environment variable) would believe its tenants streamed.
		return nil, errors.New("Config.LitestreamSocket needs Config.ReplicaURL: without it nothing is streamed")
	} else if r.ReplicaCompactor != nil {
		return nil, errors.New("Config.ReplicaCompactor needs Config.ReplicaURL")
	} else if r.ReplicaRestorer != nil {
		return nil, errors.New("Config.ReplicaRestorer needs Config.ReplicaURL")
	} else if r.Ownership != nil {
		return nil, errors.New("Config.Ownership needs Config.ReplicaURL: tenants move between nodes through their replicas")
	} else if r.LitestreamPath != "" && r.LitestreamPath != DefaultLitestreamPath {
		// Like the socket: a binary named for restores that never run.
		return nil, fmt.Errorf("Config.LitestreamPath (DSN litestream_path) %q needs Config.ReplicaURL: it restores tenants from their replicas", r.LitestreamPath)
	}
	if r.LitestreamPath == "" {
		r.LitestreamPath = DefaultLitestreamPath
	}
	if r.GroupCommit != GroupCommitOn && r.GroupCommit != GroupCommitOff {
		return nil, fmt.Errorf("Config.GroupCommit: unknown mode %d", r.GroupCommit)
	}
	if r.Layout != LayoutFlat && r.Layout != LayoutBuckets {
		return nil, fmt.Errorf("Config.Layout: unknown layout %d", r.Layout)
	}
	switch r.MigrationMode {
	case MigrateAuto, MigrateCheck, MigrateManual:
	default:
		return nil, fmt.Errorf("Config.MigrationMode: unknown mode %d", r.MigrationMode)
	}
	for i, m := range r.Migrations {
		if strings.TrimSpace(m) == "" {
			return nil, fmt.Errorf("Config.Migrations[%d] is empty", i)
		}
	}
	return r, nil
}
