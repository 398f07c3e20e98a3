package sqliteproxy

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mattn/go-sqlite3"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

type telemetryRig struct {
	p      *Proxy
	reader *sdkmetric.ManualReader
	spans  *tracetest.SpanRecorder
}

func newTelemetryRig(t *testing.T, cfg Config) *telemetryRig {
	t.Helper()
	rig := &telemetryRig{reader: sdkmetric.NewManualReader(), spans: tracetest.NewSpanRecorder()}
	cfg.MeterProvider = sdkmetric.NewMeterProvider(sdkmetric.WithReader(rig.reader))
	cfg.TracerProvider = sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rig.spans))
	rig.p = newTestProxy(t, cfg)
	return rig
}

func (rig *telemetryRig) collect(t *testing.T) map[string]metricdata.Metrics {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := rig.reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	out := map[string]metricdata.Metrics{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			out[m.Name] = m
		}
	}
	return out
}

func attrsMatch(set attribute.Set, want map[string]string) bool {
	for k, v := range want {
		got, ok := set.Value(attribute.Key(k))
		if v == "" {
			if ok {
				return false
			}
			continue
		}
		if !ok || got.AsString() != v {
			return false
		}
	}
	return true
}

// histCount sums the counts of histogram points whose attributes match want
// ("" means: attribute absent).
func histCount(t *testing.T, m metricdata.Metrics, want map[string]string) uint64 {
	t.Helper()
	h, ok := m.Data.(metricdata.Histogram[float64])
	if !ok {
		t.Fatalf("%s is %T, not a float64 histogram", m.Name, m.Data)
	}
	var n uint64
	for _, dp := range h.DataPoints {
		if attrsMatch(dp.Attributes, want) {
			n += dp.Count
		}
	}
	return n
}

func sumInt(t *testing.T, m metricdata.Metrics, want map[string]string) int64 {
	t.Helper()
	var n int64
	switch d := m.Data.(type) {
	case metricdata.Sum[int64]:
		for _, dp := range d.DataPoints {
			if attrsMatch(dp.Attributes, want) {
				n += dp.Value
			}
		}
	case metricdata.Gauge[int64]:
		for _, dp := range d.DataPoints {
			if attrsMatch(dp.Attributes, want) {
				n += dp.Value
			}
		}
	default:
		t.Fatalf("%s is %T", m.Name, m.Data)
	}
	return n
}

func TestTelemetry_Metrics(t *testing.T) {
	t.Parallel()
	rig := newTelemetryRig(t, Config{MaxConnections: 2, Migrations: []string{eventsTable, `CREATE INDEX e_n ON events (n)`}})
	p := rig.p
	for range 7 {
		if _, err := p.ExecContext(tctx("acme"), `INSERT INTO events (tenant) VALUES ('acme')`); err != nil {
			t.Fatal(err)
		}
	}
	for range 3 {
		countRows(t, p, "globex")
	}
	p.ExecContext(tctx("acme"), `INSERT INTO nope VALUES (1)`) // fails
	tx, _ := p.BeginTx(tctx("acme"), nil)
	tx.Rollback()
	p.ExecContext(tctx("third"), `INSERT INTO events (tenant) VALUES ('x')`) // evicts for budget

	ms := rig.collect(t)
	op := ms["sqliteproxy.operation.duration"]
	for _, c := range []struct {
		want map[string]string
		n    uint64
	}{
		{map[string]string{attrTenant: "acme", attrOperation: "exec", attrErrorType: "", attrSystem: "sqlite"}, 7},
		{map[string]string{attrTenant: "acme", attrOperation: "exec", attrErrorType: "sqlite_error"}, 1},
		{map[string]string{attrTenant: "globex", attrOperation: "query"}, 3},
		{map[string]string{attrTenant: "acme", attrOperation: "begin"}, 1},
		{map[string]string{attrTenant: "acme", attrOperation: "rollback"}, 1},
		{map[string]string{attrTenant: "globex", attrOperation: "exec"}, 0},
	} {
		if got := histCount(t, op, c.want); got != c.n {
			t.Errorf("operations %v: %d, want %d", c.want, got, c.n)
		}
	}
	if n := sumInt(t, ms["sqliteproxy.migrations.applied"], map[string]string{attrTenant: "acme"}); n != 2 {
		t.Errorf("migrations applied to acme: %d, want 2", n)
	}
	if n := histCount(t, ms["sqliteproxy.migration.duration"], nil); n != 6 {
		t.Errorf("migration durations: %d, want 6 (3 tenants x 2)", n)
	}
	if n := sumInt(t, ms["sqliteproxy.tenant.evictions"], map[string]string{attrReason: "budget"}); n < 1 {
		t.Errorf("budget evictions: %d", n)
	}
	if n := histCount(t, ms["sqliteproxy.tenant.open.duration"], map[string]string{attrTenant: "acme", attrRole: "writer"}); n < 1 {
		t.Errorf("cold opens of acme's writer: %d", n)
	}
	if n := sumInt(t, ms["sqliteproxy.connection.limit"], nil); n != 2 {
		t.Errorf("connection limit gauge: %d", n)
	}
	st := p.Stats()
	if n := sumInt(t, ms["sqliteproxy.connection.count"], map[string]string{attrState: "open", attrTenant: ""}); n != int64(st.OpenConnections) || n == 0 {
		t.Errorf("open connections gauge: %d, stats %d", n, st.OpenConnections)
	}
	if n := sumInt(t, ms["sqliteproxy.tenant.open"], nil); n != int64(st.OpenTenants) {
		t.Errorf("open tenants gauge: %d, stats %d", n, st.OpenTenants)
	}
}

