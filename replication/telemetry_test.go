//go:build linux

package replication_test

import (
	"context"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/sqliteproxy/sqliteproxy/sqliteproxytest"
)

// Replication reports restores by outcome, sync durations and the lag.
func TestProxy_Telemetry(t *testing.T) {
	g := newRig(t, "file")
	a := sqliteproxytest.New(t, g.config(t, 10))
	insertSynced(t, a, "acme", "x")
	reader := sdkmetric.NewManualReader()
	cfg := g.config(t, 10)
	cfg.MeterProvider = sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	b := sqliteproxytest.New(t, cfg)
	names(t, b, "acme")  // restored
	names(t, b, "newco") // not in the replica: created
	insertSynced(t, b, "acme", "y")
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	got := map[string]int64{}
	var syncs uint64
	lagSeen := false
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			switch m.Name {
			case "sqliteproxy.replication.restores":
				for _, dp := range m.Data.(metricdata.Sum[int64]).DataPoints {
					v, _ := dp.Attributes.Value(attribute.Key("sqliteproxy.restore.outcome"))
					got[v.AsString()] += dp.Value
				}
			case "sqliteproxy.replication.sync.duration":
				for _, dp := range m.Data.(metricdata.Histogram[float64]).DataPoints {
					syncs += dp.Count
				}
			case "sqliteproxy.replication.lag":
				lagSeen = len(m.Data.(metricdata.Gauge[float64]).DataPoints) > 0
			}
		}
	}
	if got["restored"] != 1 || got["not_found"] != 1 {
		t.Errorf("restores by outcome: %v, want restored 1, not_found 1", got)
	}
	if syncs < 1 {
		t.Errorf("%d syncs recorded", syncs)
	}
	if !lagSeen {
		t.Error("no sqliteproxy.replication.lag")
	}
}
