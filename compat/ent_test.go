package compat_test

import (
	"context"
	"database/sql"
	"errors"
	"slices"
	"strings"
	"testing"

	"entgo.io/ent/dialect"
	entsql "entgo.io/ent/dialect/sql"
	"github.com/sqliteproxy/sqliteproxy"
	"github.com/sqliteproxy/sqliteproxy/compat/ent"
	"github.com/sqliteproxy/sqliteproxy/compat/ent/pet"
	"github.com/sqliteproxy/sqliteproxy/compat/ent/user"
	"github.com/sqliteproxy/sqliteproxy/sqliteproxytest"
)

// TestEnt_Proxy hands the Proxy's *sql.DB to ent as an SQLite driver.
func TestEnt_Proxy(t *testing.T) {
	// Serial: ent's Schema.Create writes the generated, package-level
	// migrate.Tables (two at once are a data race).
	dir := t.TempDir()
	// ent's schema migration refuses to run with foreign keys off.
	p := sqliteproxytest.New(t, sqliteproxy.Config{Dir: dir, ForeignKeys: true})
	client := ent.NewClient(ent.Driver(entsql.OpenDB(dialect.SQLite, p.DB)))
	exerciseEnt(t, client)
	requireTenantFiles(t, dir, tenantA, tenantB)
}

// TestEnt_SQLOpen opens the driver by name with database/sql. ent needs
// the dialect name "sqlite3", so entsql.Open("sqliteproxy", dsn) will not
// do: wrap the *sql.DB with entsql.OpenDB.
func TestEnt_SQLOpen(t *testing.T) {
	// Serial: ent's Schema.Create, as in TestEnt_Proxy.
	dir := t.TempDir()
	db, err := sql.Open(sqliteproxy.DriverName, "dir="+dir+"&foreign_keys=true")
	if err != nil {
		t.Fatal(err)
	}
	client := ent.NewClient(ent.Driver(entsql.OpenDB(dialect.SQLite, db)))
	defer client.Close() // closes db
	exerciseEnt(t, client)
	requireTenantFiles(t, dir, tenantA, tenantB)
}

// TestEnt_ForeignKeysOff records ent's requirement: its schema migration
// fails on SQLite connections without foreign keys (Config.ForeignKeys, or
// foreign_keys=true in the DSN).
func TestEnt_ForeignKeysOff(t *testing.T) {
	// Serial: ent's Schema.Create, as in TestEnt_Proxy.
	p := sqliteproxytest.New(t, sqliteproxy.Config{})
	client := ent.NewClient(ent.Driver(entsql.OpenDB(dialect.SQLite, p.DB)))
	err := client.Schema.Create(sqliteproxytest.Context(t, tenantA))
	if err == nil || !strings.Contains(err.Error(), "foreign_keys pragma is off") {
		t.Errorf("Schema.Create with foreign keys off: %v, want ent's foreign_keys error", err)
	}
}