func TestTelemetry_Spans(t *testing.T) {
	t.Parallel()
	rig := newTelemetryRig(t, Config{Migrations: []string{eventsTable}, TraceQueries: true, TraceStatements: true})
	p := rig.p
	if _, err := p.ExecContext(tctx("acme"), `INSERT INTO events (tenant) VALUES ('acme')`); err != nil {
		t.Fatal(err)
	}
	if err := p.DeleteTenant(context.Background(), "acme"); err != nil {
		t.Fatal(err)
	}
	var names []string
	var execText string
	for _, s := range rig.spans.Ended() {
		names = append(names, s.Name())
		if s.Name() == "sqliteproxy.exec" {
			for _, kv := range s.Attributes() {
				if kv.Key == attrQueryText {
					execText = kv.Value.AsString()
				}
			}
		}
	}
	for _, want := range []string{"sqliteproxy.tenant.open", "sqliteproxy.migrate", "sqliteproxy.exec", "sqliteproxy.tenant.evict"} {
		if !slices.Contains(names, want) {
			t.Errorf("no %s span in %v", want, names)
		}
	}
	if execText != `INSERT INTO events (tenant) VALUES ('acme')` {
		t.Errorf("exec span statement %q", execText)
	}
}

// Without TraceStatements no span holds SQL text, error messages included:
// SQLite's and the proxy's messages quote statements. With it, they are
// there to debug with.
func TestTelemetry_SpanErrorsWithoutStatements(t *testing.T) {
	t.Parallel()
	const secret = "SSN-123-45-6789"
	for _, statements := range []bool{false, true} {
		rig := newTelemetryRig(t, Config{Migrations: []string{eventsTable}, TraceQueries: true, TraceStatements: statements})
		p := rig.p
		if _, err := p.ExecContext(context.Background(), `INSERT INTO events (tenant) VALUES ('`+secret+`')`); !errors.Is(err, ErrNoTenant) {
			t.Fatalf("a write without a tenant: %v", err)
		}
		if _, err := p.ExecContext(tctx("acme"), `INSERT INTO events (tenant) VALUES ('`+secret+`'`); err == nil {
			t.Fatal("a syntax error ran")
		}
		if _, err := p.QueryContext(WithFanOut(context.Background(), FanOutOptions{}), `DELETE FROM events WHERE tenant = '`+secret+`'`); err == nil {
			t.Fatal("a fan-out write ran")
		}
		seen, failed := false, 0
		for _, sp := range rig.spans.Ended() {
			text := fmt.Sprint(sp.Status(), sp.Attributes(), sp.Events())
			seen = seen || strings.Contains(text, secret)
			if sp.Status().Code == codes.Error {
				failed++
				if !slices.ContainsFunc(sp.Attributes(), func(kv attribute.KeyValue) bool { return kv.Key == attrErrorType }) {
					t.Errorf("failed span %s without error.type", sp.Name())
				}
			}
		}
		if failed < 3 {
			t.Errorf("TraceStatements %v: %d failed spans, want 3 or more", statements, failed)
		}
		if seen != statements {
			t.Errorf("TraceStatements %v: SQL text on spans: %v", statements, seen)
		}
	}
}

