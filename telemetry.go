package sqliteproxy

import (
	"context"
	"errors"
	"reflect"
	"slices"
	"sync"
	"time"

	"github.com/mattn/go-sqlite3"
	"go.opentelemetry.io/otel"
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
	otherTenants    = "_other" // the tenant attribute of tenants beyond MetricsTenantLimit
	topNEvery       = 10 * time.Second
	durationUnit    = "s"
	connectionsUnit = "{connection}"
)

// op is an operation whose duration is recorded.
type op int

const (
	opExec op = iota
	opQuery
	opBegin
	opCommit
	opRollback
	opPrepare
	numOps
)

var opNames = [numOps]string{"exec", "query", "begin", "commit", "rollback", "prepare"}

var systemAttr = attribute.String(attrSystem, "sqlite")

// telemetry holds the instruments. When no meter provider is configured
// (nil in Config and no global one set), on is false and the hot path pays
// one branch; when no tracer provider is, tracing is false.
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
	migrationsApplied metric.Int64Counter
	migrationDuration metric.Float64Histogram
	migrationFailures metric.Int64Counter
	registration      metric.Registration

	shared *tenantAttrs // for tenants without their own attribute, and for none

	mu  sync.Mutex // guards top
	top map[*tenant]bool
}

// tenantAttrs are the attribute sets of one tenant (or of "no tenant" /
// "_other"), built once so recording allocates nothing.
type tenantAttrs struct {
	ops [numOps][]metric.RecordOption
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
	for i := range numOps {
		a.ops[i] = []metric.RecordOption{metric.WithAttributeSet(attribute.NewSet(append(slices.Clone(base), attribute.String(attrOperation, opNames[i]))...))}
	}
	return a
}

// noTenantSpan is the span attributes of work that involves no tenant.
var noTenantSpan trace.SpanStartOption = trace.WithAttributes(systemAttr)

// spanAttrs returns the span attributes of tenant id. Spans are not
// aggregated, so they always name the tenant, whatever MetricsTenantLimit
// does to metric attributes.
func (tel *telemetry) spanAttrs(id string) trace.SpanStartOption {
	if !tel.tracing {
		return noTenantSpan
	}
	return trace.WithAttributes(systemAttr, attribute.String(attrTenant, id))
}

// isDefault reports whether p is OpenTelemetry's global placeholder (no
// provider set) or a no-op provider.
func isDefault(p any) bool {
	if p == nil {
		return true
	}
	t := reflect.TypeOf(p)
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	pkg := t.PkgPath()
	return pkg == "go.opentelemetry.io/otel/internal/global" || pkg == "go.opentelemetry.io/otel/metric/noop" ||
		pkg == "go.opentelemetry.io/otel/trace/noop" || pkg == "go.opentelemetry.io/otel/metric/embedded"
}

