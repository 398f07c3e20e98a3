// Command telemetry shows what sqliteproxy reports to OpenTelemetry without
// any instrumentation in the application: it wires the SDK with stdout
// exporters, runs a little traffic on two tenants and prints the metrics
// and spans (as JSON) when it exits.
//
//	cd compat && go run -tags sqlite_omit_load_extension ./examples/telemetry
//
// In production, swap the stdout exporters for OTLP or Prometheus ones.
package main

import (
	"context"
	"log"
	"os"

	"github.com/sqliteproxy/sqliteproxy"
	"go.opentelemetry.io/otel/exporters/stdout/stdoutmetric"
	"go.opentelemetry.io/otel/exporters/stdout/stdouttrace"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

func main() {
	ctx := context.Background()
	mexp, err := stdoutmetric.New(stdoutmetric.WithPrettyPrint())
	if err != nil {
		log.Fatal(err)
	}
	// The per-instrument cardinality limit (default 2000) must cover the
	// tenant attribute; or set Config.MetricsTenantLimit.
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewPeriodicReader(mexp)),
		sdkmetric.WithCardinalityLimit(10_000))
	texp, err := stdouttrace.New(stdouttrace.WithPrettyPrint())
	if err != nil {
		log.Fatal(err)
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(texp))

	dir, err := os.MkdirTemp("", "sqliteproxy-telemetry")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	p, err := sqliteproxy.New(sqliteproxy.Config{
		Dir:            dir,
		MeterProvider:  mp,
		TracerProvider: tp,
		Migrations:     []string{`CREATE TABLE events (id INTEGER PRIMARY KEY, type TEXT NOT NULL)`},
	})
	if err != nil {
		log.Fatal(err)
	}
	for i, tenant := range []string{"acme", "globex", "acme", "acme"} {
		tctx := sqliteproxy.WithOrgID(ctx, tenant)
		if _, err := p.ExecContext(tctx, `INSERT INTO events (type) VALUES (?)`, "signup"); err != nil {
			log.Fatal(err)
		}
		var n int
		if err := p.QueryRowContext(tctx, `SELECT count(*) FROM events`).Scan(&n); err != nil {
			log.Fatal(err)
		}
		log.Printf("request %d: tenant %s has %d events", i, tenant, n)
	}
	// Export once while the proxy is open (gauges of open connections are
	// read at collection time), then again after Close (its evictions).
	if err := mp.ForceFlush(ctx); err != nil {
		log.Fatal(err)
	}
	if err := p.Close(); err != nil {
		log.Fatal(err)
	}
	if err := tp.Shutdown(ctx); err != nil {
		log.Fatal(err)
	}
	if err := mp.Shutdown(ctx); err != nil { // exports the metrics once more
		log.Fatal(err)
	}
}
