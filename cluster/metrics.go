package cluster

import (
	"context"
	"fmt"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

type event int

const (
	eventAcquired event = iota
	eventReleased
	eventLost
	numEvents
)

var eventNames = [numEvents]string{"acquired", "released", "lost"}

// metrics counts ownership changes; the zero value counts nothing.
type metrics struct {
	changes metric.Int64Counter
	opts    [numEvents][]metric.AddOption
}

func newMetrics(mp metric.MeterProvider) (metrics, error) {
	var m metrics
	if mp == nil {
		return m, nil
	}
	c, err := mp.Meter("github.com/sqliteproxy/sqliteproxy/cluster").Int64Counter(
		"sqliteproxy.cluster.ownership.changes",
		metric.WithUnit("{change}"),
		metric.WithDescription("Tenant ownership changes of this node: event=acquired, released (given up with Release or Close) or lost (the node lease was not renewed in time)."))
	if err != nil {
		return m, fmt.Errorf("cluster: metrics: %w", err)
	}
	m.changes = c
	for e := range numEvents {
		m.opts[e] = []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(attribute.String("event", eventNames[e])))}
	}
	return m, nil
}

func (m *metrics) add(e event) {
	if m.changes != nil {
		m.changes.Add(context.Background(), 1, m.opts[e]...)
	}
}