func newTelemetry(cfg *Config, r *router) (*telemetry, error) {
	tel := &telemetry{
		traceQueries:    cfg.TraceQueries,
		traceStatements: cfg.TraceStatements,
		tenantLimit:     cfg.MetricsTenantLimit,
		top:             map[*tenant]bool{},
	}
	tel.shared = newTenantAttrs(otherTenants, cfg.MetricsTenantLimit > 0)
	tp := cfg.TracerProvider
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	tel.tracing = !isDefault(tp)
	tel.tracer = tp.Tracer(scopeName)

	mp := cfg.MeterProvider
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	tel.on = !isDefault(mp)
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
	counter := func(name, desc string) metric.Int64Counter {
		c, e := m.Int64Counter(name, metric.WithDescription(desc))
		err = errors.Join(err, e)
		return c
	}
	tel.opDuration = hist("sqliteproxy.operation.duration", "Duration of exec, query, begin, commit, rollback and prepare operations.")
	tel.waitDuration = hist("sqliteproxy.connection.wait.duration", "Time spent waiting for a tenant's writer, a reader or a connection slot.")
	tel.openDuration = hist("sqliteproxy.tenant.open.duration", "Duration of opening a tenant connection (a cold open), migrations included.")
	tel.evictions = counter("sqliteproxy.tenant.evictions", "Tenants whose connections were closed, by reason (budget, idle, delete, restore, close).")
	tel.migrationsApplied = counter("sqliteproxy.migrations.applied", "Migrations applied to tenants.")
	tel.migrationDuration = hist("sqliteproxy.migration.duration", "Duration of applying one migration to one tenant.")
	tel.migrationFailures = counter("sqliteproxy.migration.failures", "Tenant migrations that failed.")
	open, e1 := m.Int64ObservableGauge("sqliteproxy.connection.count", metric.WithUnit(connectionsUnit),
		metric.WithDescription("SQLite connections open (state=open) and leased (state=in_use), in all and per tenant."))
	limit, e2 := m.Int64ObservableGauge("sqliteproxy.connection.limit", metric.WithUnit(connectionsUnit),
		metric.WithDescription("The connection budget (MaxConnections)."))
	tenants, e3 := m.Int64ObservableGauge("sqliteproxy.tenant.open", metric.WithUnit("{tenant}"),
		metric.WithDescription("Tenants with at least one open connection."))
	if err = errors.Join(err, e1, e2, e3); err != nil {
		return nil, err
	}
	stOpen := attribute.NewSet(systemAttr, attribute.String(attrState, "open"))
	stUsed := attribute.NewSet(systemAttr, attribute.String(attrState, "in_use"))
	sys := attribute.NewSet(systemAttr)
	tel.registration, err = m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		st := r.stats()
		var used int
		for _, ts := range st.Tenants {
			used += ts.InUse
		}
		o.ObserveInt64(open, int64(st.OpenConnections), metric.WithAttributeSet(stOpen))
		o.ObserveInt64(open, int64(used), metric.WithAttributeSet(stUsed))
		o.ObserveInt64(limit, int64(st.MaxConnections), metric.WithAttributeSet(sys))
		o.ObserveInt64(tenants, int64(st.OpenTenants), metric.WithAttributeSet(sys))
		for _, ts := range st.Tenants {
			a := ts.attrs
			if !a.kv.Valid() {
				continue // no tenant attribute for this one: the totals above cover it
			}
			o.ObserveInt64(open, int64(ts.Open), metric.WithAttributes(systemAttr, a.kv, attribute.String(attrState, "open")))
			o.ObserveInt64(open, int64(ts.InUse), metric.WithAttributes(systemAttr, a.kv, attribute.String(attrState, "in_use")))
		}
		return nil
	}, open, limit, tenants)
	return tel, err
}

// attrsFor returns the attributes a new tenant starts with.
func (tel *telemetry) attrsFor(id string) *tenantAttrs {
	if !tel.on || tel.tenantLimit != 0 {
		return tel.shared
	}
	return newTenantAttrs(id, true)
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

// opEnd records an operation that started at start on tenant t (nil: none).
func (tel *telemetry) opEnd(ctx context.Context, t *tenant, o op, start time.Time, query string, err error) {
	if start.IsZero() {
		return
	}
	d := time.Since(start) // monotonic clock only
	a, spanAttrs := tel.shared, noTenantSpan
	if t != nil {
		spanAttrs = t.spanAttrs
		a = t.attrs.Load()
		if tel.tenantLimit > 0 {
			t.ops.Add(1)
		}
	}
	if tel.on {
		if err == nil {
			tel.opDuration.Record(ctx, d.Seconds(), a.ops[o]...)
		} else {
			kvs := append(a.set.ToSlice(), attribute.String(attrOperation, opNames[o]), attribute.String(attrErrorType, errorType(err)))
			tel.opDuration.Record(ctx, d.Seconds(), metric.WithAttributes(kvs...))
		}
	}
	if tel.traceQueries && tel.tracing {
		opts := []trace.SpanStartOption{trace.WithTimestamp(start), trace.WithSpanKind(trace.SpanKindClient), spanAttrs,
			trace.WithAttributes(attribute.String(attrOperation, opNames[o]))}
		if tel.traceStatements && query != "" {
			opts = append(opts, trace.WithAttributes(attribute.String(attrQueryText, query)))
		}
		_, span := tel.tracer.Start(ctx, "sqliteproxy."+opNames[o], opts...)
		endSpan(span, err, start.Add(d))
	}
}

func endSpan(span trace.Span, err error, at time.Time) {
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
		span.SetAttributes(attribute.String(attrErrorType, errorType(err)))
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
	case errors.As(err, &se):
		return "sqlite_" + se.Code.Error()
	}
	return "_OTHER"
}

