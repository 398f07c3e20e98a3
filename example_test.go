package sqliteproxy_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log"
	"os"
	"testing/fstest"

	"github.com/sqliteproxy/sqliteproxy"
)

func ExampleNew() {
	dir, _ := os.MkdirTemp("", "sqliteproxy-example")
	defer os.RemoveAll(dir)

	p, err := sqliteproxy.New(sqliteproxy.Config{
		Dir:            dir,
		MaxConnections: 100,
		Migrations: []string{
			`CREATE TABLE events (id INTEGER PRIMARY KEY, type TEXT NOT NULL)`,
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer p.Close()

	for _, tenant := range []string{"acme", "globex", "acme"} {
		ctx := sqliteproxy.WithOrgID(context.Background(), tenant)
		if _, err := p.ExecContext(ctx, `INSERT INTO events (type) VALUES ('signup')`); err != nil {
			log.Fatal(err)
		}
	}
	for _, tenant := range []string{"acme", "globex"} {
		ctx := sqliteproxy.WithOrgID(context.Background(), tenant)
		var n int
		if err := p.QueryRowContext(ctx, `SELECT count(*) FROM events`).Scan(&n); err != nil {
			log.Fatal(err)
		}
		fmt.Printf("%s: %d events\n", tenant, n)
	}
	ids, _ := p.Tenants(context.Background())
	fmt.Println(ids)
	// Output:
	// acme: 2 events
	// globex: 1 events
	// [acme globex]
}

func Example_sqlOpen() {
	dir, _ := os.MkdirTemp("", "sqliteproxy-example")
	defer os.RemoveAll(dir)

	db, err := sql.Open("sqliteproxy", "dir="+dir+"&max_connections=50")
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()

	ctx := sqliteproxy.WithOrgID(context.Background(), "acme")
	if _, err := db.ExecContext(ctx, `CREATE TABLE notes (body TEXT); INSERT INTO notes VALUES ('hello')`); err != nil {
		log.Fatal(err)
	}
	var body string
	if err := db.QueryRowContext(ctx, `SELECT body FROM notes`).Scan(&body); err != nil {
		log.Fatal(err)
	}
	fmt.Println(body)

	// Without a tenant, data is out of reach.
	_, err = db.ExecContext(context.Background(), `SELECT * FROM notes`)
	fmt.Println(errors.Is(err, sqliteproxy.ErrNoTenant))
	// Output:
	// hello
	// true
}

func ExampleWithOrgID() {
	// Middleware puts the tenant into the request's context ...
	ctx := sqliteproxy.WithOrgID(context.Background(), "acme-corp")
	// ... and the driver (or your code) reads it back.
	id, ok := sqliteproxy.OrgID(ctx)
	fmt.Println(id, ok)
	fmt.Println(sqliteproxy.ValidTenantID("../etc/passwd") != nil)
	// Output:
	// acme-corp true
	// true
}

func ExampleProxy_Rollback() {
	dir, _ := os.MkdirTemp("", "sqliteproxy-example")
	defer os.RemoveAll(dir)

	// Usually an embed.FS or Config.MigrationsDir.
	migrations := fstest.MapFS{
		"0001_init.sql":          {Data: []byte(`CREATE TABLE events (id INTEGER PRIMARY KEY, type TEXT NOT NULL)`)},
		"0002_severity.up.sql":   {Data: []byte(`ALTER TABLE events ADD COLUMN severity TEXT NOT NULL DEFAULT 'info'`)},
		"0002_severity.down.sql": {Data: []byte(`ALTER TABLE events DROP COLUMN severity`)},
	}
	// Manual mode: nothing is applied on access, so the rollback stays.
	p, err := sqliteproxy.New(sqliteproxy.Config{Dir: dir, MigrationsFS: migrations, MigrationMode: sqliteproxy.MigrateManual})
	if err != nil {
		log.Fatal(err)
	}
	defer p.Close()
	ctx := context.Background()
	for _, tenant := range []string{"acme", "globex"} {
		if err := p.CreateTenant(ctx, tenant); err != nil {
			log.Fatal(err)
		}
	}

	rep, err := p.Rollback(ctx, sqliteproxy.RollbackOptions{To: 1})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%d tenants rolled back, %d failed\n", rep.Migrated, len(rep.Failed))
	st, _ := p.MigrationStatus(ctx, "acme")
	fmt.Println(len(st.Applied), st.Pending, st.Mode)
	// Output:
	// 2 tenants rolled back, 0 failed
	// 1 [0002_severity.up.sql] manual
}

func ExampleWithFanOut() {
	dir, _ := os.MkdirTemp("", "sqliteproxy-example")
	defer os.RemoveAll(dir)
	p, err := sqliteproxy.New(sqliteproxy.Config{
		Dir:        dir,
		Migrations: []string{`CREATE TABLE events (id INTEGER PRIMARY KEY, type TEXT NOT NULL)`},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer p.Close()
	for _, tenant := range []string{"globex", "acme", "acme", "initech"} {
		ctx := sqliteproxy.WithOrgID(context.Background(), tenant)
		if _, err := p.ExecContext(ctx, `INSERT INTO events (type) VALUES ('signup')`); err != nil {
			log.Fatal(err)
		}
	}

	// One query, every tenant: the tenant column comes first.
	ctx := sqliteproxy.WithFanOut(context.Background(), sqliteproxy.FanOutOptions{})
	rows, err := p.QueryContext(ctx, `SELECT count(*) AS n FROM events`)
	if err != nil {
		log.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var tenant string
		var n int
		if err := rows.Scan(&tenant, &n); err != nil {
			log.Fatal(err)
		}
		fmt.Printf("%s: %d\n", tenant, n)
	}
	if err := rows.Err(); err != nil {
		log.Fatal(err)
	}

	// Listed tenants only; one that does not exist is skipped and reported.
	ctx = sqliteproxy.WithFanOut(context.Background(), sqliteproxy.FanOutOptions{
		Tenants:    []string{"initech", "absent"},
		SkipErrors: true,
		OnSkip: func(tenant string, err error) {
			fmt.Println("skipped", tenant, errors.Is(err, sqliteproxy.ErrTenantNotFound))
		},
	})
	var tenant string
	var n int
	if err := p.QueryRowContext(ctx, `SELECT count(*) FROM events`).Scan(&tenant, &n); err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s: %d\n", tenant, n)

	// A fan-out only reads.
	_, err = p.ExecContext(ctx, `DELETE FROM events`)
	fmt.Println(errors.Is(err, sqliteproxy.ErrFanOutWrite))
	// Output:
	// acme: 2
	// globex: 1
	// initech: 1
	// skipped absent true
	// initech: 1
	// true
}
