package sqliteproxy

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// MigrateOptions tunes MigrateAll.
type MigrateOptions struct {
	// Concurrency is how many tenants are migrated at once. Default
	// 4 x GOMAXPROCS (applying migrations waits mostly on fsync); it is
	// also kept below MaxConnections/2 so live traffic keeps most of the
	// connection budget.
	Concurrency int
	// DryRun reports what would be applied and changes nothing.
	DryRun bool
	// Progress, if set, is called after each tenant (from several
	// goroutines, never concurrently) with the tenants done and the total.
	Progress func(done, total int)
	// Tenants restricts the run to these IDs; nil means every tenant under
	// Dir, in the order of AllTenants (an empty non-nil slice means none);
	// then a tenant deleted after the listing is left out, not Failed (a
	// listed ID that names no tenant is Failed with ErrTenantNotFound).
	Tenants []string
}

// MigrateReport says what MigrateAll or Rollback did. For Rollback,
// "migrations" are down migrations: Applied counts those run, Migrated the
// tenants rolled back, and Pending holds the down files that would run,
// newest first.
type MigrateReport struct {
	Tenants  int                 // tenants examined
	Applied  int                 // migrations applied (with DryRun: that would be)
	Migrated int                 // tenants that got (or would get) at least one migration
	Failed   map[string]error    // tenants that failed, and why; the others went on
	Pending  map[string][]string // with DryRun: per tenant, the migrations that would be applied
	Duration time.Duration
}

// MigrateAll brings every tenant under Dir up to date, Concurrency tenants
// at a time, also in MigrateCheck mode (that is what it is for). A failing
// tenant (a failing migration, drift, a corrupt file) is recorded in
// Failed and the others go on; rerunning resumes where it stopped. It takes
// connections from the normal budget and never closes a connection that is
// in use; tenants it had to open are closed again when done. A tenant no
// connection has open is migrated holding SQLite's exclusive lock on its
// file, for a few milliseconds: another process opening it meanwhile waits
// in its busy handler. Cancelling
// ctx stops it: the report covers the tenants finished so far and the error
// is ctx's.
func (p *Proxy) MigrateAll(ctx context.Context, opts MigrateOptions) (MigrateReport, error) {
	r := p.c.r
	return r.fleetRun(ctx, opMigrate, opts, func(ctx context.Context, id string) ([]string, error) {
		return r.migrateTenant(ctx, id, opts.DryRun)
	})
}

