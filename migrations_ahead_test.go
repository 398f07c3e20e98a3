package sqliteproxy

import (
	"context"
	"errors"
	"testing"
)

// A tenant ahead of a MigrateManual proxy's migrations (the CLI's migrate
// with the next release's directory) is served by a fan-out read as by an
// ordinary access, also before any ordinary access marked it checked (the
// fan-out refused it then: adv21).
func TestMigrateAhead_FanOutInManualMode(t *testing.T) {
	t.Parallel()
	ups := upsOnly(rollbackMigs)
	current := migrationsDir(t, without(ups, "0003_tags.up.sql"))
	next := migrationsDir(t, ups)
	dir := t.TempDir()
	cli := newTestProxy(t, Config{Dir: dir, MigrationsDir: next})
	if err := cli.CreateTenant(context.Background(), "ta"); err != nil {
		t.Fatal(err)
	}
	if err := cli.Close(); err != nil {
		t.Fatal(err)
	}
	svc := newTestProxy(t, Config{Dir: dir, MigrationsDir: current, MigrationMode: MigrateManual, MaxConnections: 4})
	rows, err := svc.QueryContext(WithFanOut(context.Background(), FanOutOptions{}), `SELECT count(*) FROM items`)
	if err == nil {
		for rows.Next() {
		}
		err = rows.Err()
		rows.Close()
	}
	if err != nil {
		t.Errorf("fan-out over an ahead tenant in manual mode: %v", err)
	}
	// Ordinary access serves it.
	if n := queryInt(t, svc, tctx("ta"), `SELECT count(*) FROM items`); n != 0 {
		t.Fatalf("items %d", n)
	}
}

// MigrateAll, Rollback and MigrationStatus from a manual-mode proxy over a
// tenant ahead of it change nothing in it, whether it is open or not: the
// first two report it failed (ErrMigrationDrift), the last counts it ahead.
func TestMigrateAhead_FleetOpsChangeNothing(t *testing.T) {
	t.Parallel()
	ups := rollbackMigs
	cur := map[string]string{}
	for k, v := range ups {
		if k != "0003_tags.up.sql" && k != "0003_tags.down.sql" {
			cur[k] = v
		}
	}
	current := migrationsDir(t, cur)
	next := migrationsDir(t, ups)
	dir := t.TempDir()
	cli := newTestProxy(t, Config{Dir: dir, MigrationsDir: next})
	for _, id := range []string{"ta", "tb"} {
		if err := cli.CreateTenant(context.Background(), id); err != nil {
			t.Fatal(err)
		}
	}
	cli.Close()
	before := readState(t, dir, "ta")
	for _, open := range []bool{false, true} {
		svc := newTestProxy(t, Config{Dir: dir, MigrationsDir: current, MigrationMode: MigrateManual, MaxConnections: 8, ReadersPerTenant: 2})
		if open {
			if n := queryInt(t, svc, tctx("ta"), `SELECT count(*) FROM items`); n != 0 {
				t.Fatal(n)
			}
		}
		rep, _ := svc.MigrateAll(context.Background(), MigrateOptions{})
		if !errors.Is(rep.Failed["ta"], ErrMigrationDrift) {
			t.Errorf("open=%v MigrateAll: %+v, want ta failed with ErrMigrationDrift", open, rep)
		}
		rb, _ := svc.Rollback(context.Background(), RollbackOptions{To: 1})
		if !errors.Is(rb.Failed["ta"], ErrMigrationDrift) {
			t.Errorf("open=%v Rollback: %+v, want ta failed with ErrMigrationDrift", open, rb)
		}
		if st, err := svc.MigrationStatus(context.Background(), "ta"); err != nil || st.Ahead != 1 {
			t.Errorf("open=%v MigrationStatus: %+v, %v; want ahead 1", open, st, err)
		}
		if after := readState(t, dir, "ta"); len(after.Ledger) != len(before.Ledger) || len(after.Schema) != len(before.Schema) {
			t.Fatalf("open=%v: ta changed: %v -> %v", open, before, after)
		}
		svc.Close()
	}
}
