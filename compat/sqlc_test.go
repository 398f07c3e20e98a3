package compat_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"testing"

	"github.com/mattn/go-sqlite3"
	"github.com/sqliteproxy/sqliteproxy"
	"github.com/sqliteproxy/sqliteproxy/compat/sqlc/sqlcdb"
	"github.com/sqliteproxy/sqliteproxy/sqliteproxytest"
)

// newSQLCProxy opens a Proxy whose only migration is sqlc's schema.sql.
func newSQLCProxy(t *testing.T, dir string) *sqliteproxy.Proxy {
	t.Helper()
	schema, err := os.ReadFile("sqlc/schema.sql")
	if err != nil {
		t.Fatal(err)
	}
	return sqliteproxytest.New(t, sqliteproxy.Config{Dir: dir, ForeignKeys: true, Migrations: []string{string(schema)}})
}

func sqlcNames(t *testing.T, ctx context.Context, q *sqlcdb.Queries) []string {
	t.Helper()
	authors, err := q.ListAuthors(ctx)
	if err != nil {
		t.Fatalf("ListAuthors: %v", err)
	}
	var names []string
	for _, a := range authors {
		names = append(names, a.Name)
	}
	return names
}

// TestSQLC_Prepared prepares sqlc's queries once, at start-up, with a
// context that names no tenant (emit_prepared_queries: true), then uses
// them for both tenants.
func TestSQLC_Prepared(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := newSQLCProxy(t, dir)
	q, err := sqlcdb.Prepare(context.Background(), p.DB)
	if err != nil {
		t.Fatalf("Prepare without tenant: %v", err)
	}
	defer q.Close()
	requireTenantFiles(t, dir) // preparing opened no tenant
	exerciseSQLC(t, p, q)
	requireTenantFiles(t, dir, tenantA, tenantB)
}

// TestSQLC_New uses sqlc's queries unprepared.
func TestSQLC_New(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := newSQLCProxy(t, dir)
	exerciseSQLC(t, p, sqlcdb.New(p.DB))
	requireTenantFiles(t, dir, tenantA, tenantB)
}

// TestSQLC_PreparedConcurrent shares the prepared statements between
// goroutines working for both tenants at once.
func TestSQLC_PreparedConcurrent(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := newSQLCProxy(t, dir)
	q, err := sqlcdb.Prepare(context.Background(), p.DB)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	const workers, each = 4, 20
	var wg sync.WaitGroup
	for _, id := range []string{tenantA, tenantB} {
		for w := range workers {
			wg.Go(func() {
				ctx := sqliteproxytest.Context(t, id)
				for i := range each {
					a, err := q.CreateAuthor(ctx, sqlcdb.CreateAuthorParams{Name: fmt.Sprintf("%s-%d-%d", id, w, i)})
					if err != nil {
						t.Error(err)
						return
					}
					got, err := q.GetAuthor(ctx, a.ID)
					if err != nil || got.Name != a.Name {
						t.Errorf("GetAuthor(%d) on %s = %v, %v; want %s", a.ID, id, got.Name, err, a.Name)
						return
					}
				}
			})
		}
	}
	wg.Wait()
	for _, id := range []string{tenantA, tenantB} {
		names := sqlcNames(t, sqliteproxytest.Context(t, id), q)
		if len(names) != workers*each {
			t.Errorf("%s: %d authors, want %d", id, len(names), workers*each)
		}
		for _, n := range names {
			if n[:len(id)] != id {
				t.Errorf("%s holds %s", id, n)
			}
		}
	}
}

