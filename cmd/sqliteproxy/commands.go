package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sqliteproxy/sqliteproxy"
	"github.com/sqliteproxy/sqliteproxy/internal/dirs"
)

// tenantErr prints a failure of op on tenant id: one line, without the
// library's own "op: tenant "id":" prefix, which would repeat ours.
func (e *env) tenantErr(op, id string, err error) {
	e.errorf("%s %s: %s", op, id, tenantErrText(id, err))
}

func tenantErrText(id string, err error) string {
	if m := (*misplacedError)(nil); errors.As(err, &m) {
		return m.Error()
	}
	if errors.Is(err, sqliteproxy.ErrTenantNotFound) {
		return "no such tenant"
	}
	for {
		pe, ok := err.(*sqliteproxy.Error)
		if !ok || (pe.Tenant != id && pe.Tenant != "") {
			break
		}
		err = pe.Err
	}
	return errText(err)
}

// reportFailures prints per-tenant failures on stderr, sorted by tenant.
func (e *env) reportFailures(op string, failed map[string]error) {
	ids := make([]string, 0, len(failed))
	for id := range failed {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		e.tenantErr(op, id, failed[id])
	}
}

// tenants: list the tenants.
func (e *env) tenants(args []string) (status int) {
	f := e.newFlags("tenants")
	asJSON := f.Bool("json", false, "print a JSON array of IDs")
	if _, st, ok := e.parse(f, args, 0, 0); !ok {
		return st
	}
	p, st, ok := e.open(f, "")
	if !ok {
		return st
	}
	defer e.closeProxy(p, &status)
	// Streamed: a bucketed directory of any size lists in little memory.
	n := 0
	for id, err := range p.AllTenants(e.ctx) {
		if err != nil {
			if *asJSON && n > 0 {
				fmt.Fprintln(e.stdout, "]")
			}
			e.errorf("tenants: %s", errText(err))
			return exitFailed
		}
		if *asJSON {
			sep := ","
			if n == 0 {
				sep = "["
			}
			b, _ := json.Marshal(id)
			fmt.Fprintf(e.stdout, "%s%s", sep, b)
		} else {
			fmt.Fprintln(e.stdout, id)
		}
		n++
	}
	if *asJSON {
		if n == 0 {
			fmt.Fprint(e.stdout, "[")
		}
		fmt.Fprintln(e.stdout, "]")
	}
	return exitOK
}

// printIDs prints tenant IDs one per line, or as a JSON array.
func (e *env) printIDs(ids []string, asJSON bool) {
	if !asJSON {
		for _, id := range ids {
			fmt.Fprintln(e.stdout, id)
		}
		return
	}
	if ids == nil {
		ids = []string{}
	}
	b, _ := json.Marshal(ids)
	fmt.Fprintf(e.stdout, "%s\n", b)
}

// create: create a tenant, applying the migrations of -migrations.
func (e *env) create(args []string) (status int) {
	f := e.newFlags("create")
	mig := f.String("migrations", "", "`directory` of migration files (0001_init.sql, ...) to apply to the new tenant")
	pos, st, ok := e.parse(f, args, 1, 1)
	if !ok {
		return st
	}
	id := pos[0]
	if !e.checkID(f, id) {
		return exitUsage
	}
	p, st, ok := e.open(f, *mig)
	if !ok {
		return st
	}
	defer e.closeProxy(p, &status)
	if err := p.CreateTenant(e.ctx, id); err != nil {
		e.tenantErr("create", id, err)
		return exitFailed
	}
	fmt.Fprintf(e.stdout, "created tenant %s\n", id)
	return exitOK
}

