package sqliteproxy

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mattn/go-sqlite3"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
)

// Instrumentation scope and attribute keys (OpenTelemetry semantic
// conventions where one exists).
const (
	scopeName       = "github.com/sqliteproxy/sqliteproxy"
	attrSystem      = "db.system.name"
	attrOperation   = "db.operation.name"
	attrQueryText   = "db.query.text"
	attrTenant      = "sqliteproxy.tenant"
	attrErrorType   = "error.type"
	attrReason      = "sqliteproxy.eviction.reason"
	attrRole        = "sqliteproxy.connection.role"
	attrState       = "sqliteproxy.connection.state"
	attrMigration   = "sqliteproxy.migration.name"
	attrOutcome     = "sqliteproxy.restore.outcome"
	attrEvent       = "sqliteproxy.ownership.event"
	otherTenants    = "_other" // the tenant attribute of tenants beyond MetricsTenantLimit
	topNEvery       = 10 * time.Second
	durationUnit    = "s"
	connectionsUnit = "{connection}"
)

// Attributes and spans of a fan-out query (WithFanOut): one span from
// QueryContext to the rows' Close, and one per tenant read.
const (
	attrFanOutTenants     = "sqliteproxy.fanout.tenants"
	attrFanOutConcurrency = "sqliteproxy.fanout.concurrency"
	spanFanOut            = "sqliteproxy.fanout"
	spanFanOutTenant      = "sqliteproxy.fanout.tenant"
)

// Attribute values: connection roles (attrRole, also what a wait was for)
// and states (attrState). Eviction reasons are evictReason (budget.go).
const (
	roleWriter = "writer"
	roleReader = "reader"
	roleSlot   = "slot" // a wait for room in the connection budget
	stateOpen  = "open"
	// restore outcomes (attrOutcome)
	outcomeRestored = "restored"       // a tenant missing here came from the replica
	outcomeReplaced = "replaced_stale" // a local copy behind the replica was replaced
	outcomeNotFound = "not_found"      // the replica had nothing
	outcomeFailed   = "failed"
	stateInUse      = "in_use"
)

// Span names.
const (
	spanTenantOpen  = "sqliteproxy.tenant.open"
	spanTenantEvict = "sqliteproxy.tenant.evict"
	spanMigrate     = "sqliteproxy.migrate"
	spanRollback    = "sqliteproxy.rollback" // one down migration
	spanWait        = "sqliteproxy.wait"
)

// stmtOp is a statement-level operation whose duration is recorded.
type stmtOp int

const (
	stmtExec stmtOp = iota
	stmtQuery
	stmtBegin
	stmtCommit
	stmtRollback
	stmtPrepare
	numStmtOps
)

var stmtOpNames = [numStmtOps]string{"exec", "query", "begin", "commit", "rollback", "prepare"}

var systemAttr = attribute.String(attrSystem, "sqlite")

// telemetry records what the router, tenants and routing conns tell it
// through its methods (the hooks): it never reads their state. Without a
// MeterProvider in Config, on is false and the hot path pays one branch;
// without a TracerProvider, tracing is false.
type telemetry struct {
	on, tracing     bool
	traceQueries    bool
	traceStatements bool
	tenantLimit     int // 0: tenant attribute on every tenant; < 0: never; N: the N busiest

	tracer            trace.Tracer
	opDuration        metric.Float64Histogram
	waitDuration      metric.Float64Histogram
	openDuration      metric.Float64Histogram
	evictions         metric.Int64Counter
	unwatched         metric.Int64Counter
	migrationsApplied metric.Int64Counter
	migrationDuration metric.Float64Histogram
	migrationFailures metric.Int64Counter
	syncDuration      metric.Float64Histogram
	restoreDuration   metric.Float64Histogram
	compactDuration   metric.Float64Histogram
	ownershipChanges  metric.Int64Counter
	restores          metric.Int64Counter
	registration      metric.Registration

	shared *tenantAttrs // for tenants without their own attribute, and for none

	mu  sync.Mutex // guards top
	top map[*tenantTel]bool
}

