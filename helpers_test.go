package sqliteproxy

import (
	"context"
	"testing"
)

// newTestProxy opens a Proxy on a fresh directory and closes it after the test.
func newTestProxy(tb testing.TB, cfg Config) *Proxy {
	tb.Helper()
	if cfg.Dir == "" {
		cfg.Dir = tb.TempDir()
	}
	p, err := New(cfg)
	if err != nil {
		tb.Fatalf("New: %v", err)
	}
	tb.Cleanup(func() { p.Close() })
	return p
}

func tctx(id string) context.Context { return WithOrgID(context.Background(), id) }