// delete: delete a tenant after confirmation.
func (e *env) delete(args []string) (status int) {
	f := e.newFlags("delete")
	yes := f.Bool("yes", false, "delete without asking")
	force := f.Bool("force", false, "delete even if a -wal or -shm beside the file makes the tenant look open where its locks cannot be asked (not Linux); a process that holds it open is refused all the same")
	pos, st, ok := e.parse(f, args, 1, 1)
	if !ok {
		return st
	}
	id := pos[0]
	if !e.checkID(f, id) {
		return exitUsage
	}
	if !*yes && !e.interactive() {
		e.errorf("delete: not deleting tenant %s: stdin is not a terminal to confirm on; pass -yes", id)
		return exitUsage
	}
	p, st, ok := e.open(f, "")
	if !ok {
		return st
	}
	defer e.closeProxy(p, &status)
	exists, err := p.TenantExists(e.ctx, id)
	if err == nil && !exists {
		err = sqliteproxy.ErrTenantNotFound
	}
	if err == nil && !*force {
		err = tenantNotInUse(p, id)
	}
	if err != nil {
		e.tenantErr("delete", id, err)
		return exitFailed
	}
	if !*yes && !e.confirm(fmt.Sprintf("delete tenant %s and all its data?", id)) {
		if e.ctx.Err() != nil {
			e.errorf("delete %s: interrupted, nothing deleted", id)
		} else {
			e.errorf("delete %s: not confirmed, nothing deleted", id)
		}
		return exitFailed
	}
	hint := replicaHint(p, id)
	if err := p.DeleteTenant(e.ctx, id); err != nil {
		e.tenantErr("delete", id, err)
		return exitFailed
	}
	fmt.Fprintf(e.stdout, "deleted tenant %s\n", id)
	switch hint {
	case "streamed":
		e.errorf("delete %s: it was streamed by Litestream: its replica is not erased, and a service with replication "+
			"restores the tenant from it on its next access; erase it with DeleteTenant in that service, or remove its replica", id)
	case "restored":
		e.errorf("delete %s: it was restored here (from a replica, or to become one's head) and not streamed since: if it has a replica, "+
			"that is not erased, and a service with replication restores the tenant from it on its next access; erase it with DeleteTenant in that service, or remove its replica", id)
	}
	return exitOK
}

// replicaHint says why tenant id may have a replica, which the tool,
// without replication, does not erase: "streamed" when Litestream's folder
// is beside its file (.<id>.db-litestream); "restored" when the marker a
// restore leaves until the tenant is next streamed is (.<id>.db-restored,
// .<id>.db-fromreplica: a restore -replica replaces Litestream's folder
// with it, and the delete said nothing of the replica, which brought the
// tenant back; adv48); "" otherwise.
func replicaHint(p *sqliteproxy.Proxy, id string) string {
	path, err := p.TenantPath(id)
	if err != nil {
		return ""
	}
	dir, file := filepath.Split(path)
	exists := func(suffix string) bool {
		_, err := os.Lstat(filepath.Join(dir, "."+file+suffix))
		return err == nil
	}
	switch {
	case exists("-litestream"):
		return "streamed"
	case exists("-restored"), exists("-fromreplica"):
		return "restored"
	}
	return ""
}

// notInUse refuses a tenant file that another process has open.
//
// DeleteTenant and RestoreTenant drain the tenant's connections in this
// process only. A service running on the same directory keeps its open
// descriptors: after a delete or restore it would go on reading and
// writing the old, unlinked file (and WAL), and those writes would be lost.
// SQLite keeps <id>.db-wal and <id>.db-shm while any connection is open
// and removes them when the last one closes cleanly (unless it keeps them:
// Config.KeepWAL, Litestream); they also stay after a crash, or an open
// that failed (a full disk), with nobody using them. So
// their presence is only a hint: the locks SQLite holds on the file tell
// (holder), and where they cannot be asked the presence decides (-force
// then overrides it).
func notInUse(path string) error {
	for _, side := range []string{"-wal", "-shm"} {
		if _, err := os.Lstat(path + side); err != nil {
			continue
		}
		pid, ok := holder(path)
		switch {
		case !ok:
			return fmt.Errorf("in use: %s exists, so a process (the service?) has the tenant open; stop it first, or pass -force if none does", filepath.Base(path+side))
		case pid != 0:
			return inUseBy(pid)
		}
		return nil // left by a process that is gone: the delete or restore removes them
	}
	return nil
}

// insideData reports whether path lies in the data directory dataDir (or
// is it), however either is spelled: a backup written there could take a
// tenant's place.
func insideData(path, dataDir string) bool {
	in, err := dirs.Inside(path, dataDir)
	return in || err != nil
}