func TestTelemetry_TenantCardinality(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		limit int
		want  []string // tenant attribute values seen
	}{
		{-1, nil},
		{1, []string{"_other"}}, // before the first ranking everybody is _other
	} {
		rig := newTelemetryRig(t, Config{MetricsTenantLimit: tc.limit})
		for _, id := range []string{"a", "b", "b"} {
			rig.p.ExecContext(tctx(id), `SELECT 1`)
		}
		if tc.limit > 0 {
			rig.p.c.r.tel.rank(tenantTels(rig.p.c.r.budget.lru()))
			rig.p.ExecContext(tctx("b"), `SELECT 1`)
			tc.want = []string{"_other", "b"}
		}
		h := rig.collect(t)["sqliteproxy.operation.duration"].Data.(metricdata.Histogram[float64])
		var seen []string
		for _, dp := range h.DataPoints {
			if v, ok := dp.Attributes.Value(attrTenant); ok && !slices.Contains(seen, v.AsString()) {
				seen = append(seen, v.AsString())
			}
		}
		slices.Sort(seen)
		if !slices.Equal(seen, tc.want) {
			t.Errorf("limit %d: tenant attributes %v, want %v", tc.limit, seen, tc.want)
		}
	}
}

func TestTelemetry_OffWithoutProvider(t *testing.T) {
	t.Parallel()
	p := newTestProxy(t, Config{})
	if p.c.r.tel.on || p.c.r.tel.tracing {
		t.Fatal("telemetry on without a provider")
	}
	if _, err := p.ExecContext(tctx("a"), `SELECT 1`); err != nil {
		t.Fatal(err)
	}
	if got := errorType(opError("x", "a", ErrNoTenant)); got != "no_tenant" {
		t.Errorf("errorType = %q", got)
	}
	if got := errorType(errors.New("x")); got != "_OTHER" {
		t.Errorf("errorType = %q", got)
	}
}

// error.type names a SQLite failure by its primary code, one lower-case
// word as in SQLite's C constants, never by the English message (which
// has spaces and, for some codes, changes between SQLite versions).
func TestTelemetry_ErrorTypeNamesSQLiteCodes(t *testing.T) {
	t.Parallel()
	p := newTestProxy(t, Config{})
	ctx := tctx("a")
	if _, err := p.ExecContext(ctx, `CREATE TABLE u (k INTEGER PRIMARY KEY)`); err != nil {
		t.Fatal(err)
	}
	if _, err := p.ExecContext(ctx, `INSERT INTO u VALUES (1)`); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ query, want string }{
		{`INSERT INTO u VALUES (1)`, "sqlite_constraint"},
		{`SELECT * FROM nosuch`, "sqlite_error"},
		{`SELECT 1 LIMIT 'x'`, "sqlite_mismatch"},
	} {
		_, err := p.ExecContext(ctx, c.query)
		if got := errorType(err); got != c.want {
			t.Errorf("%s: error.type %q (%v), want %q", c.query, got, err, c.want)
		}
	}
	for code, name := range sqliteCodeNames {
		if code > 0 && (name == "" || strings.ToLower(name) != name || strings.ContainsAny(name, " _")) {
			t.Errorf("code %d named %q", code, name)
		}
	}
	if got := errorType(sqlite3.Error{Code: sqlite3.ErrBusy}); got != "sqlite_busy" {
		t.Errorf("SQLITE_BUSY: %q", got)
	}
	if got := errorType(sqlite3.Error{Code: 99}); got != "sqlite_99" {
		t.Errorf("unknown code: %q", got)
	}
}