// fleetRun runs one on each tenant of opts.Tenants (default: every tenant
// under Dir), opts.Concurrency at a time within half the connection
// budget, and reports, for MigrateAll and Rollback alike: one returns the
// migrations it ran on the tenant (with DryRun: would run). op names the
// run in its errors.
func (r *router) fleetRun(ctx context.Context, op string, opts MigrateOptions, one func(ctx context.Context, id string) ([]string, error)) (MigrateReport, error) {
	start := time.Now()
	rep := MigrateReport{Failed: map[string]error{}}
	// Before anything, with Tenants given too (adv42): a symlinked Dir
	// pointed elsewhere names another directory's tenants, and a Rollback
	// closed an open tenant's writer before every open was refused.
	if err := r.sameDir(op, ""); err != nil {
		return rep, err
	}
	if opts.DryRun {
		rep.Pending = map[string][]string{}
	}
	ids := opts.Tenants
	listed := ids == nil // by this run: a tenant deleted since is gone, not failed
	if ids != nil {
		// Each once (a tenant listed twice was counted twice in the report,
		// and worked on by two workers at once), in the order given.
		seen := make(map[string]bool, len(ids))
		ids = slices.DeleteFunc(slices.Clone(ids), func(id string) bool {
			dup := seen[id]
			seen[id] = true
			return dup
		})
	} else {
		// Listed first (AllTenants, in its order), so that Progress knows
		// the total; the IDs are a few MB for 100 000 tenants.
		for id, err := range r.allTenants(ctx) {
			if err != nil {
				return rep, err
			}
			ids = append(ids, id)
		}
	}
	rep.Tenants = len(ids)
	workers := opts.Concurrency
	if workers <= 0 {
		workers = 4 * runtime.GOMAXPROCS(0)
	}
	workers = max(1, min(workers, r.cfg.MaxConnections/2, len(ids)))

	var (
		mu   sync.Mutex // guards rep, done and cut
		done int
		cut  []string // tenants whose work the context's end cut short
		next atomic.Int64
		wg   sync.WaitGroup
	)
	for range workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= len(ids) || ctx.Err() != nil || r.isClosed.Load() {
					return
				}
				id := ids[i]
				ran, err := one(ctx, id)
				if err != nil && (ctx.Err() != nil || errors.Is(err, ErrClosed)) {
					if ctx.Err() != nil {
						mu.Lock()
						cut = append(cut, id)
						mu.Unlock()
					}
					return // cancelled or closed: not this tenant's failure
				}
				mu.Lock()
				done++
				switch {
				case err != nil && listed && errors.Is(err, ErrTenantNotFound):
					// Deleted after the listing (a deploy's MigrateAll
					// beside traffic that deletes tenants): nothing to do.
				case err != nil:
					rep.Failed[id] = err
				case len(ran) > 0:
					rep.Migrated++
					rep.Applied += len(ran)
					if opts.DryRun {
						rep.Pending[id] = ran
					}
				}
				if opts.Progress != nil {
					opts.Progress(done, len(ids))
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	rep.Duration = time.Since(start)
	if err := ctx.Err(); err != nil {
		// Said which, and how many were not done: a bare "context
		// deadline exceeded" beside an empty Failed left the caller to
		// guess (a tenant held by a transaction, say).
		slices.Sort(cut)
		why := ""
		if len(cut) > 0 {
			why = fmt.Sprintf("; stopped while working on %s (waiting for its in-flight work, or its migrations)", strings.Join(cut[:min(len(cut), 10)], ", "))
		}
		return rep, opError(op, "", fmt.Errorf("%w: %d of %d tenants not done%s", err, len(ids)-done, len(ids), why))
	}
	if done < len(ids) {
		// Close stopped it (each tenant used to fail as "closed", and the
		// run to return nil).
		return rep, opError(op, "", fmt.Errorf("%w: %d of %d tenants not done", ErrClosed, len(ids)-done, len(ids)))
	}
	return rep, nil
}

// migrateTenant applies (or, with dryRun, lists) the tenant's pending
// migrations and returns their names.
func (r *router) migrateTenant(ctx context.Context, id string, dryRun bool) ([]string, error) {
	t, err := r.tenant(id)
	if err != nil {
		return nil, err
	}
	defer t.unpin()
	if err := t.mustExist(opMigrate); err != nil {
		return nil, err
	}
	if t.ready.Load() && !r.accessOpts.servePending {
		// Checked (or migrated) by this process already, against the same
		// list, but another proxy, present or gone since (the CLI's
		// migrate -down-to), may have rolled it back: MigrateAll reported
		// such a tenant up to date, and left it behind. A look at its
		// ledger on an idle reader tells; without one, the writer's (the
		// path below, which waits for it). Not on a connection of its own:
		// made room for in the budget, that evicted the tenant itself under
		// a transaction (adv29), waited for a slot while pinning it (adv31),
		// and left its slot counted until the tenant closed (adv32).
		if n, err := r.peekLedgerIdle(ctx, t); err == nil && n == len(r.mig.list) {
			return nil, nil
		}
	}
	if err := t.lockWriter(ctx); err != nil {
		return nil, err
	}
	held := true
	defer func() {
		if held {
			t.releaseWriter()
		}
	}()
	if t.w == nil {
		// Not open here: read the ledger on a short-lived connection first,
		// which for an up-to-date tenant is all there is to do.
		n, err := r.peekLedger(ctx, t)
		if err != nil {
			return nil, opError(opMigrate, id, err)
		}
		pending := r.mig.names(n)
		if len(pending) == 0 {
			t.ready.Store(true)
			return nil, nil
		}
		if dryRun {
			return pending, nil
		}
		// In MigrateManual mode a tenant behind may be marked ready (served
		// as it is): the gate below must look again.
		t.ready.Store(false)
		wasOpen := r.budget.counted(t) > 0
		if !wasOpen && !othersPresent(r.presence) {
			// Alone only while no other proxy has the directory open: the
			// exclusive connection keeps every other process's reads of the
			// tenant out for the whole of its migrations (a service in
			// MigrateManual beside the CLI's migrate failed its reads with
			// "database is locked" during a long index build).
			err := r.migrateAlone(ctx, t)
			if err == nil {
				t.ready.Store(true)
				return pending, nil
			}
			if !isBusy(err) {
				return nil, err
			}
			// Another process has the file open: migrate through a
			// normal writer, which shares it.
		}
		// Not the migrator's connection kept as the writer, though it is
		// evicted below: work queued for the writer meanwhile takes it
		// first, the eviction then fails, and what the migration set on
		// its connection (pragmas, TEMP tables) would serve live traffic.
		if _, err := t.openLockedWriter(ctx, openOpts{migrate: true}); err != nil {
			held = false // released by openLockedWriter
			return nil, err
		}
		t.releaseWriter()
		held = false
		if !wasOpen {
			t.evict(false, evictMigrate) // leave the budget to live traffic
		}
		return pending, nil
	}
	n, err := r.mig.applied(ctx, t.w.c)
	if err != nil {
		return nil, opError(opMigrate, id, err)
	}
	pending := r.mig.names(n)
	if len(pending) == 0 || dryRun {
		return pending, nil
	}
	// The writer carries live traffic's session: a TEMP table of the same
	// name took the migration's ALTER (the ledger then said applied over a
	// main table left as it was), a TEMP trigger fired inside it (a
	// backfill's UPDATE ignored), pragmas change what it does. Migrations
	// run on a fresh connection, as the gate's do.
	if err := t.freshWriter(ctx); err != nil {
		return nil, opError(opMigrate, id, err)
	}
	_, err = r.mig.migrate(ctx, t.w.c, id, t.tel, true, nil)
	// What a migration sets on its connection (pragmas, TEMP tables) is
	// not undone with its transaction: it must not stay on the tenant's
	// writer for live traffic either.
	if ferr := t.freshWriter(ctx); err == nil && ferr != nil {
		err = opError(opMigrate, id, ferr)
	}
	if err != nil {
		return nil, err
	}
	t.ready.Store(true)
	return pending, nil
}

// migrateAlone migrates t, which this process does not have open, on a
// connection of its own in locking_mode=EXCLUSIVE. Such a connection keeps
// SQLite's WAL index in its own memory, so no -shm file is created, mapped,
// locked and removed: a third fewer system calls per tenant and MigrateAll
// on 10 000 tenants ~20 % faster. It needs the file to itself and fails at
// once with SQLITE_BUSY when another process has it open (the caller then
// takes the normal path); while it runs (as long as the tenant's pending
// migrations take), other processes' opens of this tenant wait in their
// busy handler, so it is used only while no other proxy is present. The caller
// holds t's writer semaphore, so nothing of this process opens t meanwhile
// but a reader, which waits the same way.
func (r *router) migrateAlone(ctx context.Context, t *tenant) error {
	c, done, err := r.ownConn(ctx, t, r.conns.aloneDrv, r.conns.aloneParams)
	if err != nil {
		return opError(opMigrate, t.id, err)
	}
	// Closing checkpoints the WAL into the database and removes it. If that
	// fails the migration is still safe in the WAL, for the next open.
	defer done()
	_, err = r.mig.migrate(ctx, c, t.id, t.tel, true, nil)
	return err
}

// errNothingFree: no idle reader of a tenant, nor room for one, without
// waiting (peekLedgerIdle).
var errNothingFree = errors.New("no reader free")

// peekLedgerIdle is peekLedger of t, open here, on one of its readers idle
// now (or opened now in a free slot), without waiting: errNothingFree
// otherwise.
func (r *router) peekLedgerIdle(ctx context.Context, t *tenant) (int, error) {
	pc, err := t.tryReader(ctx) // none without readers (ReadersPerTenant)
	if err != nil || pc == nil {
		return 0, cmp.Or(err, errNothingFree)
	}
	defer t.release(pc)
	rows, err := ledger(ctx, pc.c)
	if err != nil {
		return 0, err
	}
	return r.mig.check(rows)
}

// peekLedger reads t's ledger on a read-only connection of its own (within
// the budget) and checks it. When the tenant has no -wal file (it is not
// open anywhere, or was closed cleanly; with KeepWAL, an empty one and no
// other process on the directory) the file is opened immutable: no
// locks, no -wal or -shm to create and remove, which makes checking an
// up-to-date tenant about as cheap as opening it. A ledger read that way
// can only be behind the truth (migrations are appended), never ahead
// (unless another process rolls the tenant back at that very moment: the
// caller then acts as if it ran just before that rollback), and anything
// pending (or to roll back) is re-checked under BEGIN IMMEDIATE first.
// The caller holds t's writer semaphore.
func (r *router) peekLedger(ctx context.Context, t *tenant) (int, error) {
	rows, err := r.readLedger(ctx, t)
	if err != nil {
		return 0, err
	}
	return r.mig.check(rows)
}

func (r *router) readLedger(ctx context.Context, t *tenant) ([]ledgerRow, error) {
	params := "?mode=ro"
	// An empty -wal kept beside a closed tenant (KeepWAL) is as good as
	// none, unless another process may have the tenant open with it.
	if wal, frames := walFrames(t.path); !frames && !hasSide(t.path, "-journal") && (!wal || !othersPresent(r.presence)) {
		// Immutable ignores a hot journal: a migration killed midway in
		// another journal mode read as applied, and the tenant was marked
		// up to date before its next open rolled it back.
		params += "&immutable=1"
	}
	rows, err := r.peekLedgerFile(ctx, t, params)
	if !errors.Is(err, errPeekEncoding) {
		return rows, err
	}
	// A UTF-16 file (a restored backup's): on a connection of its own.
	c, done, err := r.ownConn(ctx, t, r.conns.plainDrv, params+"&_busy_timeout=0")
	if err != nil {
		return nil, err
	}
	defer done()
	return ledger(ctx, c)
}

// AppliedMigration is one migration recorded in a tenant's ledger.
type AppliedMigration struct {
	Version   int    // 1 for the first configured migration
	Name      string // file name, or "Migrations[i]"
	Checksum  string // hex SHA-256 of the text that was applied
	AppliedAt time.Time
}

// TenantMigrationStatus is a tenant's migration state.
type TenantMigrationStatus struct {
	Tenant  string
	Applied []AppliedMigration
	// Pending names the configured migrations not yet applied, those
	// rolled back by Rollback included.
	Pending []string
	Drift   error // non-nil (ErrMigrationDrift) when the ledger disagrees with the configuration
	// Ahead counts the applied migrations beyond the configured ones when
	// those are applied unchanged (Drift is then set too): the tenant was
	// migrated with a newer set, or a rollback to this set has not reached
	// it.
	Ahead int
	// Mode is this proxy's MigrationMode: what its next opening of the
	// tenant does with Pending. MigrateAuto applies them (a tenant rolled
	// back goes forward again), MigrateCheck refuses the tenant,
	// MigrateManual serves it as it is.
	Mode MigrationMode
}

// MigrationStatus reports a tenant's applied and pending migrations and
// any drift, without changing anything.
func (p *Proxy) MigrationStatus(ctx context.Context, id string) (TenantMigrationStatus, error) {
	st := TenantMigrationStatus{Tenant: id, Mode: p.c.r.cfg.MigrationMode}
	t, err := p.tenantFor(opMigrationStatus, id)
	if err != nil {
		return st, err
	}
	defer t.unpin()
	if err := t.mustExist(opMigrationStatus); err != nil {
		return st, err
	}
	var rows []ledgerRow
	if t.ready.Load() {
		// Up to date as far as this process knows: read on a reader, so
		// that a long transaction on the writer does not hold us up.
		var pc *physConn
		if pc, err = t.acquireReader(ctx); err != nil {
			return st, err
		}
		rows, err = ledger(ctx, pc.c)
		t.release(pc)
	} else {
		if err := t.lockWriter(ctx); err != nil {
			return st, err
		}
		if t.w != nil {
			rows, err = ledger(ctx, t.w.c)
		} else {
			rows, err = p.c.r.readLedger(ctx, t)
		}
		t.releaseWriter()
	}
	if err != nil {
		return st, opError(opMigrationStatus, id, err)
	}
	m := p.c.r.mig
	for _, row := range rows {
		am := AppliedMigration{Version: int(row.version), Checksum: row.checksum}
		if i := int(row.version) - 1; i >= 0 && i < len(m.list) {
			am.Name = m.list[i].name
		}
		am.AppliedAt, _ = time.Parse(time.RFC3339Nano, row.appliedAt)
		st.Applied = append(st.Applied, am)
	}
	n, err := m.check(rows)
	if err != nil {
		st.Drift = err
		if k := len(m.list); len(rows) > k {
			if _, err := m.check(rows[:k]); err == nil {
				st.Ahead = len(rows) - k
			}
		}
		return st, nil
	}
	st.Pending = m.names(n)
	return st, nil
}