// backup: online backup of one tenant, or of all.
func (e *env) backup(args []string) (status int) {
	f := e.newFlags("backup")
	all := f.Bool("all", false, "back up every tenant, into DIR/<id>.db")
	force := f.Bool("force", false, "overwrite existing backup files")
	pos, st, ok := e.parse(f, args, 1, 2)
	if !ok {
		return st
	}
	if *all != (len(pos) == 1) {
		return e.usageError(f, "want ID FILE, or -all DIR")
	}
	// An empty path is no place to write to (and would resolve to the
	// working directory).
	if *all && pos[0] == "" {
		return e.usageError(f, "-all DIR is empty")
	}
	if !*all && pos[1] == "" {
		return e.usageError(f, "FILE is empty")
	}
	if *all {
		return e.backupAll(f, pos[0], *force)
	}
	id, given := pos[0], pos[1]
	if !e.checkID(f, id) {
		return exitUsage
	}
	if dirs.NamesFolder(given) {
		e.errorf("backup: %s names a directory; name the backup file", given)
		return exitUsage
	}
	// As the system resolves it ("lnk/../x.db" is beside lnk's target, not
	// where filepath.Dir of the text looks), for the checks and the write
	// alike; a symbolic link at FILE itself is replaced, as BackupTenant
	// does, not written through.
	dst, err := dirs.ResolveParent(given)
	if err != nil {
		e.errorf("backup: %v", err)
		return exitUsage
	}
	if fi, err := os.Stat(dst); err == nil && fi.IsDir() {
		e.errorf("backup: %s is a directory; name the backup file", given)
		return exitUsage
	}
	if err := requireDir("backup directory", filepath.Dir(dst)); err != nil {
		e.errorf("backup: %v", err)
		return exitUsage
	}
	if insideData(filepath.Dir(dst), *f.dir) { // a link at FILE itself is replaced, as by -all
		e.errorf("backup: %s is in the data directory; write backups elsewhere", given)
		return exitUsage
	}
	p, st, ok := e.open(f, "")
	if !ok {
		return st
	}
	defer e.closeProxy(p, &status)
	// A killed backup leaves a whole copy of its tenant under a hidden name
	// beside FILE: swept here too, not only by backup -all (adv43).
	sweepBackupTemps(filepath.Dir(dst))
	if err := e.backupOne(p, id, dst, *force); err != nil {
		e.tenantErr("backup", id, notFound(p, id, err))
		return exitFailed
	}
	fmt.Fprintf(e.stdout, "backed up tenant %s to %s\n", id, given)
	return exitOK
}

func (e *env) backupAll(f *flags, dir string, force bool) (status int) {
	given := dir
	dir, err := dirs.Resolve(dir)
	if err != nil {
		e.errorf("backup: %v", err)
		return exitUsage
	}
	if insideData(dir, *f.dir) {
		e.errorf("backup: -all %s is in the data directory; write backups elsewhere", given)
		return exitUsage
	}
	p, st, ok := e.open(f, "")
	if !ok {
		return st
	}
	defer e.closeProxy(p, &status)
	ids, ok := e.allTenants(p, "backup")
	if !ok {
		return exitFailed
	}
	failed := map[string]error{}
	if !e.addStrays(p, "backup", failed) {
		return exitFailed
	}
	nstrays := len(failed)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		e.errorf("backup: %v", err)
		return exitFailed
	}
	sweepBackupTemps(dir)
	b := e.newBar(len(ids), "backup")
	done := 0
	for i, id := range ids {
		if e.ctx.Err() != nil {
			break
		}
		if err := e.backupOne(p, id, filepath.Join(dir, id+".db"), force); err != nil {
			failed[id] = err
		}
		done++
		b.set(i + 1)
	}
	b.finish()
	e.reportFailures("backup", failed)
	if e.interrupted() {
		return exitFailed
	}
	fmt.Fprintf(e.stdout, "backed up %d of %d tenants to %s\n", done-(len(failed)-nstrays), len(ids)+nstrays, given)
	if len(failed) > 0 {
		return exitFailed
	}
	return exitOK
}

// backupTempAge is how old a backup's temporary file must be to be taken
// for one left by a killed backup, as the library's leftovers.
const backupTempAge = 10 * time.Minute

// sweepBackupTemps removes from a backup -all folder the temporary files
// (.backup-<id>-<16 hex digits>.db, and their side files) of backups killed
// midway, once they are backupTempAge old: each holds a whole copy of a
// tenant, and nothing else ever removed them.
func sweepBackupTemps(dir string) {
	names, _ := filepath.Glob(filepath.Join(dir, ".backup-*"))
	old := time.Now().Add(-backupTempAge)
	for _, p := range names {
		base := filepath.Base(p)
		for _, side := range []string{"-wal", "-shm", "-journal"} {
			base = strings.TrimSuffix(base, side)
		}
		name, ok := strings.CutSuffix(base, ".db")
		if !ok || len(name) < len(".backup-x-")+16 || name[len(name)-17] != '-' || strings.Trim(name[len(name)-16:], "0123456789abcdef") != "" {
			continue
		}
		if fi, err := os.Lstat(p); err == nil && fi.Mode().IsRegular() && fi.ModTime().Before(old) {
			os.Remove(p)
		}
	}
}