// Spans are not aggregated: every span about a tenant names it, whether
// metrics are off, on, or limited by MetricsTenantLimit (issue #13, item 1).
func TestTelemetry_SpansNameTheTenant(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		meter  bool
		limit  int
		ranked bool
	}{
		{name: "TracingOnly"},
		{name: "MetricsOn", meter: true},
		{name: "MetricsWithoutTenant", meter: true, limit: -1},
		{name: "MetricsTenantLimit", meter: true, limit: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			spans := tracetest.NewSpanRecorder()
			cfg := Config{
				Migrations:         []string{eventsTable},
				TraceQueries:       true,
				MetricsTenantLimit: tc.limit,
				TracerProvider:     sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans)),
			}
			if tc.meter {
				cfg.MeterProvider = sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
			}
			p := newTestProxy(t, cfg)
			if _, err := p.ExecContext(tctx("acme"), `INSERT INTO events (tenant) VALUES ('acme')`); err != nil {
				t.Fatal(err)
			}
			if _, err := p.QueryContext(context.Background(), `SELECT 1`); err != nil { // no tenant
				t.Fatal(err)
			}
			if err := p.DeleteTenant(context.Background(), "acme"); err != nil {
				t.Fatal(err)
			}
			seen := map[string]bool{}
			for _, s := range spans.Ended() {
				var tenant string
				for _, kv := range s.Attributes() {
					if kv.Key == attrTenant {
						tenant = kv.Value.AsString()
					}
				}
				seen[s.Name()] = true
				want := "acme"
				if s.Name() == "sqliteproxy.query" {
					want = "" // the tenantless SELECT 1
				}
				if tenant != want {
					t.Errorf("span %s: tenant attribute %q, want %q", s.Name(), tenant, want)
				}
			}
			for _, name := range []string{"sqliteproxy.tenant.open", "sqliteproxy.migrate", "sqliteproxy.exec", "sqliteproxy.tenant.evict"} {
				if !seen[name] {
					t.Errorf("no %s span (saw %v)", name, seen)
				}
			}
		})
	}
}

// An operation that fails before it gets a connection (here: a write and a
// read-write transaction that time out waiting for the writer, through
// group commit and not) is recorded for its tenant: span and duration.
func TestTelemetry_FailedWaitNamesTheTenant(t *testing.T) {
	t.Parallel()
	for name, gc := range map[string]GroupCommitMode{"on": GroupCommitOn, "off": GroupCommitOff} {
		t.Run("group_commit="+name, func(t *testing.T) {
			t.Parallel()
			rig := newTelemetryRig(t, Config{Migrations: []string{eventsTable}, TraceQueries: true, GroupCommit: gc})
			p := rig.p
			tx, err := p.BeginTx(tctx("acme"), nil)
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback()
			if _, err := tx.ExecContext(tctx("acme"), `INSERT INTO events (tenant) VALUES ('held')`); err != nil {
				t.Fatal(err)
			}
			for _, op := range []func(ctx context.Context) error{
				func(ctx context.Context) error {
					_, err := p.ExecContext(ctx, `INSERT INTO events (tenant) VALUES ('late')`)
					return err
				},
				func(ctx context.Context) error {
					_, err := p.BeginTx(ctx, nil)
					return err
				},
			} {
				ctx, cancel := context.WithTimeout(tctx("acme"), 50*time.Millisecond)
				err := op(ctx)
				cancel()
				if !errors.Is(err, context.DeadlineExceeded) {
					t.Fatalf("got %v, want a timed-out wait", err)
				}
			}
			for _, s := range rig.spans.Ended() {
				if s.Name() != "sqliteproxy.exec" && s.Name() != "sqliteproxy.begin" {
					continue
				}
				if !attrsMatch(attribute.NewSet(s.Attributes()...), map[string]string{attrTenant: "acme"}) {
					t.Errorf("span %s without its tenant: %v", s.Name(), s.Attributes())
				}
			}
			m := rig.collect(t)["sqliteproxy.operation.duration"]
			for _, op := range []string{"exec", "begin"} {
				if n := histCount(t, m, map[string]string{attrTenant: "acme", attrOperation: op, attrErrorType: "deadline_exceeded"}); n != 1 {
					t.Errorf("%s: %d failed operations recorded for acme, want 1", op, n)
				}
			}
		})
	}
}