// TestEnt_UpgradeOldSchema lets Schema.Create rebuild the tables of a
// tenant created by an older version of the application. ent runs "PRAGMA
// foreign_keys = off" with db.Exec and then copies the tables in a
// transaction: both reach the tenant's writer, so the copy does not cascade
// and pets keep their owner.
func TestEnt_UpgradeOldSchema(t *testing.T) {
	// Serial: ent's Schema.Create, as in TestEnt_Proxy.
	dir := t.TempDir()
	p := sqliteproxytest.New(t, sqliteproxy.Config{Dir: dir, ForeignKeys: true})
	ctx := sqliteproxytest.Context(t, tenantA)
	for _, q := range []string{
		// name was nullable and age did not exist.
		"CREATE TABLE users (id integer PRIMARY KEY AUTOINCREMENT, name text NULL, created_at datetime NOT NULL DEFAULT CURRENT_TIMESTAMP)",
		"CREATE TABLE pets (id integer PRIMARY KEY AUTOINCREMENT, name text NOT NULL, user_pets integer NULL, CONSTRAINT pets_users_pets FOREIGN KEY (user_pets) REFERENCES users (id) ON DELETE SET NULL)",
		"INSERT INTO users (name) VALUES ('olga')",
		"INSERT INTO pets (name, user_pets) VALUES ('rex', 1)",
	} {
		if _, err := p.ExecContext(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	client := ent.NewClient(ent.Driver(entsql.OpenDB(dialect.SQLite, p.DB)))
	if err := client.Schema.Create(ctx); err != nil {
		t.Fatalf("Schema.Create over the old schema: %v", err)
	}
	owner, err := client.Pet.Query().Where(pet.Name("rex")).QueryOwner().Only(ctx)
	if err != nil || owner.Name != "olga" {
		t.Errorf("rex's owner after the upgrade: %v, %v", owner, err)
	}
	if _, err := client.User.UpdateOne(owner).SetAge(40).Save(ctx); err != nil {
		t.Errorf("new column: %v", err)
	}
	if _, err := client.Pet.Create().SetName("ghost").SetOwnerID(99).Save(ctx); !ent.IsConstraintError(err) {
		t.Errorf("foreign keys after the upgrade: %v, want a constraint error", err)
	}
	if err := client.Schema.Create(sqliteproxytest.Context(t, tenantB)); err != nil {
		t.Fatal(err)
	}
	if n, err := client.Pet.Query().Count(sqliteproxytest.Context(t, tenantB)); err != nil || n != 0 {
		t.Errorf("pets on B: %d, %v", n, err)
	}
	requireTenantFiles(t, dir, tenantA, tenantB)
}

func entNames(t *testing.T, ctx context.Context, c *ent.Client) []string {
	t.Helper()
	names, err := c.User.Query().Order(ent.Asc(user.FieldName)).Select(user.FieldName).Strings(ctx)
	if err != nil {
		t.Fatalf("user names: %v", err)
	}
	return names
}

func exerciseEnt(t *testing.T, client *ent.Client) {
	ctxA, ctxB := sqliteproxytest.Context(t, tenantA), sqliteproxytest.Context(t, tenantB)

	if err := client.Schema.Create(context.Background()); !errors.Is(err, sqliteproxy.ErrNoTenant) {
		t.Errorf("Schema.Create without tenant: %v, want ErrNoTenant", err)
	}
	// Schema per tenant; a second run finds nothing to do.
	for _, ctx := range []context.Context{ctxA, ctxB, ctxA} {
		if err := client.Schema.Create(ctx); err != nil {
			t.Fatalf("Schema.Create: %v", err)
		}
	}

	// Create, with edges.
	alice, err := client.User.Create().SetName("alice").SetAge(30).Save(ctxA)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.Pet.CreateBulk(
		client.Pet.Create().SetName("rex").SetOwner(alice),
		client.Pet.Create().SetName("tom").SetOwner(alice),
		client.Pet.Create().SetName("stray"),
	).Save(ctxA); err != nil {
		t.Fatal(err)
	}
	gina, err := client.User.Create().SetName("gina").Save(ctxB)
	if err != nil {
		t.Fatal(err)
	}
	if gina.ID != alice.ID {
		t.Errorf("gina.ID = %d, want %d: each tenant has its own sequence", gina.ID, alice.ID)
	}
	if _, err := client.Pet.Create().SetName("nemo").SetOwnerID(gina.ID).Save(ctxB); err != nil {
		t.Fatal(err)
	}

	if got := client.User.GetX(ctxA, alice.ID); alice.CreatedAt.IsZero() || !got.CreatedAt.Equal(alice.CreatedAt) {
		t.Errorf("created_at: wrote %v, read %v", alice.CreatedAt, got.CreatedAt)
	}

	// Edge queries, both ways, and eager loading.
	pets, err := alice.QueryPets().Order(ent.Asc(pet.FieldName)).All(ctxA)
	if err != nil {
		t.Fatal(err)
	}
	if len(pets) != 2 || pets[0].Name != "rex" || pets[1].Name != "tom" {
		t.Errorf("alice's pets: %v", pets)
	}
	owner, err := client.Pet.Query().Where(pet.Name("rex")).QueryOwner().Only(ctxA)
	if err != nil || owner.Name != "alice" {
		t.Errorf("rex's owner: %v, %v", owner, err)
	}
	orphans, err := client.Pet.Query().Where(pet.Not(pet.HasOwner())).Count(ctxA)
	if err != nil || orphans != 1 {
		t.Errorf("orphans on A: %d, %v", orphans, err)
	}
	users, err := client.User.Query().Where(user.HasPetsWith(pet.Name("nemo"))).WithPets().All(ctxB)
	if err != nil {
		t.Fatal(err)
	}
	if len(users) != 1 || users[0].Name != "gina" || len(users[0].Edges.Pets) != 1 {
		t.Errorf("nemo's owners on B: %v", users)
	}

	// Isolation: the same ID is another row in each tenant.
	if u, err := client.User.Get(ctxB, alice.ID); err != nil || u.Name != "gina" {
		t.Errorf("user %d on B: %v, %v", alice.ID, u, err)
	}
	if n, err := client.Pet.Query().Count(ctxB); err != nil || n != 1 {
		t.Errorf("pets on B: %d, %v; want 1", n, err)
	}
	if _, err := client.User.Query().Where(user.Name("alice")).Only(ctxB); !ent.IsNotFound(err) {
		t.Errorf("alice on B: %v, want not found", err)
	}

	// Update and delete.
	if _, err := client.User.UpdateOne(alice).AddAge(1).Save(ctxA); err != nil {
		t.Fatal(err)
	}
	if n, err := client.Pet.Delete().Where(pet.Not(pet.HasOwner())).Exec(ctxA); err != nil || n != 1 {
		t.Errorf("delete orphans: %d, %v", n, err)
	}
	if age := client.User.GetX(ctxA, alice.ID).Age; age != 31 {
		t.Errorf("alice's age = %d", age)
	}

	// Constraint errors are SQLite's, as ent expects them.
	if _, err := client.User.Create().SetName("alice").Save(ctxA); !ent.IsConstraintError(err) {
		t.Errorf("duplicate name: %v, want a constraint error", err)
	}
	if _, err := client.Pet.Create().SetName("ghost").SetOwnerID(999).Save(ctxA); !ent.IsConstraintError(err) {
		t.Errorf("missing owner: %v, want a constraint error", err)
	}

	// Transactions: rolled back, then committed.
	tx, err := client.Tx(ctxA)
	if err != nil {
		t.Fatal(err)
	}
	bob := tx.User.Create().SetName("bob").SaveX(ctxA)
	tx.Pet.Create().SetName("fido").SetOwner(bob).SaveX(ctxA)
	if n := tx.Pet.Query().Where(pet.HasOwnerWith(user.Name("bob"))).CountX(ctxA); n != 1 {
		t.Errorf("bob's pets in tx: %d", n)
	}
	if _, err := tx.User.Query().All(ctxB); !errors.Is(err, sqliteproxy.ErrTenantMismatch) {
		t.Errorf("B's context in A's tx: %v, want ErrTenantMismatch", err)
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	if err := entWithTx(ctxA, client, func(tx *ent.Tx) error {
		carol, err := tx.User.Create().SetName("carol").Save(ctxA)
		if err != nil {
			return err
		}
		return tx.Pet.Create().SetName("felix").SetOwner(carol).Exec(ctxA)
	}); err != nil {
		t.Fatal(err)
	}
	// A transaction on B: a new user takes over gina's pets.
	if err := entWithTx(ctxB, client, func(tx *ent.Tx) error {
		hank, err := tx.User.Create().SetName("hank").Save(ctxB)
		if err != nil {
			return err
		}
		return tx.Pet.Update().Where(pet.HasOwnerWith(user.Name("gina"))).SetOwner(hank).Exec(ctxB)
	}); err != nil {
		t.Fatal(err)
	}

	if names := entNames(t, ctxA, client); !slices.Equal(names, []string{"alice", "carol"}) {
		t.Errorf("users on A: %v", names)
	}
	if names := entNames(t, ctxB, client); !slices.Equal(names, []string{"gina", "hank"}) {
		t.Errorf("users on B: %v", names)
	}
	if owner := client.Pet.Query().Where(pet.Name("nemo")).QueryOwner().OnlyX(ctxB); owner.Name != "hank" {
		t.Errorf("nemo's owner on B: %s", owner.Name)
	}
	if n := client.Pet.Query().CountX(ctxA); n != 3 {
		t.Errorf("pets on A: %d, want 3 (rex, tom, felix)", n)
	}

	if _, err := client.User.Query().All(context.Background()); !errors.Is(err, sqliteproxy.ErrNoTenant) {
		t.Errorf("query without tenant: %v, want ErrNoTenant", err)
	}
	if _, err := client.Tx(context.Background()); !errors.Is(err, sqliteproxy.ErrNoTenant) {
		t.Errorf("Tx without tenant: %v, want ErrNoTenant", err)
	}
}

// entWithTx is the helper from ent's documentation.
func entWithTx(ctx context.Context, client *ent.Client, fn func(tx *ent.Tx) error) error {
	tx, err := client.Tx(ctx)
	if err != nil {
		return err
	}
	defer func() {
		if v := recover(); v != nil {
			tx.Rollback()
			panic(v)
		}
	}()
	if err := fn(tx); err != nil {
		if rerr := tx.Rollback(); rerr != nil {
			err = errors.Join(err, rerr)
		}
		return err
	}
	return tx.Commit()
}