// backupOne backs tenant id up to dst.
func (e *env) backupOne(p *sqliteproxy.Proxy, id, dst string, force bool) error {
	if !force {
		if _, err := os.Lstat(dst); err == nil {
			return fmt.Errorf("%s exists (use -force to overwrite)", dst)
		}
	}
	return p.BackupTenant(e.ctx, id, dst)
}

// restore: replace a tenant's data with a backup, or with its replica.
func (e *env) restore(args []string) (status int) {
	f := e.newFlags("restore")
	force := f.Bool("force", false, "restore even if a -wal or -shm beside the file makes the tenant look open where its locks cannot be asked (not Linux); a process that holds it open is refused all the same")
	replica := f.String("replica", "", "restore from the tenant's replica <`URL`>/<ID> (file:///path, s3://bucket/prefix?endpoint=...) instead of a FILE")
	at := f.String("at", "", "with -replica: the replica as it was at this `time` (RFC 3339, e.g. 2026-11-26T14:00:00Z); default: its latest state")
	litestream := f.String("litestream", "", "with -replica: the litestream `binary` that fetches the replica (default: litestream on PATH)")
	pos, st, ok := e.parse(f, args, 1, 2)
	if !ok {
		return st
	}
	if f.isSet("replica") == (len(pos) == 2) {
		return e.usageError(f, "want ID FILE, or -replica URL ID")
	}
	if f.isSet("replica") {
		return e.restoreReplica(f, pos[0], *replica, *at, *litestream, *force)
	}
	for _, name := range []string{"at", "litestream"} {
		if f.isSet(name) {
			return e.usageError(f, "-%s goes with -replica", name)
		}
	}
	id, src := pos[0], pos[1]
	if !e.checkID(f, id) {
		return exitUsage
	}
	if src == "" {
		return e.usageError(f, "FILE is empty")
	}
	fi, err := os.Stat(src)
	switch {
	case errors.Is(err, os.ErrNotExist):
		e.errorf("restore: backup file %s does not exist", src)
		return exitUsage
	case err != nil:
		e.errorf("restore: %v", err)
		return exitUsage
	case !fi.Mode().IsRegular():
		e.errorf("restore: %s is not a regular file", src)
		return exitUsage
	}
	p, st, ok := e.open(f, "")
	if !ok {
		return st
	}
	defer e.closeProxy(p, &status)
	existed, err := p.TenantExists(e.ctx, id)
	if err == nil && !*force {
		err = tenantNotInUse(p, id)
	}
	if err == nil {
		err = p.RestoreTenant(e.ctx, id, src)
	}
	if err != nil {
		e.tenantErr("restore", id, err)
		return exitFailed
	}
	if existed {
		fmt.Fprintf(e.stdout, "restored tenant %s from %s\n", id, src)
	} else {
		fmt.Fprintf(e.stdout, "restored tenant %s from %s (new tenant)\n", id, src)
	}
	return exitOK
}