// tenantTel is what telemetry keeps about one tenant: its metric
// attributes (its own, or shared when MetricsTenantLimit says so), its span
// attributes (always its own) and its operations since the last ranking.
type tenantTel struct {
	id    string
	attrs atomic.Pointer[tenantAttrs]
	span  trace.SpanStartOption
	ops   atomic.Int64 // counted only when MetricsTenantLimit > 0
}

// newTenant returns the telemetry state of a new tenant object.
func (tel *telemetry) newTenant(id string) *tenantTel {
	tt := &tenantTel{id: id, span: noTenantSpan}
	if tel.tracing {
		// Spans are not aggregated: they always name the tenant, whatever
		// MetricsTenantLimit does to metric attributes.
		tt.span = trace.WithAttributes(systemAttr, attribute.String(attrTenant, id))
	}
	if tel.on && tel.tenantLimit == 0 {
		tt.attrs.Store(newTenantAttrs(id, true))
	} else {
		tt.attrs.Store(tel.shared)
	}
	return tt
}

// attrsOf returns the metric attributes of tt (nil: no tenant).
func (tel *telemetry) attrsOf(tt *tenantTel) *tenantAttrs {
	if tt == nil {
		return tel.shared
	}
	return tt.attrs.Load()
}

// spanOf returns the span attributes of tt (nil: no tenant).
func spanOf(tt *tenantTel) trace.SpanStartOption {
	if tt == nil {
		return noTenantSpan
	}
	return tt.span
}

// tenantAttrs are the attribute sets of one tenant (or of "no tenant" /
// "_other"), built once so recording allocates nothing.
type tenantAttrs struct {
	ops [numStmtOps][]metric.RecordOption
	set attribute.Set
	opt []metric.RecordOption
	kv  attribute.KeyValue // the tenant attribute; empty Key when none
}

func newTenantAttrs(tenant string, withTenant bool) *tenantAttrs {
	a := &tenantAttrs{}
	base := []attribute.KeyValue{systemAttr}
	if withTenant {
		a.kv = attribute.String(attrTenant, tenant)
		base = append(base, a.kv)
	}
	a.set = attribute.NewSet(base...)
	a.opt = []metric.RecordOption{metric.WithAttributeSet(a.set)}
	for i := range numStmtOps {
		a.ops[i] = []metric.RecordOption{metric.WithAttributeSet(attribute.NewSet(append(slices.Clone(base), attribute.String(attrOperation, stmtOpNames[i]))...))}
	}
	return a
}

// noTenantSpan is the span attributes of work that involves no tenant.
var noTenantSpan trace.SpanStartOption = trace.WithAttributes(systemAttr)

