package pgbench

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/sqliteproxy/sqliteproxy"
)

// BenchmarkTenantLifecycle: deleting, backing up and restoring one tenant
// of 10 000 rows, at sync=full (FULL / synchronous_commit=on).
//
// The proxy: DeleteTenant (drains it and removes its files), BackupTenant
// to a file (SQLite's online backup, synced), RestoreTenant from it
// (checked, then swapped in); the tenant is open when the operation starts.
//
// PostgreSQL: the tenant's rows share the events table with the working
// set of BenchmarkWorkingSet (10 000 tenants of 10 rows). Delete is the
// application's DELETE FROM events WHERE tenant_id = $1 in its usual
// transaction; it frees no space, so each delete is followed by a VACUUM
// of the table, reported apart (vacuum-ms/op: what autovacuum pays
// later), and freed-bytes/op is what the table's size (heap, indexes,
// TOAST) lost after both. Backup is COPY (SELECT id, name, created_at ...
// WHERE tenant_id = ...) TO STDOUT into a file, synced, as the superuser;
// restore replaces the tenant's rows with the file's in one transaction
// (DELETE, then COPY FROM STDIN, tenant_id filled in from app.tenant) as
// the superuser: COPY FROM is refused on a table with row level security
// for a role subject to it. bytes/op is the backup file's size (the
// tenant's on-disk size for delete).
func BenchmarkTenantLifecycle(b *testing.B) {
	const rows = 10_000
	pr := pairings[0]
	b.Run("op=delete/sync="+pr.name+"/impl=proxy", func(b *testing.B) {
		pt := newProxyTarget(b, 1, rows, pr.sqlite)
		dir := pt.p.Config().Dir
		src := tenantFile(b, rows)
		var freed int64
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			id := fmt.Sprintf("del%d", i)
			if err := os.WriteFile(filepath.Join(dir, id+".db"), src, 0o600); err != nil {
				b.Fatal(err)
			}
			ctx := sqliteproxy.WithOrgID(context.Background(), id)
			var n int
			if err := pt.p.QueryRowContext(ctx, `SELECT count(*) FROM events`).Scan(&n); err != nil || n != rows {
				b.Fatal(n, err)
			}
			size := filesSize(dir, id)
			b.StartTimer()
			if err := pt.p.DeleteTenant(context.Background(), id); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			freed += size - filesSize(dir, id)
		}
		b.ReportMetric(float64(len(src)), "bytes/op")
		b.ReportMetric(float64(freed)/float64(b.N), "freed-bytes/op")
	})
	b.Run("op=delete/sync="+pr.name+"/impl=postgres", func(b *testing.B) {
		t := lifecycleTable(b, pr)
		big := len(t.ids) - 1
		var vacuum time.Duration
		var tenantBytes, freed int64
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			size0 := t.size(b)
			t.insertBig(b, rows)
			size1 := t.size(b)
			b.StartTimer()
			err := t.do(big, true, func(ctx context.Context, q querier) error {
				res, err := q.ExecContext(ctx, `DELETE FROM events WHERE tenant_id = $1`, t.ids[big])
				if err != nil {
					return err
				}
				if n, _ := res.RowsAffected(); n != rows {
					return fmt.Errorf("deleted %d rows, want %d", n, rows)
				}
				return nil
			})
			b.StopTimer()
			if err != nil {
				b.Fatal(err)
			}
			t0 := time.Now()
			if _, err := t.d.admin.Exec(`VACUUM events`); err != nil {
				b.Fatal(err)
			}
			vacuum += time.Since(t0)
			tenantBytes += size1 - size0
			freed += size1 - t.size(b)
		}
		b.ReportMetric(float64(tenantBytes)/float64(b.N), "bytes/op")
		b.ReportMetric(float64(freed)/float64(b.N), "freed-bytes/op")
		b.ReportMetric(float64(vacuum.Milliseconds())/float64(b.N), "vacuum-ms/op")
	})

	b.Run("op=backup/sync="+pr.name+"/impl=proxy", func(b *testing.B) {
		pt := newProxyTarget(b, 1, rows, pr.sqlite)
		benchBackups(b, ".db", func(dst string) {
			if err := pt.p.BackupTenant(context.Background(), pt.ids[0], dst); err != nil {
				b.Fatal(err)
			}
		})
	})
	b.Run("op=backup/sync="+pr.name+"/impl=postgres", func(b *testing.B) {
		t := lifecycleTable(b, pr)
		t.insertBig(b, rows)
		conn := t.rawAdmin(b)
		benchBackups(b, ".copy", func(dst string) { t.backup(b, conn, dst) })
	})

	b.Run("op=restore/sync="+pr.name+"/impl=proxy", func(b *testing.B) {
		pt := newProxyTarget(b, 1, rows, pr.sqlite)
		src := filepath.Join(b.TempDir(), "backup.db")
		if err := pt.p.BackupTenant(context.Background(), pt.ids[0], src); err != nil {
			b.Fatal(err)
		}
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if err := pt.p.RestoreTenant(context.Background(), pt.ids[0], src); err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		if n := countRows(b, pt, 0); n != rows {
			b.Fatalf("%d rows after restore, want %d", n, rows)
		}
		b.ReportMetric(float64(fileSize(b, src)), "bytes/op")
	})
	b.Run("op=restore/sync="+pr.name+"/impl=postgres", func(b *testing.B) {
		t := lifecycleTable(b, pr)
		t.insertBig(b, rows)
		conn := t.rawAdmin(b)
		src := filepath.Join(b.TempDir(), "backup.copy")
		t.backup(b, conn, src)
		big := t.ids[len(t.ids)-1]
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			f, err := os.Open(src)
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
				if _, err := tx.Exec(ctx, `SELECT set_config('app.tenant', $1, true)`, big); err != nil {
					return err
				}
				if _, err := tx.Exec(ctx, `DELETE FROM events WHERE tenant_id = $1`, big); err != nil {
					return err
				}
				tag, err := conn.PgConn().CopyFrom(ctx, f, `COPY events (id, name, created_at) FROM STDIN`)
				if err == nil && tag.RowsAffected() != rows {
					err = fmt.Errorf("restored %d rows, want %d", tag.RowsAffected(), rows)
				}
				return err
			})
			f.Close()
			if err != nil {
				b.Fatal(err)
			}
			b.StopTimer() // each restore leaves the rows it replaced dead
			if _, err := conn.Exec(ctx, `VACUUM events`); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
		b.StopTimer()
		if n := countRows(b, t, len(t.ids)-1); n != rows {
			b.Fatalf("%d rows after restore, want %d", n, rows)
		}
		b.ReportMetric(float64(fileSize(b, src)), "bytes/op")
	})
}