// migrate: apply pending migrations fleet-wide.
func (e *env) migrate(args []string) (status int) {
	f := e.newFlags("migrate")
	mig := f.String("migrations", "", "`directory` of migration files: 0001_init.sql, 0002_add.sql, ... (required)")
	fk := f.Bool("foreign-keys", false, "refuse a migration that adds a foreign key violation, as a service with Config.ForeignKeys does: set it to match the service")
	dryRun := f.Bool("dry-run", false, "list what would be applied (or rolled back); change nothing")
	downTo := f.Int("down-to", 0, "roll back to `version` N (the number of migrations kept) with the NNNN_name.down.sql files of -migrations")
	conc := f.Int("concurrency", 0, "tenants migrated at once (default: 4 x number of CPUs, at most half the connection budget)")
	ids, st, ok := e.parse(f, args, 0, -1)
	if !ok {
		return st
	}
	if *mig == "" {
		return e.usageError(f, "-migrations DIR is required")
	}
	if *conc < 0 {
		return e.usageError(f, "-concurrency %d is negative", *conc)
	}
	rollback := f.isSet("down-to")
	if rollback && *downTo < 0 {
		return e.usageError(f, "-down-to %d is negative", *downTo)
	}
	for _, id := range ids {
		if !e.checkID(f, id) {
			return exitUsage
		}
	}
	slices.Sort(ids)
	ids = slices.Compact(ids)
	p, st, ok := e.openMigrating(f, *mig, *fk)
	if !ok {
		return st
	}
	defer e.closeProxy(p, &status)
	if len(ids) == 0 {
		if ids, ok = e.allTenants(p, "migrate"); !ok {
			return exitFailed
		}
	}
	if rollback {
		// The version is checked against the migrations read from -migrations:
		// a rollback of no tenant says whether it is in range.
		if _, err := p.Rollback(e.ctx, sqliteproxy.RollbackOptions{To: *downTo, Tenants: []string{}, DryRun: true}); err != nil {
			var pe *sqliteproxy.Error
			if errors.As(err, &pe) {
				err = pe.Err
			}
			return e.usageError(f, "-down-to %d: %v", *downTo, err)
		}
		return e.rollback(p, ids, *downTo, *dryRun, *conc)
	}
	rep, done, ok := e.fleetRun("migrate", "migrate", len(ids), func(progress func(done, total int)) (sqliteproxy.MigrateReport, error) {
		return p.MigrateAll(e.ctx, sqliteproxy.MigrateOptions{Concurrency: *conc, DryRun: *dryRun, Tenants: ids, Progress: progress})
	})
	if !ok {
		return exitFailed
	}
	upToDate := done - rep.Migrated - len(rep.Failed)
	if *dryRun {
		e.printPending(rep, "would apply")
		fmt.Fprintf(e.stdout, "dry run, nothing changed: %s: %d to migrate (%s), %d up to date, %d failed\n",
			plural(rep.Tenants, "tenant"), rep.Migrated, plural(rep.Applied, "migration"), upToDate, len(rep.Failed))
	} else {
		fmt.Fprintf(e.stdout, "%s: %d migrated (%s applied), %d up to date, %d failed\n",
			plural(rep.Tenants, "tenant"), rep.Migrated, plural(rep.Applied, "migration"), upToDate, len(rep.Failed))
	}
	return failedStatus(rep)
}

// fleetRun runs a fleet-wide migrate or rollback (op; run, handed the
// progress callback) with a progress bar labelled label over total
// tenants, and reports the tenants that failed. It returns the report, how
// many tenants were done, and false when the run failed as a whole.
func (e *env) fleetRun(op, label string, total int, run func(progress func(done, total int)) (sqliteproxy.MigrateReport, error)) (rep sqliteproxy.MigrateReport, done int, ok bool) {
	b := e.newBar(total, label)
	rep, err := run(func(n, _ int) {
		done = n
		b.set(n)
	})
	b.finish()
	e.reportFailures(op, rep.Failed)
	if err != nil && !e.interrupted() {
		msg := errText(err)
		if rest, ok := strings.CutPrefix(msg, op+": "); ok {
			msg = rest // the library's operation is ours: said once
		}
		e.errorf("%s: %s", op, msg)
	}
	return rep, done, err == nil
}

// printPending prints a dry run's plan: one line per tenant, "ID: verb
// file, file".
func (e *env) printPending(rep sqliteproxy.MigrateReport, verb string) {
	for _, id := range slices.Sorted(maps.Keys(rep.Pending)) {
		fmt.Fprintf(e.stdout, "%s: %s %s\n", id, verb, strings.Join(rep.Pending[id], ", "))
	}
}

