package sqliteproxy

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/mattn/go-sqlite3"
)

// The benchmarks run every operation three ways in one process, on one
// filesystem, as sub-benchmarks impl=...:
//   - mattn-defaults: mattn/go-sqlite3 with WAL and busy_timeout, else its defaults;
//   - mattn-same-dsn: mattn with exactly the pragmas, statement cache and
//     connection hook (limits, authorizer) of a sqliteproxy tenant connection;
//   - proxy: sqliteproxy with its defaults.
// `make bench` compares them with benchstat.

const benchSchema = `CREATE TABLE IF NOT EXISTS bench (id INTEGER PRIMARY KEY, name TEXT NOT NULL, value INTEGER NOT NULL)`

func init() {
	sql.Register("sqlite3-same-dsn", &sqlite3.SQLiteDriver{ConnectHook: func(c *sqlite3.SQLiteConn) error {
		if err := ensureWAL(c, DefaultBusyTimeout); err != nil {
			return err
		}
		return hardenTenantConn(c)
	}})
}

type benchTarget struct {
	name string
	db   *sql.DB
	ctx  context.Context
}

// benchTargets opens the three implementations on fresh files, each with
// the schema and 1 000 rows.
func benchTargets(b *testing.B) []benchTarget {
	b.Helper()
	dir := b.TempDir()
	open := func(driverName, dsn string) *sql.DB {
		db, err := sql.Open(driverName, dsn)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { db.Close() })
		return db
	}
	p := newTestProxy(b, Config{Dir: filepath.Join(dir, "proxy"), Migrations: []string{benchSchema}})
	r := p.c.r
	same := "file:" + filepath.Join(dir, "same.db") + r.writerParams
	targets := []benchTarget{
		{"mattn-defaults", open("sqlite3", "file:"+filepath.Join(dir, "defaults.db")+"?_journal_mode=WAL&_busy_timeout=5000"), context.Background()},
		{"mattn-same-dsn", open("sqlite3-same-dsn", same), context.Background()},
		{"proxy", p.DB, WithOrgID(context.Background(), "bench")},
	}
	for _, tg := range targets {
		if _, err := tg.db.ExecContext(tg.ctx, benchSchema); err != nil {
			b.Fatal(err)
		}
		tx, err := tg.db.BeginTx(tg.ctx, nil)
		if err != nil {
			b.Fatal(err)
		}
		for i := range 1000 {
			if _, err := tx.ExecContext(tg.ctx, `INSERT INTO bench (name, value) VALUES (?, ?)`, fmt.Sprint("row", i), i); err != nil {
				b.Fatal(err)
			}
		}
		if err := tx.Commit(); err != nil {
			b.Fatal(err)
		}
	}
	return targets
}

func runTargets(b *testing.B, fn func(b *testing.B, tg benchTarget)) {
	for _, tg := range benchTargets(b) {
		b.Run("impl="+tg.name, func(b *testing.B) {
			b.ReportAllocs()
			fn(b, tg)
		})
	}
}

func BenchmarkInsert(b *testing.B) {
	runTargets(b, func(b *testing.B, tg benchTarget) {
		for i := 0; b.Loop(); i++ {
			if _, err := tg.db.ExecContext(tg.ctx, `INSERT INTO bench (name, value) VALUES (?, ?)`, "bench", i); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkSingleQuery(b *testing.B) {
	runTargets(b, func(b *testing.B, tg benchTarget) {
		var name string
		var value int
		for i := 0; b.Loop(); i++ {
			if err := tg.db.QueryRowContext(tg.ctx, `SELECT name, value FROM bench WHERE id = ?`, i%1000+1).Scan(&name, &value); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkQuery10Rows(b *testing.B) {
	runTargets(b, func(b *testing.B, tg benchTarget) {
		var id, value int
		var name string
		for i := 0; b.Loop(); i++ {
			rows, err := tg.db.QueryContext(tg.ctx, `SELECT id, name, value FROM bench WHERE id > ? ORDER BY id LIMIT 10`, i%900)
			if err != nil {
				b.Fatal(err)
			}
			n := 0
			for rows.Next() {
				if err := rows.Scan(&id, &name, &value); err != nil {
					b.Fatal(err)
				}
				n++
			}
			if err := rows.Close(); err != nil || n != 10 {
				b.Fatal(n, err)
			}
		}
	})
}

func BenchmarkTx5Inserts(b *testing.B) {
	runTargets(b, func(b *testing.B, tg benchTarget) {
		for i := 0; b.Loop(); i++ {
			tx, err := tg.db.BeginTx(tg.ctx, nil)
			if err != nil {
				b.Fatal(err)
			}
			for j := range 5 {
				if _, err := tx.ExecContext(tg.ctx, `INSERT INTO bench (name, value) VALUES (?, ?)`, "tx", i*5+j); err != nil {
					b.Fatal(err)
				}
			}
			if err := tx.Commit(); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkPreparedInsert(b *testing.B) {
	runTargets(b, func(b *testing.B, tg benchTarget) {
		st, err := tg.db.PrepareContext(tg.ctx, `INSERT INTO bench (name, value) VALUES (?, ?)`)
		if err != nil {
			b.Fatal(err)
		}
		defer st.Close()
		for i := 0; b.Loop(); i++ {
			if _, err := st.ExecContext(tg.ctx, "prep", i); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkRouting isolates the per-operation cost of routing: a statement
// that does almost nothing in SQLite, serially and from all cores.
func BenchmarkRouting(b *testing.B) {
	for _, tg := range benchTargets(b)[1:] {
		b.Run("op=exec/impl="+tg.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := tg.db.ExecContext(tg.ctx, `SELECT ?`, 1); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("op=query-parallel/impl="+tg.name, func(b *testing.B) {
			b.ReportAllocs()
			tg.db.SetMaxIdleConns(64)
			b.RunParallel(func(pb *testing.PB) {
				var v int
				for pb.Next() {
					if err := tg.db.QueryRowContext(tg.ctx, `SELECT ?`, 1).Scan(&v); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
