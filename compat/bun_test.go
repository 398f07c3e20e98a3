package compat_test

import (
	"context"
	"database/sql"
	"errors"
	"slices"
	"testing"
	"testing/fstest"
	"time"

	"github.com/mattn/go-sqlite3"
	"github.com/sqliteproxy/sqliteproxy"
	"github.com/sqliteproxy/sqliteproxy/sqliteproxytest"
	"github.com/uptrace/bun"
	"github.com/uptrace/bun/dialect/sqlitedialect"
	"github.com/uptrace/bun/migrate"
)

type bunAuthor struct {
	bun.BaseModel `bun:"table:authors"`

	ID        int64      `bun:",pk,autoincrement"`
	Name      string     `bun:",unique,notnull"`
	CreatedAt time.Time  `bun:",nullzero,notnull,default:current_timestamp"`
	Books     []*bunBook `bun:"rel:has-many,join:id=author_id"`
}

type bunBook struct {
	bun.BaseModel `bun:"table:books"`

	ID       int64      `bun:",pk,autoincrement"`
	AuthorID int64      `bun:",notnull"`
	Title    string     `bun:",notnull"`
	Author   *bunAuthor `bun:"rel:belongs-to,join:author_id=id"`
}

// TestBun hands the Proxy's *sql.DB to bun with the SQLite dialect.
func TestBun(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := sqliteproxytest.New(t, sqliteproxy.Config{Dir: dir, ForeignKeys: true})
	db := bun.NewDB(p.DB, sqlitedialect.New())
	exerciseBun(t, db)
	requireTenantFiles(t, dir, tenantA, tenantB)
}

// TestBun_SQLOpen opens the driver by name with database/sql.
func TestBun_SQLOpen(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	sqldb, err := sql.Open(sqliteproxy.DriverName, "dir="+dir+"&foreign_keys=true")
	if err != nil {
		t.Fatal(err)
	}
	db := bun.NewDB(sqldb, sqlitedialect.New())
	defer db.Close()
	exerciseBun(t, db)
	requireTenantFiles(t, dir, tenantA, tenantB)
}

func bunCreateSchema(ctx context.Context, db bun.IDB) error {
	if _, err := db.NewCreateTable().Model((*bunAuthor)(nil)).IfNotExists().Exec(ctx); err != nil {
		return err
	}
	_, err := db.NewCreateTable().Model((*bunBook)(nil)).IfNotExists().
		ForeignKey(`("author_id") REFERENCES "authors" ("id") ON DELETE CASCADE`).Exec(ctx)
	return err
}

func bunNames(t *testing.T, ctx context.Context, db bun.IDB) []string {
	t.Helper()
	var names []string
	if err := db.NewSelect().Model((*bunAuthor)(nil)).Column("name").Order("name").Scan(ctx, &names); err != nil {
		t.Fatalf("author names: %v", err)
	}
	return names
}

