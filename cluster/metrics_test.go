package cluster

import (
	"context"
	"testing"
	"time"

	"github.com/sqliteproxy/sqliteproxy/cluster/etcdtest"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

// changes reads sqliteproxy.cluster.ownership.changes by event.
func changes(t *testing.T, r *sdkmetric.ManualReader) map[string]int64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := r.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	got := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != "sqliteproxy.cluster.ownership.changes" {
				continue
			}
			for _, dp := range m.Data.(metricdata.Sum[int64]).DataPoints {
				ev, _ := dp.Attributes.Value("event")
				got[ev.AsString()] += dp.Value
			}
		}
	}
	return got
}

func TestMetrics(t *testing.T) {
	srv := etcdtest.Start(t)
	reader := sdkmetric.NewManualReader()
	a, err := New(Config{Endpoints: srv.Endpoints(), NodeID: "a", AdvertiseURL: "http://a.invalid", TTL: testTTL,
		MeterProvider: sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	ctx := ctxT(t, 30*time.Second)
	var leases []interface{ Lost() <-chan struct{} }
	for _, id := range []string{"m1", "m2", "m3"} {
		l, err := a.Acquire(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		leases = append(leases, l)
	}
	l1, _ := a.Acquire(ctx, "m1") // held already: no change
	if err := l1.Release(ctx, 1); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	go func() { defer close(stop); srv.Stop() }()
	eventually(t, 2*testTTL, "m2 and m3 lost", func() bool {
		return isClosed(leases[1].Lost()) && isClosed(leases[2].Lost())
	})
	<-stop
	if got, want := changes(t, reader), map[string]int64{"acquired": 3, "released": 1, "lost": 2}; !equalCounts(got, want) {
		t.Errorf("changes = %v, want %v", got, want)
	}
}

func equalCounts(a, b map[string]int64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}