// failedStatus is exitFailed when some tenant of rep failed.
func failedStatus(rep sqliteproxy.MigrateReport) int {
	if len(rep.Failed) > 0 {
		return exitFailed
	}
	return exitOK
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

// tenantStatus is one tenant in the output of status.
type tenantStatus struct {
	Tenant    string          `json:"tenant"`
	Version   *int            `json:"version"`         // migrations applied; null if unreadable
	Applied   []appliedStatus `json:"applied"`         // null if unreadable
	Pending   []string        `json:"pending"`         // null if unknown: no -migrations, or unreadable
	Ahead     int             `json:"ahead,omitempty"` // migrations applied beyond those of -migrations (a drift)
	SizeBytes int64           `json:"size_bytes"`      // the file and its -wal
	Modified  time.Time       `json:"modified"`        // the later of the file's and its -wal's
	Error     string          `json:"error,omitempty"`
	err       error           // as Error

	// With -replica (omitted without): Litestream's position beside the
	// file and the replica's (transaction IDs, 0 for none), and how they
	// compare.
	ReplicaLocalTXID   *uint64 `json:"replica_local_txid,omitempty"`
	ReplicaTXID        *uint64 `json:"replica_txid,omitempty"`
	ReplicaState       string  `json:"replica_state,omitempty"` // in_sync, behind, ahead, none (neither has any), restored (restored here: the head to be), restored_from_replica (restored by the service, not streamed yet), conflict (never streamed, the replica holds another copy), superseded, delete_pending (deleted here, the replica not erased yet; with no file here, version, size and modified are zero)
	ReplicaError       string  `json:"replica_error,omitempty"`
	replicaErr         error   // as ReplicaError
	neverStreamed      bool    // ReplicaCopy.NeverStreamed (what a "conflict" is)
	restoredSuperseded bool    // ReplicaCopy.RestoredSuperseded (what a "conflict" is)
	newerGeneration    int64   // ReplicaCopy.NewerGeneration (a "superseded" copy's)
	noFile             bool    // a pending delete's tenant, with no file here
}

// pendingDeletes returns the tenants deleted in dir whose replica is not
// erased yet (sqliteproxy.PendingDeletes).
func (e *env) pendingDeletes(dir string) (map[string]bool, bool) {
	ids, err := sqliteproxy.PendingDeletes(e.ctx, dir)
	if err != nil {
		e.errorf("status: %s", errText(err))
		return nil, false
	}
	m := make(map[string]bool, len(ids))
	for _, id := range ids {
		m[id] = true
	}
	return m, true
}

// fileExists reports whether anything is at path.
func fileExists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

type appliedStatus struct {
	Version   int       `json:"version"`
	Name      string    `json:"name,omitempty"` // empty without -migrations
	Checksum  string    `json:"checksum"`
	AppliedAt time.Time `json:"applied_at"`
}

// rollback is migrate -down-to: Proxy.Rollback of ids to version to.
func (e *env) rollback(p *sqliteproxy.Proxy, ids []string, to int, dryRun bool, conc int) int {
	rep, done, ok := e.fleetRun("rollback", fmt.Sprintf("migrate -down-to %d", to), len(ids), func(progress func(done, total int)) (sqliteproxy.MigrateReport, error) {
		return p.Rollback(e.ctx, sqliteproxy.RollbackOptions{To: to, Tenants: ids, DryRun: dryRun, Concurrency: conc, Progress: progress})
	})
	if !ok {
		return exitFailed
	}
	atOrBelow := done - rep.Migrated - len(rep.Failed)
	if dryRun {
		e.printPending(rep, "would run")
		fmt.Fprintf(e.stdout, "dry run, nothing changed: %s: %d to roll back to version %d (%s), %d at or below it, %d failed\n",
			plural(rep.Tenants, "tenant"), rep.Migrated, to, plural(rep.Applied, "down migration"), atOrBelow, len(rep.Failed))
	} else {
		fmt.Fprintf(e.stdout, "%s: %d rolled back to version %d (%s run), %d at or below it, %d failed\n",
			plural(rep.Tenants, "tenant"), rep.Migrated, to, plural(rep.Applied, "down migration"), atOrBelow, len(rep.Failed))
	}
	return failedStatus(rep)
}

// status: schema version, pending migrations, size and last change.
func (e *env) status(args []string) (status int) {
	f := e.newFlags("status")
	mig := f.String("migrations", "", "`directory` of migration files, to list pending migrations (without it: unknown)")
	replica := f.String("replica", "", "also compare each tenant with its replica <`URL`>/<ID> (file:///path, s3://bucket/prefix?endpoint=...)")
	asJSON := f.Bool("json", false, "print a JSON array of objects")
	pos, st, ok := e.parse(f, args, 0, 1)
	if !ok {
		return st
	}
	if len(pos) == 1 && !e.checkID(f, pos[0]) {
		return exitUsage
	}
	withReplica := f.isSet("replica")
	if withReplica {
		if err := checkReplicaURL(*replica); err != nil {
			return e.usageError(f, "-replica: %v", err)
		}
	}
	p, st, ok := e.open(f, *mig)
	if !ok {
		return st
	}
	defer e.closeProxy(p, &status)
	// With -replica, tenants deleted here whose replica is not erased
	// yet are listed too (a pending delete), file or not.
	var deleted map[string]bool
	if withReplica {
		if deleted, ok = e.pendingDeletes(*f.dir); !ok {
			return exitFailed
		}
	}
	var ids []string
	if len(pos) == 1 && deleted[pos[0]] {
		ids = pos
	} else if ids, ok = e.tenantIDs(p, "status", pos); !ok {
		if *asJSON {
			fmt.Fprintln(e.stdout, "[]") // an array always, as tenants -json and query -json print
		}
		return exitFailed
	}
	if len(pos) == 0 && len(deleted) > 0 {
		listed := map[string]bool{}
		for _, id := range ids {
			listed[id] = true
		}
		for _, id := range slices.Sorted(maps.Keys(deleted)) {
			if !listed[id] {
				ids = append(ids, id) // after the others: no file
			}
		}
	}
	var b *bar
	if len(pos) == 0 {
		b = e.newBar(len(ids), "status")
	}
	out := make([]tenantStatus, 0, len(ids))
	for i, id := range ids {
		if e.ctx.Err() != nil {
			break
		}
		ts := tenantStatus{Tenant: id, noFile: true}
		if path, err := p.TenantPath(id); err != nil || !deleted[id] || fileExists(path) {
			ts = e.tenantStatus(p, id, *mig != "")
		}
		if withReplica {
			e.replicaStatus(&ts, *replica, *f.dir)
		}
		out = append(out, ts)
		b.set(i + 1)
	}
	b.finish()
	if e.interrupted() {
		return exitFailed
	}
	failed := map[string]error{}
	for _, ts := range out {
		switch {
		case ts.err != nil && ts.replicaErr != nil:
			failed[ts.Tenant] = fmt.Errorf("%s; %w", tenantErrText(ts.Tenant, ts.err), ts.replicaErr)
		case ts.err != nil:
			failed[ts.Tenant] = ts.err
		case ts.replicaErr != nil:
			failed[ts.Tenant] = ts.replicaErr
		}
	}
	e.reportFailures("status", failed)
	if *asJSON {
		b, _ := json.MarshalIndent(out, "", "  ")
		fmt.Fprintf(e.stdout, "%s\n", b)
	} else {
		tw := tabwriter.NewWriter(e.stdout, 0, 8, 2, ' ', 0)
		if withReplica {
			fmt.Fprintln(tw, "TENANT\tVERSION\tPENDING\tSIZE\tMODIFIED\tREPLICA")
		} else {
			fmt.Fprintln(tw, "TENANT\tVERSION\tPENDING\tSIZE\tMODIFIED")
		}
		for _, ts := range out {
			version, pending := "?", "?"
			if ts.Version != nil {
				version = fmt.Sprint(*ts.Version)
			}
			switch {
			case ts.Ahead > 0:
				pending = fmt.Sprintf("ahead %d", ts.Ahead)
			case ts.err != nil && ts.Version != nil:
				pending = "drift"
			case ts.Pending == nil:
			case len(ts.Pending) == 0:
				pending = "0"
			default:
				pending = fmt.Sprintf("%d: %s", len(ts.Pending), strings.Join(ts.Pending, ", "))
			}
			mod, size := "?", humanSize(ts.SizeBytes)
			if !ts.Modified.IsZero() {
				mod = ts.Modified.Local().Format(time.DateTime)
			}
			if ts.noFile {
				version, pending, size, mod = "-", "-", "-", "-"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s", ts.Tenant, version, pending, size, mod)
			if withReplica {
				fmt.Fprintf(tw, "\t%s", ts.replicaText())
			}
			fmt.Fprintln(tw)
		}
		tw.Flush()
		e.statusNotes(out, *mig)
	}
	if len(failed) > 0 {
		return exitFailed
	}
	return exitOK
}

// statusNotes says, after the status table, what a service does with the
// tenants that are behind or ahead of the migrations in mig: what an
// operator needs to know after a rollback (migrate -down-to).
func (e *env) statusNotes(out []tenantStatus, mig string) {
	behind, ahead := 0, 0
	for _, ts := range out {
		switch {
		case len(ts.Pending) > 0:
			behind++
		case ts.Ahead > 0:
			ahead++
		}
	}
	if behind > 0 {
		fmt.Fprintf(e.stdout, "\n%s behind %s: a service with these migrations in migration_mode=auto applies the pending ones when it next opens the tenant (check refuses it, manual serves it as it is); migrate applies them now.\n",
			plural(behind, "tenant"), mig)
	}
	if ahead > 0 {
		fmt.Fprintf(e.stdout, "\n%s ahead of %s: a service with these migrations refuses them (drift); migrate -down-to, with the migrations that applied them, rolls them back.\n",
			plural(ahead, "tenant"), mig)
	}
}

// tenantIDs returns the one tenant named (which must exist) or all.
func (e *env) tenantIDs(p *sqliteproxy.Proxy, op string, pos []string) ([]string, bool) {
	if len(pos) == 0 {
		return e.allTenants(p, op)
	}
	id := pos[0]
	exists, err := p.TenantExists(e.ctx, id)
	if err == nil && !exists {
		err = notFound(p, id, sqliteproxy.ErrTenantNotFound)
	}
	if err != nil {
		e.tenantErr(op, id, err)
		return nil, false
	}
	return pos, true
}

func (e *env) tenantStatus(p *sqliteproxy.Proxy, id string, withMigrations bool) tenantStatus {
	ts := tenantStatus{Tenant: id}
	path, err := p.TenantPath(id)
	var fi os.FileInfo
	if err == nil {
		fi, err = os.Stat(path)
	}
	if err != nil {
		ts.err = err
		ts.Error = err.Error()
		return ts
	}
	ts.SizeBytes, ts.Modified = diskUsage(fi, path)
	ms, err := p.MigrationStatus(e.ctx, id)
	if err != nil {
		ts.err = err
		ts.Error = tenantErrText(id, err)
		return ts
	}
	n := len(ms.Applied)
	ts.Version = &n
	ts.Applied = []appliedStatus{}
	for _, a := range ms.Applied {
		ts.Applied = append(ts.Applied, appliedStatus{a.Version, a.Name, a.Checksum, a.AppliedAt})
	}
	if !withMigrations {
		// Nothing configured: every applied migration reads as drift.
		return ts
	}
	if ms.Drift != nil {
		ts.Ahead = ms.Ahead
		ts.err = ms.Drift
		ts.Error = tenantErrText(id, ms.Drift)
		return ts
	}
	ts.Pending = append([]string{}, ms.Pending...)
	return ts
}

// diskUsage returns the size of the database file fi at path plus that
// of its -wal file, and the later of their modification times (not an
// empty -wal's: KeepWAL empties it when the tenant closes, later than its
// last write).
func diskUsage(fi os.FileInfo, path string) (int64, time.Time) {
	size, mod := fi.Size(), fi.ModTime()
	if wi, err := os.Stat(path + "-wal"); err == nil && wi.Size() > 0 {
		size += wi.Size()
		if wi.ModTime().After(mod) {
			mod = wi.ModTime()
		}
	}
	return size, mod
}

// humanSize formats a byte count with binary units.
func humanSize(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// check: PRAGMA integrity_check on one or all tenants.
func (e *env) check(args []string) (status int) {
	f := e.newFlags("check")
	pos, st, ok := e.parse(f, args, 0, 1)
	if !ok {
		return st
	}
	if len(pos) == 1 && !e.checkID(f, pos[0]) {
		return exitUsage
	}
	p, st, ok := e.open(f, "")
	if !ok {
		return st
	}
	defer e.closeProxy(p, &status)
	ids, ok := e.tenantIDs(p, "check", pos)
	if !ok {
		return exitFailed
	}
	var b *bar
	failed := map[string]error{}
	done := 0
	if len(pos) == 0 {
		if !e.addStrays(p, "check", failed) {
			return exitFailed
		}
		done = len(failed)
		b = e.newBar(len(ids), "check")
	}
	for i, id := range ids {
		if e.ctx.Err() != nil {
			break
		}
		if err := p.CheckTenant(e.ctx, id); err != nil {
			failed[id] = err
		}
		done++
		b.set(i + 1)
	}
	b.finish()
	e.reportFailures("check", failed)
	if e.interrupted() {
		return exitFailed
	}
	if len(pos) == 1 {
		if len(failed) == 0 {
			fmt.Fprintf(e.stdout, "%s: ok\n", pos[0])
		}
	} else {
		fmt.Fprintf(e.stdout, "%s checked: %d ok, %d failed\n", plural(done, "tenant"), done-len(failed), len(failed))
	}
	if len(failed) > 0 {
		return exitFailed
	}
	return exitOK
}