func exerciseSQLC(t *testing.T, p *sqliteproxy.Proxy, q *sqlcdb.Queries) {
	ctxA, ctxB := sqliteproxytest.Context(t, tenantA), sqliteproxytest.Context(t, tenantB)

	if _, err := q.ListAuthors(context.Background()); !errors.Is(err, sqliteproxy.ErrNoTenant) {
		t.Errorf("ListAuthors without tenant: %v, want ErrNoTenant", err)
	}

	ann, err := q.CreateAuthor(ctxA, sqlcdb.CreateAuthorParams{Name: "ann", Bio: sql.NullString{String: "novelist", Valid: true}})
	if err != nil {
		t.Fatalf("CreateAuthor: %v", err)
	}
	ben, err := q.CreateAuthor(ctxA, sqlcdb.CreateAuthorParams{Name: "ben"})
	if err != nil {
		t.Fatal(err)
	}
	gus, err := q.CreateAuthor(ctxB, sqlcdb.CreateAuthorParams{Name: "gus"})
	if err != nil {
		t.Fatal(err)
	}
	if ann.ID != 1 || ben.ID != 2 || gus.ID != 1 || ann.Bio.String != "novelist" || ben.Bio.Valid {
		t.Errorf("RETURNING rows: %+v %+v %+v", ann, ben, gus)
	}
	for _, post := range []sqlcdb.CreatePostParams{{AuthorID: ann.ID, Title: "Dune"}, {AuthorID: ben.ID, Title: "Emma"}, {AuthorID: ann.ID, Title: "Ulysses"}} {
		if _, err := q.CreatePost(ctxA, post); err != nil {
			t.Fatal(err)
		}
	}
	if id, err := q.CreatePost(ctxB, sqlcdb.CreatePostParams{AuthorID: gus.ID, Title: "Kim"}); err != nil || id != 1 {
		t.Errorf("CreatePost on B: id %d, %v; want 1", id, err)
	}

	// Isolation: the same id is another row in each tenant.
	if a, err := q.GetAuthor(ctxB, ann.ID); err != nil || a.Name != "gus" {
		t.Errorf("GetAuthor(%d) on B = %+v, %v", ann.ID, a, err)
	}
	if _, err := q.GetAuthor(ctxB, ben.ID); !errors.Is(err, sql.ErrNoRows) {
		t.Errorf("GetAuthor(%d) on B: %v, want ErrNoRows", ben.ID, err)
	}
	if _, err := q.GetAuthorByName(ctxB, "ann"); !errors.Is(err, sql.ErrNoRows) {
		t.Errorf("ann on B: %v", err)
	}
	if names := sqlcNames(t, ctxA, q); !slices.Equal(names, []string{"ann", "ben"}) {
		t.Errorf("A: %v", names)
	}
	if names := sqlcNames(t, ctxB, q); !slices.Equal(names, []string{"gus"}) {
		t.Errorf("B: %v", names)
	}
	posts, err := q.ListPostsWithAuthor(ctxA)
	if err != nil || len(posts) != 3 || posts[1].Author != "ben" || posts[2].Title != "Ulysses" {
		t.Errorf("posts on A: %+v, %v", posts, err)
	}
	if n, err := q.CountPosts(ctxB); err != nil || n != 1 {
		t.Errorf("CountPosts on B: %d, %v", n, err)
	}
	// sqlc.slice queries are built per call and never prepared.
	some, err := q.ListAuthorsByIDs(ctxA, []int64{ben.ID, 7})
	if err != nil || len(some) != 1 || some[0].Name != "ben" {
		t.Errorf("ListAuthorsByIDs on A: %+v, %v", some, err)
	}

	// Updates, deletes and errors.
	if err := q.UpdateAuthorBio(ctxB, sqlcdb.UpdateAuthorBioParams{ID: gus.ID, Bio: sql.NullString{String: "poet", Valid: true}}); err != nil {
		t.Fatal(err)
	}
	if a, _ := q.GetAuthor(ctxA, 1); a.Bio.String != "novelist" {
		t.Errorf("B's update reached A: %+v", a)
	}
	var serr sqlite3.Error
	if _, err := q.CreateAuthor(ctxA, sqlcdb.CreateAuthorParams{Name: "ann"}); !errors.As(err, &serr) || serr.ExtendedCode != sqlite3.ErrConstraintUnique {
		t.Errorf("duplicate: %v, want SQLITE_CONSTRAINT_UNIQUE", err)
	}
	if n, err := q.DeleteAuthor(ctxA, ben.ID); err != nil || n != 1 {
		t.Errorf("DeleteAuthor: %d, %v", n, err)
	}
	if n, err := q.CountPosts(ctxA); err != nil || n != 2 {
		t.Errorf("posts on A after cascade: %d, %v; want 2", n, err)
	}

	// WithTx: rolled back, then committed.
	tx, err := p.BeginTx(ctxA, nil)
	if err != nil {
		t.Fatal(err)
	}
	qtx := q.WithTx(tx)
	cid, err := qtx.CreateAuthor(ctxA, sqlcdb.CreateAuthorParams{Name: "cid"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := qtx.CreatePost(ctxA, sqlcdb.CreatePostParams{AuthorID: cid.ID, Title: "Ion"}); err != nil {
		t.Fatal(err)
	}
	// A context without tenant runs in the transaction's tenant.
	if names := sqlcNames(t, context.Background(), qtx); !slices.Equal(names, []string{"ann", "cid"}) {
		t.Errorf("in tx, no tenant in ctx: %v", names)
	}
	if _, err := qtx.CountPosts(ctxB); !errors.Is(err, sqliteproxy.ErrTenantMismatch) {
		t.Errorf("B's context in A's tx: %v, want ErrTenantMismatch", err)
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	tx, err = p.BeginTx(ctxB, nil)
	if err != nil {
		t.Fatal(err)
	}
	qtx = q.WithTx(tx)
	hal, err := qtx.CreateAuthor(ctxB, sqlcdb.CreateAuthorParams{Name: "hal"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := qtx.ListAuthorsByIDs(ctxB, []int64{hal.ID}); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}

	if names := sqlcNames(t, ctxA, q); !slices.Equal(names, []string{"ann"}) {
		t.Errorf("A at the end: %v", names)
	}
	if names := sqlcNames(t, ctxB, q); !slices.Equal(names, []string{"gus", "hal"}) {
		t.Errorf("B at the end: %v", names)
	}
}