func exerciseBun(t *testing.T, db *bun.DB) {
	ctxA, ctxB := sqliteproxytest.Context(t, tenantA), sqliteproxytest.Context(t, tenantB)

	if err := bunCreateSchema(context.Background(), db); !errors.Is(err, sqliteproxy.ErrNoTenant) {
		t.Errorf("CreateTable without tenant: %v, want ErrNoTenant", err)
	}
	for _, ctx := range []context.Context{ctxA, ctxB} {
		if err := bunCreateSchema(ctx, db); err != nil {
			t.Fatalf("CreateTable: %v", err)
		}
	}

	// Insert: bun fills in the ids SQLite assigns.
	ann := &bunAuthor{Name: "ann"}
	res, err := db.NewInsert().Model(ann).Exec(ctxA)
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := res.RowsAffected(); n != 1 {
		t.Errorf("insert ann: %d rows", n)
	}
	ben := &bunAuthor{Name: "ben"}
	var returned int64
	if err := db.NewInsert().Model(ben).Returning("id").Scan(ctxA, &returned); err != nil {
		t.Fatal(err)
	}
	if ann.ID != 1 || returned != 2 {
		t.Errorf("ids on A: ann %d, ben RETURNING %d; want 1, 2", ann.ID, returned)
	}
	ben.ID = returned // Scan with a destination fills the destination, not the model
	books := []*bunBook{{AuthorID: ann.ID, Title: "Dune"}, {AuthorID: ann.ID, Title: "Emma"}, {AuthorID: returned, Title: "Ulysses"}}
	if _, err := db.NewInsert().Model(&books).Exec(ctxA); err != nil {
		t.Fatal(err)
	}
	if books[0].ID != 1 || books[2].ID != 3 {
		t.Errorf("book ids: %d, %d", books[0].ID, books[2].ID)
	}
	gus := &bunAuthor{Name: "gus"}
	if _, err := db.NewInsert().Model(gus).Returning("id").Exec(ctxB); err != nil {
		t.Fatal(err)
	}
	if gus.ID != 1 {
		t.Errorf("gus.ID = %d, want 1 (tenant B's own sequence)", gus.ID)
	}
	if _, err := db.NewInsert().Model(&bunBook{AuthorID: gus.ID, Title: "Kim"}).Exec(ctxB); err != nil {
		t.Fatal(err)
	}

	// Select with the has-many and the belongs-to relations.
	var authors []bunAuthor
	if err := db.NewSelect().Model(&authors).Relation("Books", func(q *bun.SelectQuery) *bun.SelectQuery {
		return q.Order("title")
	}).Order("name").Scan(ctxA); err != nil {
		t.Fatal(err)
	}
	if len(authors) != 2 || len(authors[0].Books) != 2 || authors[0].Books[1].Title != "Emma" || len(authors[1].Books) != 1 {
		t.Errorf("authors with books on A: %+v", authors)
	}
	if len(authors) > 0 && time.Since(authors[0].CreatedAt).Abs() > time.Hour {
		t.Errorf("created_at = %v", authors[0].CreatedAt)
	}
	// ScanAndCount runs its two queries concurrently, both for tenant A.
	var page []bunBook
	count, err := db.NewSelect().Model(&page).Order("id").Limit(2).ScanAndCount(ctxA)
	if err != nil || count != 3 || len(page) != 2 {
		t.Errorf("ScanAndCount on A: %d, %d rows, %v", count, len(page), err)
	}
	var book bunBook
	if err := db.NewSelect().Model(&book).Relation("Author").Where("?TableAlias.title = ?", "Ulysses").Scan(ctxA); err != nil {
		t.Fatal(err)
	}
	if book.Author == nil || book.Author.Name != "ben" {
		t.Errorf("Ulysses' author: %+v", book.Author)
	}

	// Isolation.
	var got bunAuthor
	if err := db.NewSelect().Model(&got).Where("id = ?", ann.ID).Scan(ctxB); err != nil || got.Name != "gus" {
		t.Errorf("author %d on B: %+v, %v", ann.ID, got, err)
	}
	if n, err := db.NewSelect().Model((*bunBook)(nil)).Count(ctxB); err != nil || n != 1 {
		t.Errorf("books on B: %d, %v", n, err)
	}
	if err := db.NewSelect().Model(&got).Where("name = ?", "ann").Scan(ctxB); !errors.Is(err, sql.ErrNoRows) {
		t.Errorf("ann on B: %v", err)
	}

	// Update, delete (cascading to books), constraint errors.
	ben.Name = "benedict"
	if _, err := db.NewUpdate().Model(ben).Column("name").WherePK().Exec(ctxA); err != nil {
		t.Fatal(err)
	}
	res, err = db.NewDelete().Model(ben).WherePK().Exec(ctxA)
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := res.RowsAffected(); n != 1 {
		t.Errorf("delete ben: %d rows", n)
	}
	if n, err := db.NewSelect().Model((*bunBook)(nil)).Count(ctxA); err != nil || n != 2 {
		t.Errorf("books on A after delete: %d, %v; want 2", n, err)
	}
	var serr sqlite3.Error
	if _, err := db.NewInsert().Model(&bunAuthor{Name: "ann"}).Exec(ctxA); !errors.As(err, &serr) || serr.ExtendedCode != sqlite3.ErrConstraintUnique {
		t.Errorf("duplicate: %v, want SQLITE_CONSTRAINT_UNIQUE", err)
	}
	if _, err := db.NewInsert().Model(&bunBook{AuthorID: 42, Title: "x"}).Exec(ctxB); !errors.As(err, &serr) || serr.ExtendedCode != sqlite3.ErrConstraintForeignKey {
		t.Errorf("missing author: %v, want SQLITE_CONSTRAINT_FOREIGNKEY", err)
	}

	// RunInTx: rolled back on error, committed otherwise.
	boom := errors.New("boom")
	err = db.RunInTx(ctxA, nil, func(ctx context.Context, tx bun.Tx) error {
		if _, err := tx.NewInsert().Model(&bunAuthor{Name: "cid"}).Exec(ctx); err != nil {
			return err
		}
		if names := bunNames(t, ctx, tx); !slices.Contains(names, "cid") {
			t.Errorf("cid not visible in his tx: %v", names)
		}
		// The tx belongs to A: B's context runs nowhere.
		if _, err := tx.NewDelete().Model((*bunAuthor)(nil)).Where("1 = 1").Exec(ctxB); !errors.Is(err, sqliteproxy.ErrTenantMismatch) {
			t.Errorf("B's context in A's tx: %v, want ErrTenantMismatch", err)
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Errorf("RunInTx: %v", err)
	}
	err = db.RunInTx(ctxB, &sql.TxOptions{}, func(ctx context.Context, tx bun.Tx) error {
		hal := &bunAuthor{Name: "hal"}
		if _, err := tx.NewInsert().Model(hal).Exec(ctx); err != nil {
			return err
		}
		_, err := tx.NewInsert().Model(&[]bunBook{{AuthorID: hal.ID, Title: "Ion"}, {AuthorID: hal.ID, Title: "Jaws"}}).Exec(ctx)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.RunInTx(context.Background(), nil, func(context.Context, bun.Tx) error { return nil }); !errors.Is(err, sqliteproxy.ErrNoTenant) {
		t.Errorf("RunInTx without tenant: %v, want ErrNoTenant", err)
	}

	if names := bunNames(t, ctxA, db); !slices.Equal(names, []string{"ann"}) {
		t.Errorf("authors on A: %v", names)
	}
	if names := bunNames(t, ctxB, db); !slices.Equal(names, []string{"gus", "hal"}) {
		t.Errorf("authors on B: %v", names)
	}
	var titles []string
	if err := db.NewSelect().Model((*bunBook)(nil)).Column("title").Order("title").Scan(ctxB, &titles); err != nil || !slices.Equal(titles, []string{"Ion", "Jaws", "Kim"}) {
		t.Errorf("titles on B: %v, %v", titles, err)
	}
}

// bunMigrations are bun/migrate SQL migrations: one in a transaction
// (.tx.up.sql), one on a *sql.Conn (.up.sql).
var bunMigrations = fstest.MapFS{
	"20250101000000_authors.tx.up.sql": {Data: []byte(`
CREATE TABLE authors (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  name VARCHAR NOT NULL UNIQUE,
  created_at TIMESTAMP NOT NULL DEFAULT current_timestamp
);
--bun:split
CREATE TABLE books (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  author_id INTEGER NOT NULL REFERENCES authors (id) ON DELETE CASCADE,
  title VARCHAR NOT NULL
);
`)},
	"20250101000000_authors.tx.down.sql": {Data: []byte("DROP TABLE books;\nDROP TABLE authors;\n")},
	"20250102000000_titles.up.sql":       {Data: []byte("CREATE INDEX books_title ON books (title);\n")},
	"20250102000000_titles.down.sql":     {Data: []byte("DROP INDEX books_title;\n")},
}

// TestBun_Migrate runs bun's migrator once per tenant, then rolls one
// tenant back.
func TestBun_Migrate(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := sqliteproxytest.New(t, sqliteproxy.Config{Dir: dir, ForeignKeys: true})
	db := bun.NewDB(p.DB, sqlitedialect.New())
	migrations := migrate.NewMigrations()
	if err := migrations.Discover(bunMigrations); err != nil {
		t.Fatal(err)
	}
	migrator := migrate.NewMigrator(db, migrations)
	if err := migrator.Init(context.Background()); !errors.Is(err, sqliteproxy.ErrNoTenant) {
		t.Errorf("Init without tenant: %v, want ErrNoTenant", err)
	}
	migrateTenant := func(ctx context.Context) *migrate.MigrationGroup {
		t.Helper()
		if err := migrator.Init(ctx); err != nil {
			t.Fatal(err)
		}
		if err := migrator.Lock(ctx); err != nil {
			t.Fatal(err)
		}
		defer migrator.Unlock(ctx)
		group, err := migrator.Migrate(ctx)
		if err != nil {
			t.Fatalf("Migrate: %v", err)
		}
		return group
	}
	for _, id := range []string{tenantA, tenantB} {
		if g := migrateTenant(sqliteproxytest.Context(t, id)); g.ID != 1 || len(g.Migrations) != 2 {
			t.Errorf("%s: migrated %v", id, g)
		}
	}
	if g := migrateTenant(sqliteproxytest.Context(t, tenantA)); !g.IsZero() {
		t.Errorf("second Migrate on A: %v", g)
	}

	ctxA, ctxB := sqliteproxytest.Context(t, tenantA), sqliteproxytest.Context(t, tenantB)
	ann := &bunAuthor{Name: "ann"}
	if _, err := db.NewInsert().Model(ann).Exec(ctxA); err != nil {
		t.Fatal(err)
	}
	if _, err := db.NewInsert().Model(&bunBook{AuthorID: ann.ID, Title: "Dune"}).Exec(ctxA); err != nil {
		t.Fatal(err)
	}
	group, err := migrator.Rollback(ctxB)
	if err != nil || group.ID != 1 || len(group.Migrations) != 2 {
		t.Fatalf("Rollback on B: %v, %v", group, err)
	}
	if _, err := db.NewSelect().Model((*bunAuthor)(nil)).Count(ctxB); err == nil {
		t.Error("authors still exists on B after Rollback")
	}
	if n, err := db.NewSelect().Model((*bunBook)(nil)).Count(ctxA); err != nil || n != 1 {
		t.Errorf("books on A: %d, %v", n, err)
	}
	applied, err := migrator.AppliedMigrations(ctxA)
	if err != nil || len(applied) != 2 {
		t.Errorf("applied on A: %v, %v", applied, err)
	}
	if applied, err := migrator.AppliedMigrations(ctxB); err != nil || len(applied) != 0 {
		t.Errorf("applied on B: %v, %v", applied, err)
	}
	requireTenantFiles(t, dir, tenantA, tenantB)
}
