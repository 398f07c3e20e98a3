//go:build linux

package replication_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/mattn/go-sqlite3"
	"github.com/sqliteproxy/sqliteproxy"
	"github.com/sqliteproxy/sqliteproxy/sqliteproxytest"
)

// What replication refuses on a tenant (Litestream owns its checkpoints)
// is said so: the refusal quoted the hardening's rules alone, which allow
// a plain VACUUM and say nothing of checkpoints (walk24).
func TestProxy_ReplicatedRefusalsSaySo(t *testing.T) {
	g := newRig(t, "file")
	p := sqliteproxytest.New(t, g.config(t, 4))
	insert(t, p, "acme", "x")
	for _, q := range []string{`VACUUM`, `PRAGMA wal_checkpoint(TRUNCATE)`, `PRAGMA wal_autocheckpoint = 1000`} {
		_, err := p.ExecContext(sqliteproxytest.Context(t, "acme"), q)
		var pe *sqliteproxy.Error
		var se sqlite3.Error
		if !errors.As(err, &pe) || !errors.As(err, &se) || se.Code != sqlite3.ErrAuth || !strings.Contains(err.Error(), "with replication Litestream owns checkpoints") {
			t.Errorf("%s on a replicated tenant: %v, want it refused, saying replication refuses it", q, err)
		}
	}
}