// newTelemetry builds the instruments of cfg's providers; nil providers
// mean off (pass otel.GetMeterProvider() to use the global one). stats is
// read by the gauges' callback at each collection.
func newTelemetry(cfg *Config, stats func() Stats) (*telemetry, error) {
	tel := &telemetry{
		traceQueries:    cfg.TraceQueries,
		traceStatements: cfg.TraceStatements,
		tenantLimit:     cfg.MetricsTenantLimit,
		top:             map[*tenantTel]bool{},
	}
	tel.shared = newTenantAttrs(otherTenants, cfg.MetricsTenantLimit > 0)
	if tp := cfg.TracerProvider; tp != nil {
		tel.tracing = true
		tel.tracer = tp.Tracer(scopeName)
	}
	mp := cfg.MeterProvider
	tel.on = mp != nil
	if !tel.on {
		return tel, nil
	}
	m := mp.Meter(scopeName)
	var err error
	hist := func(name, desc string) metric.Float64Histogram {
		h, e := m.Float64Histogram(name, metric.WithDescription(desc), metric.WithUnit(durationUnit),
			metric.WithExplicitBucketBoundaries(0.00001, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
		err = errors.Join(err, e)
		return h
	}
	counter := func(name, unit, desc string) metric.Int64Counter {
		c, e := m.Int64Counter(name, metric.WithDescription(desc), metric.WithUnit(unit))
		err = errors.Join(err, e)
		return c
	}
	tel.opDuration = hist("sqliteproxy.operation.duration", "Duration of exec, query, begin, commit, rollback and prepare operations.")
	tel.waitDuration = hist("sqliteproxy.connection.wait.duration", "Time spent waiting for a tenant's writer, a reader or a connection slot.")
	tel.openDuration = hist("sqliteproxy.tenant.open.duration", "Duration of opening a tenant connection (a cold open), migrations included.")
	tel.evictions = counter("sqliteproxy.tenant.evictions", "{eviction}", "Tenants whose connections were closed, by reason ("+strings.Join(evictReasonNames[:], ", ")+").")
	tel.migrationsApplied = counter("sqliteproxy.migrations.applied", "{migration}", "Migrations applied to tenants.")
	tel.migrationDuration = hist("sqliteproxy.migration.duration", "Duration of applying one migration to one tenant.")
	tel.migrationFailures = counter("sqliteproxy.migration.failures", "{failure}", "Tenant migrations that failed.")
	tel.syncDuration = hist("sqliteproxy.replication.sync.duration", "Duration of syncing a tenant to its replica (SyncTenant, closing a tenant); failures carry error.type.")
	tel.restoreDuration = hist("sqliteproxy.replication.restore.duration", "Duration of restoring a tenant from its replica, by outcome.")
	tel.compactDuration = hist("sqliteproxy.replication.compaction.duration", "Duration of compacting the replica of a closed tenant (Config.ReplicaCompactor); failures carry error.type.")
	tel.ownershipChanges = counter("sqliteproxy.ownership.changes", "{change}", "Tenant leases this node acquired, released or lost (Config.Ownership), by event.")
	tel.unwatched = counter("sqliteproxy.tenant.unwatched", "{open}", "Tenant opens whose file could not be watched for a deletion or replacement while open (Linux: inotify's limits reached); see Stats.Unwatched.")
	tel.restores = counter("sqliteproxy.replication.restores", "{restore}", "Restores from the replica by outcome (restored, replaced_stale, not_found, failed).")
	lag, e4 := m.Float64ObservableGauge("sqliteproxy.replication.lag", metric.WithUnit(durationUnit),
		metric.WithDescription("How long the replica has been seen behind a tenant (open tenants; 0: caught up); without a tenant attribute, the largest."))
	open, e1 := m.Int64ObservableGauge("sqliteproxy.connection.count", metric.WithUnit(connectionsUnit),
		metric.WithDescription("SQLite connections open (state=open) and leased (state=in_use), in all and per tenant."))
	limit, e2 := m.Int64ObservableGauge("sqliteproxy.connection.limit", metric.WithUnit(connectionsUnit),
		metric.WithDescription("The connection budget (MaxConnections)."))
	tenants, e3 := m.Int64ObservableGauge("sqliteproxy.tenant.open", metric.WithUnit("{tenant}"),
		metric.WithDescription("Tenants with at least one open connection."))
	if err = errors.Join(err, e1, e2, e3, e4); err != nil {
		return nil, err
	}
	replicated := cfg.ReplicaURL != ""
	stOpen := attribute.NewSet(systemAttr, attribute.String(attrState, stateOpen))
	stUsed := attribute.NewSet(systemAttr, attribute.String(attrState, stateInUse))
	sys := attribute.NewSet(systemAttr)
	tel.registration, err = m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		st := stats()
		var used int
		for _, ts := range st.Tenants {
			used += ts.InUse
		}
		o.ObserveInt64(open, int64(st.OpenConnections), metric.WithAttributeSet(stOpen))
		o.ObserveInt64(open, int64(used), metric.WithAttributeSet(stUsed))
		o.ObserveInt64(limit, int64(st.MaxConnections), metric.WithAttributeSet(sys))
		o.ObserveInt64(tenants, int64(st.OpenTenants), metric.WithAttributeSet(sys))
		own := tel.ownAttrs()
		var maxLag time.Duration
		for _, ts := range st.Tenants {
			maxLag = max(maxLag, ts.ReplicaLag)
		}
		if replicated {
			o.ObserveFloat64(lag, maxLag.Seconds(), metric.WithAttributeSet(sys))
		}
		for _, ts := range st.Tenants {
			if !own(ts.ID) {
				continue // no tenant attribute for this one: the totals above cover it
			}
			kv := attribute.String(attrTenant, ts.ID)
			if replicated {
				o.ObserveFloat64(lag, ts.ReplicaLag.Seconds(), metric.WithAttributes(systemAttr, kv))
			}
			o.ObserveInt64(open, int64(ts.Open), metric.WithAttributes(systemAttr, kv, attribute.String(attrState, stateOpen)))
			o.ObserveInt64(open, int64(ts.InUse), metric.WithAttributes(systemAttr, kv, attribute.String(attrState, stateInUse)))
		}
		return nil
	}, open, limit, tenants, lag)
	return tel, err
}