// lifecycleTable is PostgreSQL holding the working set (workingSet()
// tenants of 10 rows) and, last in ids, the tenant "big" (no rows yet).
func lifecycleTable(b *testing.B, pr pairing) *pgTarget {
	t := newPGTarget(b, workingSet(), workingSetRows, pr.pg)
	t.ids = append(t.ids, "big")
	return t
}

// insertBig gives tenant "big" rows rows, as the superuser, and vacuums.
func (t *pgTarget) insertBig(b *testing.B, rows int) {
	if _, err := t.d.admin.Exec(`INSERT INTO events (tenant_id, name) SELECT 'big', 'event ' || r FROM generate_series(1, $1) AS r`, rows); err != nil {
		b.Fatal(err)
	}
	if _, err := t.d.admin.Exec(`VACUUM ANALYZE events`); err != nil {
		b.Fatal(err)
	}
}

// size is the events table's size on disk: heap, indexes, TOAST.
func (t *pgTarget) size(b *testing.B) int64 {
	var n int64
	if err := t.d.admin.QueryRow(`SELECT pg_total_relation_size('events')`).Scan(&n); err != nil {
		b.Fatal(err)
	}
	return n
}

// rawAdmin is a pgx connection as the superuser (COPY needs pgx's own API).
func (t *pgTarget) rawAdmin(b testing.TB) *pgx.Conn {
	conn, err := pgx.Connect(context.Background(), t.d.c.dsn("bench", t.d.name))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// backup copies tenant "big"'s rows to the file dst, synced.
func (t *pgTarget) backup(b testing.TB, conn *pgx.Conn, dst string) {
	f, err := os.Create(dst)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	w := bufio.NewWriterSize(f, 1<<16) // PostgreSQL sends a message per row
	tag, err := conn.PgConn().CopyTo(context.Background(), w,
		`COPY (SELECT id, name, created_at FROM events WHERE tenant_id = 'big' ORDER BY id) TO STDOUT`)
	if err != nil {
		b.Fatal(err)
	}
	if tag.RowsAffected() == 0 {
		b.Fatal("backup: no rows")
	}
	if err := w.Flush(); err != nil {
		b.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		b.Fatal(err)
	}
}

// countRows counts tenant i's rows as the application sees them.
func countRows(tb testing.TB, t target, i int) int {
	var n int
	err := t.do(i, false, func(ctx context.Context, q querier) error {
		return q.QueryRowContext(ctx, `SELECT count(*) FROM events`).Scan(&n)
	})
	if err != nil {
		tb.Fatal(err)
	}
	return n
}

// filesSize is the size of tenant id's file and side files in dir.
func filesSize(dir, id string) int64 {
	var n int64
	for _, suffix := range []string{".db", ".db-wal", ".db-shm"} {
		if fi, err := os.Stat(filepath.Join(dir, id+suffix)); err == nil {
			n += fi.Size()
		}
	}
	return n
}

func fileSize(b *testing.B, path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		b.Fatal(err)
	}
	return fi.Size()
}

// benchBackups times backup into a new file (named with ext) b.N times and
// reports the backup's size as bytes/op; the files are removed untimed.
func benchBackups(b *testing.B, ext string, backup func(dst string)) {
	out := b.TempDir()
	var size int64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		dst := filepath.Join(out, fmt.Sprintf("b%d%s", i, ext))
		backup(dst)
		b.StopTimer()
		size = fileSize(b, dst)
		os.Remove(dst)
		b.StartTimer()
	}
	b.ReportMetric(float64(size), "bytes/op")
}