// IDs that name no tenant (ExplicitCreate: a client's typo, or an attacker
// sending made-up IDs) are recorded without a tenant: each made a series of
// every metric, and past the SDK's cardinality limit (2 000) a real
// tenant's measurements lost their tenant (telemetry trial: 2 100 made-up
// IDs, then acme's ten execs all recorded in the overflow series).
func TestTelemetry_UnknownTenantsMakeNoSeries(t *testing.T) {
	t.Parallel()
	rig := newTelemetryRig(t, Config{ExplicitCreate: true, Migrations: []string{eventsTable}})
	p := rig.p
	if err := p.CreateTenant(context.Background(), "acme"); err != nil {
		t.Fatal(err)
	}
	const unknown = 50
	for i := range unknown {
		if _, err := p.ExecContext(tctx(fmt.Sprintf("bogus-%d", i)), `INSERT INTO events (tenant) VALUES ('x')`); !errors.Is(err, ErrTenantNotFound) {
			t.Fatalf("an unknown tenant: %v", err)
		}
	}
	for range 10 {
		if _, err := p.ExecContext(tctx("acme"), `INSERT INTO events (tenant) VALUES ('x')`); err != nil {
			t.Fatal(err)
		}
	}
	ms := rig.collect(t)
	for name, m := range ms {
		var sets []attribute.Set
		switch d := m.Data.(type) {
		case metricdata.Histogram[float64]:
			for _, dp := range d.DataPoints {
				sets = append(sets, dp.Attributes)
			}
		case metricdata.Sum[int64]:
			for _, dp := range d.DataPoints {
				sets = append(sets, dp.Attributes)
			}
		case metricdata.Gauge[int64]:
			for _, dp := range d.DataPoints {
				sets = append(sets, dp.Attributes)
			}
		}
		for _, set := range sets {
			if v, ok := set.Value(attrTenant); ok && strings.HasPrefix(v.AsString(), "bogus-") {
				t.Errorf("%s has a series of the unknown tenant %s", name, v.AsString())
			}
		}
	}
	ops := ms["sqliteproxy.operation.duration"]
	if n := histCount(t, ops, map[string]string{attrTenant: "acme", attrOperation: "exec", attrErrorType: ""}); n != 10 {
		t.Errorf("acme: %d execs recorded, want 10", n)
	}
	if n := histCount(t, ops, map[string]string{attrTenant: "", attrErrorType: "tenant_not_found"}); n != unknown {
		t.Errorf("%d tenant_not_found operations recorded without a tenant, want %d", n, unknown)
	}
}

// A new tenant whose creation fails midway (its half-made file thrown away)
// has no migration applied: the ones that ran on that file were counted in
// migrations.applied once per attempt, for a tenant with no database. A
// creation that succeeds counts each once, from a template or step by step.
func TestTelemetry_MigrationsCountedOnlyOnTheTenantsFile(t *testing.T) {
	rig := newTelemetryRig(t, Config{Migrations: []string{eventsTable, `SELEC 1`}})
	for range 3 {
		if _, err := rig.p.ExecContext(tctx("m"), `INSERT INTO events (tenant) VALUES ('x')`); err == nil {
			t.Fatal("a migration that cannot run: no error")
		}
	}
	if ids, err := rig.p.Tenants(context.Background()); err != nil || len(ids) != 0 {
		t.Fatalf("tenants %v, %v: want none", ids, err)
	}
	ms := rig.collect(t)
	if m, ok := ms["sqliteproxy.migrations.applied"]; ok && sumInt(t, m, map[string]string{attrTenant: "m"}) != 0 {
		t.Errorf("%d migrations counted as applied to a tenant whose creation failed", sumInt(t, m, map[string]string{attrTenant: "m"}))
	}
	if n := sumInt(t, ms["sqliteproxy.migration.failures"], map[string]string{attrTenant: "m"}); n != 3 {
		t.Errorf("%d failures counted, want 3", n)
	}

	for _, mem := range []bool{true, false} {
		rig := newTelemetryRig(t, Config{Migrations: []string{eventsTable, `CREATE INDEX e_n ON events (n)`}})
		memTemplateOff.Store(!mem) // serial: see TestTemplate_WaitsWithinDeadlinesAndSurvivesGivingUp
		for _, id := range []string{"a", "b"} {
			if err := rig.p.CreateTenant(context.Background(), id); err != nil {
				t.Fatal(err)
			}
			if err := rig.p.CreateTenant(context.Background(), id); !errors.Is(err, ErrTenantExists) {
				t.Fatalf("created twice: %v", err)
			}
		}
		memTemplateOff.Store(false)
		ms := rig.collect(t)
		for _, id := range []string{"a", "b"} {
			if n := sumInt(t, ms["sqliteproxy.migrations.applied"], map[string]string{attrTenant: id}); n != 2 {
				t.Errorf("in-memory template %v: %s: %d migrations counted as applied, want 2", mem, id, n)
			}
			if n := histCount(t, ms["sqliteproxy.migration.duration"], map[string]string{attrTenant: id}); n != 2 {
				t.Errorf("in-memory template %v: %s: %d migration durations, want 2", mem, id, n)
			}
		}
	}
}