// span starts an internal span (tenant open, migrate, evict, wait) when
// tracing; the returned function ends it.
func (tel *telemetry) span(ctx context.Context, name string, t *tenant, kvs ...attribute.KeyValue) (context.Context, func(error)) {
	if !tel.tracing {
		return ctx, func(error) {}
	}
	opts := []trace.SpanStartOption{trace.WithAttributes(kvs...)}
	if t != nil {
		opts = append(opts, t.spanAttrs)
	} else {
		opts = append(opts, noTenantSpan)
	}
	ctx, s := tel.tracer.Start(ctx, name, opts...)
	return ctx, func(err error) { endSpan(s, err, time.Now()) }
}

// waited records a wait for a connection that started at start.
func (tel *telemetry) waited(ctx context.Context, t *tenant, role string, start time.Time, err error) {
	tel.recordRole(ctx, tel.waitDuration, t, role, start, err)
	if tel.tracing {
		_, s := tel.tracer.Start(ctx, "sqliteproxy.wait", trace.WithTimestamp(start), t.spanAttrs,
			trace.WithAttributes(attribute.String(attrRole, role)))
		endSpan(s, err, time.Now())
	}
}

// opened records a cold open of one of t's connections.
func (tel *telemetry) opened(ctx context.Context, t *tenant, role string, start time.Time, err error) {
	tel.recordRole(ctx, tel.openDuration, t, role, start, err)
}

// recordRole records the time since start in h, with t's attributes, the
// connection role and, on failure, the error type.
func (tel *telemetry) recordRole(ctx context.Context, h metric.Float64Histogram, t *tenant, role string, start time.Time, err error) {
	if !tel.on {
		return
	}
	kvs := append(t.attrs.Load().set.ToSlice(), attribute.String(attrRole, role))
	if err != nil {
		kvs = append(kvs, attribute.String(attrErrorType, errorType(err)))
	}
	h.Record(ctx, time.Since(start).Seconds(), metric.WithAttributes(kvs...))
}

// evicted counts the closing of t's connections.
func (tel *telemetry) evicted(t *tenant, reason string) {
	if !tel.on {
		return
	}
	kvs := append(t.attrs.Load().set.ToSlice(), attribute.String(attrReason, reason))
	tel.evictions.Add(context.Background(), 1, metric.WithAttributes(kvs...))
}

// migrated records one migration applied to t (or failed).
func (tel *telemetry) migrated(ctx context.Context, a *tenantAttrs, name string, start time.Time, err error) {
	if !tel.on {
		return
	}
	kvs := append(a.set.ToSlice(), attribute.String(attrMigration, name))
	if err != nil {
		tel.migrationFailures.Add(ctx, 1, metric.WithAttributes(append(kvs, attribute.String(attrErrorType, errorType(err)))...))
		return
	}
	tel.migrationsApplied.Add(ctx, 1, metric.WithAttributes(kvs...))
	tel.migrationDuration.Record(ctx, time.Since(start).Seconds(), metric.WithAttributes(kvs...))
}

// rankTenants gives the tenant attribute to the MetricsTenantLimit busiest
// open tenants (by operations since the last ranking) and "_other" to the rest.
func (tel *telemetry) rankTenants(r *router) {
	if !tel.on || tel.tenantLimit <= 0 {
		return
	}
	type busy struct {
		t *tenant
		n int64
	}
	var all []busy
	r.tenants.Range(func(_, v any) bool {
		t := v.(*tenant)
		all = append(all, busy{t, t.ops.Swap(0)})
		return true
	})
	slices.SortFunc(all, func(a, b busy) int { return int(b.n - a.n) })
	tel.mu.Lock()
	defer tel.mu.Unlock()
	next := map[*tenant]bool{}
	for i, b := range all {
		if i >= tel.tenantLimit || b.n == 0 {
			break
		}
		next[b.t] = true
		if !tel.top[b.t] {
			b.t.attrs.Store(newTenantAttrs(b.t.id, true))
		}
	}
	for t := range tel.top {
		if !next[t] {
			t.attrs.Store(tel.shared)
		}
	}
	tel.top = next
}