// ownAttrs returns whether a tenant's metrics carry its own tenant
// attribute: always with MetricsTenantLimit 0, never below, and for the
// ranked busiest tenants above.
func (tel *telemetry) ownAttrs() func(id string) bool {
	switch {
	case tel.tenantLimit == 0:
		return func(string) bool { return true }
	case tel.tenantLimit < 0:
		return func(string) bool { return false }
	}
	tel.mu.Lock()
	top := make(map[string]bool, len(tel.top))
	for tt := range tel.top {
		top[tt.id] = true
	}
	tel.mu.Unlock()
	return func(id string) bool { return top[id] }
}

func (tel *telemetry) close() {
	if tel.registration != nil {
		tel.registration.Unregister()
	}
}

// opStart returns the start time of an operation, or zero when nothing is recorded.
func (tel *telemetry) opStart() time.Time {
	if !tel.on && !tel.traceQueries {
		return time.Time{}
	}
	return time.Now()
}

// opEnd records an operation that started at start on tenant tt (nil: none).
func (tel *telemetry) opEnd(ctx context.Context, tt *tenantTel, o stmtOp, start time.Time, query string, err error) {
	if start.IsZero() {
		return
	}
	d := time.Since(start) // monotonic clock only
	a := tel.attrsOf(tt)
	if tt != nil && tel.tenantLimit > 0 {
		tt.ops.Add(1)
	}
	if tel.on {
		if err == nil {
			tel.opDuration.Record(ctx, d.Seconds(), a.ops[o]...)
		} else {
			kvs := append(a.set.ToSlice(), attribute.String(attrOperation, stmtOpNames[o]), attribute.String(attrErrorType, errorType(err)))
			tel.opDuration.Record(ctx, d.Seconds(), metric.WithAttributes(kvs...))
		}
	}
	if tel.traceQueries && tel.tracing {
		opts := []trace.SpanStartOption{trace.WithTimestamp(start), trace.WithSpanKind(trace.SpanKindClient), spanOf(tt),
			trace.WithAttributes(attribute.String(attrOperation, stmtOpNames[o]))}
		if tel.traceStatements && query != "" {
			opts = append(opts, trace.WithAttributes(attribute.String(attrQueryText, query)))
		}
		_, span := tel.tracer.Start(ctx, "sqliteproxy."+stmtOpNames[o], opts...)
		tel.endSpan(span, err, start.Add(d))
	}
}

// endSpan ends span with err. An error's text goes on the span (its status
// and an exception event) only with TraceStatements: SQLite's messages and
// some of the proxy's quote the statement ("near \"'SSN-123'\": syntax
// error"), which TraceStatements off keeps out of traces; the span then
// says only its error.type.
func (tel *telemetry) endSpan(span trace.Span, err error, at time.Time) {
	if err != nil {
		kind := errorType(err)
		if tel.traceStatements {
			span.RecordError(err)
			span.SetStatus(codes.Error, err.Error())
		} else {
			span.SetStatus(codes.Error, kind)
		}
		span.SetAttributes(attribute.String(attrErrorType, kind))
	}
	span.End(trace.WithTimestamp(at))
}