// A wait for a connection slot that Close ends is recorded as failed
// (error.type closed), as the caller's error says: it was recorded as a
// successful wait, while a writer wait ended by Close said closed.
func TestTelemetry_SlotWaitEndedByClose(t *testing.T) {
	t.Parallel()
	rig := newTelemetryRig(t, Config{MaxConnections: 1, ReadersPerTenant: -1, Migrations: []string{eventsTable}, GroupCommit: GroupCommitOff})
	p := rig.p
	tx, err := p.BeginTx(tctx("a"), nil) // the only slot, held
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(tctx("c"), time.Minute)
		defer cancel()
		_, err := p.ExecContext(ctx, `INSERT INTO events (tenant) VALUES ('c')`)
		done <- err
	}()
	waitFor(t, 10*time.Second, "c to wait for a slot", func() bool { return p.Stats().Waits == 1 })
	closed := make(chan error, 1)
	go func() { closed <- p.Close() }()
	select {
	case err := <-done:
		if !errors.Is(err, ErrClosed) {
			t.Errorf("the wait ended by Close: %v, want ErrClosed", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("the wait did not end with Close")
	}
	tx.Rollback()
	select {
	case <-closed:
	case <-time.After(time.Minute):
		t.Fatal("Close did not return")
	}
	m := rig.collect(t)["sqliteproxy.connection.wait.duration"]
	if n := histCount(t, m, map[string]string{attrRole: roleSlot, attrTenant: "c", attrErrorType: "closed"}); n != 1 {
		t.Errorf("%d slot waits of c recorded as ended by Close, want 1", n)
	}
	if n := histCount(t, m, map[string]string{attrRole: roleSlot, attrErrorType: ""}); n != 0 {
		t.Errorf("%d slot waits recorded as successful, want 0", n)
	}
}

// A first access whose migration fails is a failed open of the writer in
// tenant.open.duration, as a reader's failed open is: it was left out.
func TestTelemetry_FailedWriterOpenRecorded(t *testing.T) {
	t.Parallel()
	rig := newTelemetryRig(t, Config{Migrations: []string{`SELEC 1`}})
	if _, err := rig.p.ExecContext(tctx("m"), `SELECT 1`); err == nil {
		t.Fatal("a migration that cannot run: no error")
	}
	m := rig.collect(t)["sqliteproxy.tenant.open.duration"]
	if n := histCount(t, m, map[string]string{attrRole: roleWriter, attrTenant: "m", attrErrorType: "sqlite_error"}); n != 1 {
		t.Errorf("%d failed writer opens of m recorded, want 1", n)
	}
}

// Every instrument says its unit: the counters had none, beside gauges
// in {connection} and {tenant}.
func TestTelemetry_EveryMetricHasAUnit(t *testing.T) {
	t.Parallel()
	rig := newTelemetryRig(t, Config{MaxConnections: 2, Migrations: []string{eventsTable}})
	for _, id := range []string{"acme", "globex", "initech"} { // evictions (budget), migrations
		insertN(t, rig.p, id, 1)
	}
	got := rig.collect(t)
	for _, name := range []string{"sqliteproxy.tenant.evictions", "sqliteproxy.migrations.applied", "sqliteproxy.operation.duration", "sqliteproxy.connection.count"} {
		if _, ok := got[name]; !ok {
			t.Errorf("%s not recorded", name)
		}
	}
	for name, m := range got {
		if m.Unit == "" {
			t.Errorf("%s has no unit", name)
		}
	}
}