// errorType is a low-cardinality name for err.
func errorType(err error) string {
	var se sqlite3.Error
	switch {
	case errors.Is(err, context.Canceled):
		return "context_canceled"
	case errors.Is(err, context.DeadlineExceeded):
		return "deadline_exceeded"
	case errors.Is(err, ErrNoTenant):
		return "no_tenant"
	case errors.Is(err, ErrInvalidTenant):
		return "invalid_tenant"
	case errors.Is(err, ErrTenantNotFound):
		return "tenant_not_found"
	case errors.Is(err, ErrTenantMismatch):
		return "tenant_mismatch"
	case errors.Is(err, ErrMigrationDrift):
		return "migration_drift"
	case errors.Is(err, ErrPendingMigrations):
		return "pending_migrations"
	case errors.Is(err, ErrClosed):
		return "closed"
	case errors.Is(err, ErrFanOutWrite):
		return "fan_out_write"
	case errors.As(err, &se):
		if int(se.Code) < len(sqliteCodeNames) && sqliteCodeNames[se.Code] != "" {
			return "sqlite_" + sqliteCodeNames[se.Code]
		}
		return "sqlite_" + strconv.Itoa(int(se.Code))
	}
	return "_OTHER"
}

// sqliteCodeNames names SQLite's primary result codes as its C constants
// do, lower case (SQLITE_BUSY: "busy"): error.type is a metric attribute,
// so it takes one short stable word per code, not the English message
// sqlite3_errstr gives for it.
var sqliteCodeNames = [...]string{
	1: "error", 2: "internal", 3: "perm", 4: "abort", 5: "busy", 6: "locked", 7: "nomem",
	8: "readonly", 9: "interrupt", 10: "ioerr", 11: "corrupt", 12: "notfound", 13: "full",
	14: "cantopen", 15: "protocol", 16: "empty", 17: "schema", 18: "toobig", 19: "constraint",
	20: "mismatch", 21: "misuse", 22: "nolfs", 23: "auth", 24: "format", 25: "range",
	26: "notadb", 27: "notice", 28: "warning",
}

// span starts an internal span (tenant open, migrate, evict, wait) when
// tracing; the returned function ends it.
func (tel *telemetry) span(ctx context.Context, name string, tt *tenantTel, kvs ...attribute.KeyValue) (context.Context, func(error)) {
	if !tel.tracing {
		return ctx, func(error) {}
	}
	ctx, s := tel.tracer.Start(ctx, name, trace.WithAttributes(kvs...), spanOf(tt))
	return ctx, func(err error) { tel.endSpan(s, err, time.Now()) }
}

// waited records a wait for a connection that started at start.
func (tel *telemetry) waited(ctx context.Context, tt *tenantTel, role string, start time.Time, err error) {
	tel.record(ctx, tel.waitDuration, tt, start, err, attribute.String(attrRole, role))
	if tel.tracing {
		_, s := tel.tracer.Start(ctx, spanWait, trace.WithTimestamp(start), spanOf(tt),
			trace.WithAttributes(attribute.String(attrRole, role)))
		tel.endSpan(s, err, time.Now())
	}
}

// opened records a cold open of one of t's connections.
func (tel *telemetry) opened(ctx context.Context, tt *tenantTel, role string, start time.Time, err error) {
	tel.record(ctx, tel.openDuration, tt, start, err, attribute.String(attrRole, role))
}

// evicted counts the closing of tt's connections.
func (tel *telemetry) evicted(tt *tenantTel, reason evictReason) {
	if !tel.on {
		return
	}
	kvs := append(tel.attrsOf(tt).set.ToSlice(), attribute.String(attrReason, reason.String()))
	tel.evictions.Add(context.Background(), 1, metric.WithAttributes(kvs...))
}

// unwatchedOpen records an open of tt whose file could not be watched.
func (tel *telemetry) unwatchedOpen(tt *tenantTel) {
	if !tel.on {
		return
	}
	tel.unwatched.Add(context.Background(), 1, metric.WithAttributeSet(tel.attrsOf(tt).set))
}

// synced records a sync of tt to its replica that started at start.
func (tel *telemetry) synced(ctx context.Context, tt *tenantTel, start time.Time, err error) {
	tel.record(ctx, tel.syncDuration, tt, start, err)
}

// compacted records a compaction of tt's replica that started at start.
func (tel *telemetry) compacted(ctx context.Context, tt *tenantTel, start time.Time, err error) {
	tel.record(ctx, tel.compactDuration, tt, start, err)
}

// ownership records a change of this node's ownership of tt: acquired,
// released or lost.
func (tel *telemetry) ownership(tt *tenantTel, event string) {
	if !tel.on {
		return
	}
	kvs := append(tel.attrsOf(tt).set.ToSlice(), attribute.String(attrEvent, event))
	tel.ownershipChanges.Add(context.Background(), 1, metric.WithAttributes(kvs...))
}

// restoredFromReplica records a restore of tt from its replica, by outcome.
func (tel *telemetry) restoredFromReplica(ctx context.Context, tt *tenantTel, outcome string, start time.Time) {
	if !tel.on {
		return
	}
	kvs := append(tel.attrsOf(tt).set.ToSlice(), attribute.String(attrOutcome, outcome))
	tel.restores.Add(ctx, 1, metric.WithAttributes(kvs...))
	tel.restoreDuration.Record(ctx, time.Since(start).Seconds(), metric.WithAttributes(kvs...))
}

// record records the time since start in h with tt's attributes, extra
// and, on failure, the error type.
func (tel *telemetry) record(ctx context.Context, h metric.Float64Histogram, tt *tenantTel, start time.Time, err error, extra ...attribute.KeyValue) {
	if !tel.on {
		return
	}
	kvs := append(tel.attrsOf(tt).set.ToSlice(), extra...)
	if err != nil {
		kvs = append(kvs, attribute.String(attrErrorType, errorType(err)))
	}
	h.Record(ctx, time.Since(start).Seconds(), metric.WithAttributes(kvs...))
}

// migrated records one migration applied to tt in d (or failed).
func (tel *telemetry) migrated(ctx context.Context, tt *tenantTel, name string, d time.Duration, err error) {
	if !tel.on {
		return
	}
	kvs := append(tel.attrsOf(tt).set.ToSlice(), attribute.String(attrMigration, name))
	if err != nil {
		tel.migrationFailures.Add(ctx, 1, metric.WithAttributes(append(kvs, attribute.String(attrErrorType, errorType(err)))...))
		return
	}
	tel.migrationsApplied.Add(ctx, 1, metric.WithAttributes(kvs...))
	tel.migrationDuration.Record(ctx, d.Seconds(), metric.WithAttributes(kvs...))
}

// ranks reports whether rank has anything to do.
func (tel *telemetry) ranks() bool { return tel.on && tel.tenantLimit > 0 }

// rank gives the tenant attribute to the MetricsTenantLimit busiest of the
// open tenants (by operations since the last ranking) and "_other" to the
// rest. The router calls it every topNEvery with the open tenants.
func (tel *telemetry) rank(open []*tenantTel) {
	if !tel.ranks() {
		return
	}
	type busy struct {
		tt *tenantTel
		n  int64
	}
	all := make([]busy, 0, len(open))
	for _, tt := range open {
		all = append(all, busy{tt, tt.ops.Swap(0)})
	}
	slices.SortFunc(all, func(a, b busy) int { return int(b.n - a.n) })
	tel.mu.Lock()
	defer tel.mu.Unlock()
	next := map[*tenantTel]bool{}
	for i, b := range all {
		if i >= tel.tenantLimit || b.n == 0 {
			break
		}
		next[b.tt] = true
		if !tel.top[b.tt] {
			b.tt.attrs.Store(newTenantAttrs(b.tt.id, true))
		}
	}
	for tt := range tel.top {
		if !next[tt] {
			tt.attrs.Store(tel.shared)
		}
	}
	tel.top = next
}
