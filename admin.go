package sqliteproxy

import (
	"bytes"
	"cmp"
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/mattn/go-sqlite3"

	"github.com/sqliteproxy/sqliteproxy/internal/dirs"
)

// sqliteSuffixes name the files SQLite keeps beside a database file p:
// p+"-wal", p+"-shm", p+"-journal".
var sqliteSuffixes = [...]string{"-wal", "-shm", "-journal"}

// removeWithSideFiles removes a database file and its -wal, -shm and
// -journal files, ignoring those that do not exist.
func removeWithSideFiles(path string) error {
	err := removeSideFiles(path)
	if rerr := os.Remove(path); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) && err == nil {
		err = rerr
	}
	return err
}

// removeSideFiles removes the -wal, -shm and -journal files beside path,
// ignoring those that do not exist.
func removeSideFiles(path string) error {
	var first error
	for _, s := range sqliteSuffixes {
		if err := os.Remove(path + s); err != nil && !errors.Is(err, fs.ErrNotExist) && first == nil {
			first = err
		}
	}
	return first
}

// removeOrphanSideFiles removes the -wal, -shm and -journal files beside
// p when p itself does not exist: side files of a database deleted (or
// replaced) by a process killed between the file and its side files.
// SQLite would replay such a -wal into the next file made under p's name:
// a new tenant would come up holding the deleted one's rows.
//
// Another process may make p and open it meanwhile (the CLI and a service
// creating one tenant at once): side files a process uses are left alone.
// The lock every connection holds on the -shm tells (lockShm); taken here,
// it also keeps a process that is about to open p waiting until the
// orphans are gone, and p is looked for again under it.
func removeOrphanSideFiles(p string) error {
	if _, err := os.Lstat(p); !errors.Is(err, fs.ErrNotExist) {
		return err // p exists (its side files are its own), or cannot be told
	}
	release, err := lockUnusedShm(p + "-shm")
	if errors.Is(err, errShmInUse) {
		return nil // not orphans: made by a process that has p open now
	}
	if err != nil {
		return err
	}
	defer release()
	if _, err := os.Lstat(p); !errors.Is(err, fs.ErrNotExist) {
		return err // made meanwhile
	}
	return removeSideFiles(p)
}

// lockUnusedShm is lockShm for a -shm that a connection of this process
// may use too: errShmInUse when one of this process (another proxy here,
// a connection of the application's own) or of another has its database
// open. Opening a -shm this process has open, to try its lock, would drop
// the locks of that connection when closed: /proc/self/fd tells first.
func lockUnusedShm(p string) (release func(), err error) {
	if inUse, err := openInProcess(p); inUse || err != nil {
		return nil, cmp.Or(err, errShmInUse)
	}
	return lockShm(p)
}

// lockUnusedDatabase takes, on the database file p, what an EXCLUSIVE
// SQLite connection holds (lockDatabase), or fails with errShmInUse when a
// process uses the file (a connection in locking_mode=EXCLUSIVE holds no
// -shm: only this tells of it). A file this process has open is refused
// unopened, as in lockUnusedShm. No file, nothing to lock. release gives
// the lock back. Without write it only looks, on a read-only descriptor,
// and holds nothing: for a file this process may not write.
func lockUnusedDatabase(p string, write bool) (release func(), err error) {
	if inUse, err := openInProcess(p); inUse || err != nil {
		return nil, cmp.Or(err, errShmInUse)
	}
	flag := os.O_RDONLY
	if write {
		flag = os.O_RDWR
	}
	f, err := os.OpenFile(p, flag|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0) // a FIFO put there does not hold the open
	if errors.Is(err, fs.ErrNotExist) {
		return func() {}, nil
	}
	if err != nil {
		return nil, err
	}
	if err := lockDatabase(f, write); err != nil || !write {
		f.Close()
		return func() {}, err
	}
	return func() { f.Close() }, nil
}

// lockBackupDestination keeps processes off the file at dst until a
// backup takes its place: a symbolic link at its -shm (no -shm of dst's:
// SQLite refuses one) is removed, never followed (adv45); the -shm's lock
// is taken (lockUnusedShm), and for a regular file the file's own too: a
// connection in locking_mode=EXCLUSIVE holds no -shm, and its -wal, with its
// commits, was removed and the file replaced under it (adv46). Held until
// the rename, so that no process begins a transaction in between (adv47);
// only looked at when this process may not write the file (an older backup
// made read-only, which the rename replaces all the same). A link at dst is
// replaced, its target untouched: nothing to ask.
func lockBackupDestination(dst string) (release func(), err error) {
	if fi, err := os.Lstat(dst + "-shm"); err == nil && fi.Mode()&os.ModeSymlink != 0 {
		if err := os.Remove(dst + "-shm"); err != nil {
			return nil, err
		}
	}
	releaseShm, err := lockUnusedShm(dst + "-shm")
	if err != nil {
		return nil, err
	}
	if fi, err := os.Lstat(dst); err != nil || !fi.Mode().IsRegular() {
		return releaseShm, nil
	}
	releaseDB, err := lockUnusedDatabase(dst, true)
	if errors.Is(err, fs.ErrPermission) {
		releaseDB, err = lockUnusedDatabase(dst, false)
	}
	if err != nil {
		releaseShm()
		return nil, err
	}
	return func() { releaseDB(); releaseShm() }, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// tenantFor returns the live tenant for id after checking the ID, pinned:
// the caller unpins it when done.
func (p *Proxy) tenantFor(op, id string) (*tenant, error) {
	if p.c.r.isClosed.Load() {
		return nil, opError(op, id, ErrClosed)
	}
	if err := checkTenantID(id); err != nil {
		return nil, opError(op, id, err)
	}
	if op != opCreateTenant { // createFile checks its folder itself
		if err := p.c.r.sameDir(op, id); err != nil {
			return nil, err
		}
	}
	return p.c.r.tenant(id)
}

// sameDir refuses an operation on tenant files (op, for tenant id; "" for
// none) once Config.Dir no longer resolves to the directory it resolved to
// at New: a symlink Dir pointed elsewhere while the proxy runs. Statements
// and creations were refused then, but a delete or a restore acted on the
// directory the link named now: another data directory's tenant deleted, a
// restore written there (walk25).
func (r *router) sameDir(op, id string) error {
	return opErrorOrNil(op, id, r.dirChanged())
}

// dirChanged is sameDir's error, unwrapped.
func (r *router) dirChanged() error {
	real, err := filepath.EvalSymlinks(r.cfg.Dir)
	if err != nil {
		return fmt.Errorf("data directory %s: %w", r.cfg.Dir, err)
	}
	if real != r.conns.realDir {
		return fmt.Errorf("%w: %s is %s, not %s: the data directory may not change while the proxy runs", errNotTenantFile, r.cfg.Dir, real, r.conns.realDir)
	}
	return nil
}

// CreateTenant creates the tenant's database file and applies the
// migrations, or fails with ErrTenantExists. It works whatever
// Config.ExplicitCreate says. The new tenant is left closed (no
// connection, no slot of the budget): its first use opens it. With
// replication or Config.Ownership it is opened, so that it is registered
// for streaming, and its lease taken, before CreateTenant returns.
func (p *Proxy) CreateTenant(ctx context.Context, id string) error {
	for {
		t, err := p.tenantFor(opCreateTenant, id)
		if err != nil {
			return err
		}
		defer t.unpin() // at most once more per delete that overtook us
		if err := t.lockWriter(ctx); err != nil {
			if errors.Is(err, ErrTenantNotFound) {
				continue
			}
			return err
		}
		// Under the writer semaphore nobody else in this process creates it.
		exists, err := t.fileExists(opCreateTenant)
		if err == nil && exists {
			err = opError(opCreateTenant, id, ErrTenantExists)
		}
		if err != nil {
			t.unlockWriter()
			return err
		}
		if t.w == nil && p.c.r.createsClosed() {
			err := p.c.r.createClosed(ctx, t)
			t.releaseWriter()
			return err
		}
		t.createdBy.Store(false)
		if _, err := t.openLockedWriter(ctx, openOpts{mayCreate: true, migrate: true}); err != nil {
			return err
		}
		created := t.createdBy.Load()
		t.releaseWriter()
		if !created { // another process linked it first
			return opError(opCreateTenant, id, ErrTenantExists)
		}
		return nil
	}
}

// TenantExists reports whether the tenant has a database file here. With
// replication, a tenant only in the replica (a new node) has none until
// its first access restores it; CreateTenant restores it too, and then
// says ErrTenantExists.
func (p *Proxy) TenantExists(ctx context.Context, id string) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	t, err := p.tenantFor(opTenantExists, id)
	if err != nil {
		return false, err
	}
	defer t.unpin()
	if t.state.Load() == tenantDeleted {
		return false, nil
	}
	return t.fileExists(opTenantExists)
}

// DeleteTenant erases a tenant: it stops new work for it, waits for
// in-flight work (up to ctx; if it gives up it says so and deletes
// nothing), closes its connections, checkpoints its -wal into its file (a
// file another process has open is refused) and removes the file and its
// -wal, -shm and -journal files, then syncs the directory. Work that was waiting
// for the tenant fails with ErrTenantNotFound; work that arrives afterwards
// sees a new, empty tenant (unless ExplicitCreate). ErrTenantNotFound if
// the tenant has no file. A delete or restore of a tenant that another is
// deleting or restoring waits for it (up to ctx): two deletes at once give
// nil and ErrTenantNotFound.
//
// With replication it erases the tenant's replica last (file:// and s3://;
// a tenant only in the replica too). If that fails (the object store is
// down), the tenant is deleted here and not made again until its replica
// is erased: by DeleteTenant again, or by its next access, which erases it
// first (and fails while it cannot). A first access restoring the tenant
// from its replica meanwhile is waited for, and what it restored deleted.
// With Ownership the delete is recorded in the cluster before anything is
// deleted (cut off from etcd, nothing is, and it says so): no later owner
// restores a deleted generation, whatever is written into it afterwards.
func (p *Proxy) DeleteTenant(ctx context.Context, id string) error {
	endOp, err := p.c.r.beginOp(opDeleteTenant, id)
	if err != nil {
		return err
	}
	defer endOp()
	t, err := p.tenantFor(opDeleteTenant, id)
	if err != nil {
		return err
	}
	defer t.unpin()
	r := p.c.r
	if done, err := r.deleteMissing(ctx, t); done {
		return err
	}
	if err := t.drain(ctx, opDeleteTenant, evictDelete); err != nil {
		return err
	}
	if err := r.sameDir(opDeleteTenant, id); err != nil { // again: the drain may have waited long
		t.endDrain(tenantActive)
		return err
	}
	// Checkpoint its -wal into it first (a replicated tenant keeps one, and
	// so does a process killed with the file open), refusing a file another
	// process has open: a delete killed after the rename below then leaves
	// no -wal with rows in it for SQLite to replay into the next file of
	// the name. Then move the file out of the tenant's name, so nothing can
	// open a half-deleted tenant; then its side files, then the file: no
	// other process opens it until they are gone.
	leave, err := r.settleForReplace(ctx, t)
	if err != nil && diskFull(err) {
		// No room for the checkpoint (nor, for a -shm SQLite must map, to
		// open the file): deleting is how an operator frees space, so the
		// file goes with its side files, unless a process has it open.
		// Side files left by a delete killed midway are orphans, removed
		// before a file of the name is made again (removeOrphanSideFiles).
		leave, err = r.gateUnsettled(ctx, t)
	}
	if err != nil {
		t.endDrain(tenantActive)
		if errors.Is(err, fs.ErrNotExist) {
			return opError(opDeleteTenant, id, ErrTenantNotFound)
		}
		return opError(opDeleteTenant, id, err)
	}
	undo := func() {}
	if r.repl != nil {
		// Recorded in the cluster (Ownership) before anything is deleted:
		// recorded after the erase, a delete whose release etcd did not
		// take was undone by a former owner's late write (adv37); after
		// the files here, a delete cut off from etcd left the rows to the
		// next owner, this node's lease gone (adv38). Put back when the
		// delete stops before it deleted anything, and when etcd's answer
		// is not known (it may have taken it): the tenant goes on in this
		// generation, which the record said deleted (adv39).
		prev := deletedFloor(t.lease)
		undo = func() {
			uctx, cancel := context.WithTimeout(context.Background(), releaseTimeout)
			defer cancel()
			recordDelete(uctx, t, max(prev, 0))
		}
		if err := recordDelete(ctx, t, t.gen.Load()); err != nil {
			undo()
			leave()
			t.endDrain(tenantActive)
			if g := t.gen.Load(); g > 0 && deletedFloor(t.lease) >= g {
				// Neither the record nor its undo answered: etcd may hold
				// the delete. Said so, as the README does.
				err = fmt.Errorf("%w; etcd may have recorded the delete without answering: the next open of the tenant here or its release records it live again, but if this node dies before either, the node that takes the tenant next treats it as deleted", err)
			}
			return opError(opDeleteTenant, id, fmt.Errorf("the delete could not be recorded in the cluster, and nothing was deleted: %w", err))
		}
	}
	if r.repl != nil && r.repl.erasable() {
		// Until its replica is erased (last, below): an open that found
		// no file restored the tenant from it.
		if err := markDeleted(t); err != nil {
			undo()
			leave()
			t.endDrain(tenantActive)
			return opError(opDeleteTenant, id, err)
		}
	}
	r.markWritten(t) // a delete is a write of the tenant's generation
	hidden := tempName(filepath.Dir(t.path), deletingPrefix, id)
	if err := os.Rename(t.path, hidden); err != nil {
		undo()
		leave()
		t.endDrain(tenantActive)
		if errors.Is(err, fs.ErrNotExist) {
			return opError(opDeleteTenant, id, ErrTenantNotFound)
		}
		return opError(opDeleteTenant, id, err)
	}
	if deleteAfterRename != nil {
		if err := deleteAfterRename(); err != nil {
			leave()
			return err // a stand-in for a kill: nothing else runs
		}
	}
	// The markers first (errors.Join's arguments run in order): removing a
	// large file takes a while, and a delete killed meanwhile left a marker
	// naming a file that is gone, which the CLI's delete, finding no
	// tenant, could not remove (adv43).
	err = errors.Join(removeIfExists(restoredMarker(t.path)), removeIfExists(restoredMarker(t.path)+".tmp"), removeIfExists(fromReplicaMarker(t.path)), removeIfExists(unsyncedMarker(t.path)), removeIfExists(genMarker(t.path)), removeWithSideFiles(t.path), removeWithSideFiles(hidden), os.RemoveAll(metaDir(t.path)))
	leave()
	pending, erased := false, false
	if r.repl != nil && err == nil {
		if _, rerr := r.repl.deleteReplica(ctx, id); rerr != nil {
			pending = r.repl.erasable()
			if pending {
				err = fmt.Errorf("deleted here, but erasing its replica failed (run DeleteTenant again; until its replica is erased, the tenant is not made again here): %w", rerr)
			} else {
				err = fmt.Errorf("deleted here, but its replica stays: %w (the next access restores the tenant from it: erase the replica by other means first)", rerr)
			}
		} else {
			erased = true
			r.eraseLate(ctx, t) // before the marker goes: it tells another process's open to erase first
			err = removeIfExists(deletedMarker(t.path))
		}
	}
	if serr := syncDir(filepath.Dir(t.path)); err == nil {
		err = serr
	}
	switch {
	case erased:
		r.releaseDeleted(t) // nothing left in any generation
	case !pending:
		r.releaseLease(t, 0)
	default:
		// The lease is kept (Ownership): another node that took the
		// tenant now restored it from the replica, deleted rows and all;
		// it is sent here, where the next access erases the replica
		// first. That access's object shares the lease (Ownership hands a
		// held lease out again) and releases it in the end, which closes
		// Lost: this object's watchLease must not then take it for lost
		// (stored after the release's own clearing, lostLeases made the
		// tenant's SyncTenant and Generation answer as for a lost lease
		// until its next open).
		t.lost.Store((<-chan struct{})(nil))
	}
	r.forget(t)
	t.ready.Store(false)
	t.endDrain(tenantDeleted)
	if err != nil {
		return opError(opDeleteTenant, id, err)
	}
	return nil
}

// deleteMissing is DeleteTenant for a tenant whose file may be missing:
// done with the delete's result (the replica erased: nil; none:
// ErrTenantNotFound), or not done when the file is there (found, or
// restored from the replica by an open while it waited), for the delete to
// go on.
func (r *router) deleteMissing(ctx context.Context, t *tenant) (done bool, err error) {
	err = t.mustExist(opDeleteTenant)
	if err == nil {
		return false, nil
	}
	if !errors.Is(err, ErrTenantNotFound) {
		return true, err
	}
	// A delete killed between the file and its side files, run again: the
	// side files still hold the deleted rows.
	if rerr := removeOrphanSideFiles(t.path); rerr != nil {
		return true, opError(opDeleteTenant, t.id, rerr)
	}
	if r.repl == nil {
		return true, err
	}
	// Not here, perhaps in the replica: erase it there (as its owner, with
	// Ownership).
	found, rerr := r.deleteReplicaOwned(ctx, t)
	switch {
	case rerr == errRestoredMeanwhile:
		return false, nil
	case rerr != nil:
		return true, opError(opDeleteTenant, t.id, fmt.Errorf("erase replica: %w", rerr))
	case found:
		return true, nil
	}
	return true, err
}

// BackupTenant writes a transactionally consistent copy of the tenant to
// dstPath while the tenant keeps taking writes (SQLite's online backup API,
// one step). The copy is a standalone database (journal mode DELETE) that
// passes integrity_check; it is written under a temporary name next to
// dstPath and renamed into place, so dstPath is never half-written.
// dstPath must lie outside the data directory: a copy there could take the
// place of a tenant's file. A symbolic link at dstPath is replaced by the
// copy, not written through. Side files of an earlier file at dstPath are
// removed with it (SQLite would replay them into the copy), and a dstPath
// that a process has open in WAL mode, or holds a lock on, is refused.
func (p *Proxy) BackupTenant(ctx context.Context, id, dstPath string) error {
	const op = opBackupTenant
	t, err := p.tenantFor(op, id)
	if err != nil {
		return err
	}
	defer t.unpin()
	// Where the system writes it, and only there: "lnk/../x.db" is beside
	// lnk's target (a bucket of the data directory), not beside lnk. A
	// symbolic link at dstPath itself is replaced, not written through:
	// followed, a backup -all -force into a folder where acme.db linked to
	// globex.db made acme's backup globex's, or overwrote a file elsewhere
	// and removed its -wal (adv43).
	given := dstPath
	if dirs.NamesFolder(dstPath) {
		// A folder's name ("bk/2026-11-25/", "bk/new/."): not made a file
		// (adv45, adv46).
		return opError(op, id, fmt.Errorf("backup destination %s names a directory: name the backup file", given))
	}
	dstPath, err = dirs.ResolveParent(dstPath)
	if err != nil {
		return opError(op, id, fmt.Errorf("backup destination %s: %w", given, err))
	}
	if fi, err := os.Stat(dstPath); err == nil && fi.IsDir() {
		// Also through a link at the name (Dir itself, when it is one:
		// replaced, the data directory was gone; adv44).
		return opError(op, id, fmt.Errorf("backup destination %s is a directory: name the backup file", given))
	}
	if in, err := dirs.Inside(filepath.Dir(dstPath), p.c.r.cfg.Dir); err != nil || in {
		if err == nil {
			err = fmt.Errorf("%s is inside the data directory %s: write backups elsewhere", given, p.c.r.cfg.Dir)
		} else {
			err = fmt.Errorf("backup destination %s: %w", given, err)
		}
		return opError(op, id, err)
	}
	if fi, err := os.Stat(filepath.Dir(dstPath)); err != nil || !fi.IsDir() {
		// Named here: the copy's error would name its temporary file.
		if err == nil {
			err = fmt.Errorf("%s is not a directory", filepath.Dir(dstPath))
		}
		return opError(op, id, fmt.Errorf("backup destination: %w", err))
	}
	if err := p.c.r.ownedCopy(ctx, t); err != nil {
		return err
	}
	src, done, err := t.ungatedReader(ctx, op)
	if err != nil {
		return err
	}
	defer done()
	tmp := tempName(filepath.Dir(dstPath), ".backup-", id)
	defer removeWithSideFiles(tmp)
	if err := copyDatabase(ctx, tmp, src); err != nil {
		return opError(op, id, err)
	}
	// Side files of an earlier file at dstPath (a backup opened in WAL
	// mode, or left mid-transaction, by a killed process) would be
	// replayed into the copy, or roll it "back", at its next open: the
	// new backup then held the old one's pages. Removed, unless a process
	// has that file open.
	release, err := lockBackupDestination(dstPath)
	if err != nil {
		if errors.Is(err, errShmInUse) {
			err = fmt.Errorf("%s is open in another process (or a connection of this one): close it, or write the backup elsewhere", dstPath)
		}
		return opError(op, id, err)
	}
	defer release()
	if err := removeSideFiles(dstPath); err != nil {
		return opError(op, id, err)
	}
	if err := os.Rename(tmp, dstPath); err != nil {
		return opError(op, id, err)
	}
	if err := syncDir(filepath.Dir(dstPath)); err != nil {
		return opError(op, id, err)
	}
	return nil
}

// ownedCopy makes this node t's owner (Config.Ownership) and brings its
// copy up to date with the replica, as a first access does, before
// BackupTenant or CheckTenant reads it: a copy left here by an earlier
// lease was read as it was, older than the tenant (soak34: a backup on the
// owner right after a move back to it lacked the rows acknowledged
// elsewhere since; one on an owner with no copy said "not found"). It
// neither creates the tenant nor applies migrations: a tenant behind or
// ahead of them is brought up to date all the same (the replica is read
// before the migrations are looked at) and then read as it is.
func (r *router) ownedCopy(ctx context.Context, t *tenant) error {
	if r.cfg.Ownership == nil || (t.ready.Load() && !t.fenced.Load()) {
		return nil
	}
	if err := t.lockWriter(ctx); err != nil {
		return err
	}
	if _, err := t.openLockedWriter(ctx, openOpts{}); err != nil {
		if errors.Is(err, ErrPendingMigrations) || errors.Is(err, ErrMigrationDrift) || errors.Is(err, errAhead) {
			return nil
		}
		if t.lockWriter(ctx) != nil {
			return err
		}
		defer t.unlockWriter()
		if t.lease != nil && hasFile(t.path) {
			// The replica could not be read (the object store down, when
			// operators want a backup most: adv37), but this node's copy
			// is of the generation written last, under its own lease that
			// ended since, and nobody took the tenant in between: it is
			// the tenant.
			if prevGen, _ := t.lease.Previous(); prevGen > 0 && readGenMarker(t.path) == prevGen && deletedFloor(t.lease) < prevGen {
				return nil
			}
		}
		return err
	}
	t.releaseWriter()
	return nil
}

// CheckTenant runs PRAGMA integrity_check on the tenant and returns nil
// when SQLite reports it ok, else an error quoting the first problems. Like
// BackupTenant it neither applies nor requires migrations, and it runs
// beside the tenant's traffic (on a reader, or on a read-only connection of
// its own within the budget). A full check reads the whole file.
func (p *Proxy) CheckTenant(ctx context.Context, id string) error {
	const op = opCheckTenant
	t, err := p.tenantFor(op, id)
	if err != nil {
		return err
	}
	defer t.unpin()
	if err := p.c.r.ownedCopy(ctx, t); err != nil {
		return err
	}
	c, done, err := t.ungatedReader(ctx, op)
	if err != nil {
		return err
	}
	defer done()
	if err := checkIntegrity(ctx, c, "integrity_check"); err != nil {
		return opError(op, id, err)
	}
	return nil
}

// backupStepPages is how many pages a backup copies between two looks at
// its context (4 MiB of 4 KiB pages).
const backupStepPages = 1024

// backupStepped, when set (tests), runs after each step that leaves pages
// to copy.
var backupStepped func()

// backupSteps runs bk to its end, a few pages at a time, until ctx ends:
// in one step, a backup of a large tenant ran seconds past its deadline.
// A step that copies nothing and is not the last is a lock it could not
// take within the busy timeout (mattn reports SQLITE_BUSY and
// SQLITE_LOCKED as no error, and Finish then returned nil for a backup
// that had copied nothing).
func backupSteps(ctx context.Context, bk *sqlite3.SQLiteBackup) error {
	for {
		before := bk.Remaining()
		done, err := bk.Step(backupStepPages)
		if err != nil || done {
			return err
		}
		if after := bk.Remaining(); after == 0 || after == before {
			return sqlite3.Error{Code: sqlite3.ErrBusy}
		}
		if backupStepped != nil {
			backupStepped()
		}
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
	}
}

// copyDatabase copies src's main database into a new file at dst with the
// online backup API, leaves it in rollback-journal mode, checks it and syncs it.
func copyDatabase(ctx context.Context, dst string, src *sqlite3.SQLiteConn) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	// Create the file first so that it is 0600 (tenant data), whatever the umask.
	f, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	err = f.Chmod(0o600)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	dc, err := plainDriver.Open(fileURI(dst) + "?_journal_mode=DELETE&_synchronous=FULL")
	if err != nil {
		return err
	}
	d := dc.(*sqlite3.SQLiteConn)
	defer d.Close()
	endRead := func() {}
	if src.AutoCommit() {
		// One snapshot for every step: without a read transaction of its
		// own, each step takes one, and a commit between two steps starts
		// the backup over.
		if _, err := src.Exec("BEGIN", nil); err != nil {
			return err
		}
		ended := false
		endRead = func() { // once the pages are copied: it pins the WAL
			if !ended {
				ended = true
				src.Exec("ROLLBACK", nil)
			}
		}
		defer endRead()
		// The read lock may wait for another process's (the busy
		// handler): until ctx ends (ctxwatch.go).
		if _, err := execWatched(ctx, src, func(bg context.Context) (driver.Result, error) {
			return src.ExecContext(bg, "SELECT 1 FROM sqlite_master LIMIT 1", nil)
		}); err != nil {
			return err
		}
	}
	bk, err := d.Backup("main", src, "main")
	if err != nil {
		return err
	}
	err = backupSteps(ctx, bk)
	if ferr := bk.Finish(); err == nil {
		err = ferr
	}
	endRead()
	if err != nil {
		return err
	}
	if _, err := d.Exec("PRAGMA journal_mode = DELETE", nil); err != nil {
		return err
	}
	if err := checkIntegrity(ctx, d, "integrity_check"); err != nil {
		return err
	}
	if err := d.Close(); err != nil {
		return err
	}
	f, err = os.OpenFile(dst, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// checkIntegrity runs PRAGMA quick_check or integrity_check and wants the
// single row "ok"; otherwise the error quotes the first three problems.
func checkIntegrity(ctx context.Context, c *sqlite3.SQLiteConn, pragma string) error {
	rows, err := c.QueryContext(ctx, "PRAGMA "+pragma, nil)
	if err != nil {
		return err
	}
	defer rows.Close()
	dest := make([]driver.Value, 1)
	var problems []string
	for {
		if err := rows.Next(dest); err == io.EOF {
			break
		} else if err != nil {
			return err
		}
		msg := fmt.Sprint(dest[0])
		if b, ok := dest[0].([]byte); ok {
			msg = string(b)
		}
		// A row may hold several problems, a line each ("found 1
		// problem(s)" listed four).
		problems = append(problems, strings.Split(strings.TrimRight(msg, "\n"), "\n")...)
	}
	if len(problems) == 1 && problems[0] == "ok" {
		return nil
	}
	shown := problems[:min(len(problems), 3)]
	more := ""
	if len(problems) > len(shown) {
		more = fmt.Sprintf("; and %d more", len(problems)-len(shown))
	}
	return fmt.Errorf("%s found %d problem(s): %s%s", pragma, len(problems), strings.Join(shown, "; "), more)
}

// RestoreTenant replaces the tenant's database with a copy of srcPath. The
// source must be a healthy SQLite database (quick_check); anything else is
// refused and the tenant is left untouched. The tenant is drained (up to
// ctx), its -wal checkpointed into its file (so that a process killed
// before the rename leaves the old tenant whole; a file another process
// has open is refused), its side files removed and its file replaced by an
// atomic rename; work that arrives meanwhile waits and then sees the
// restored data.
// Pending migrations apply on the next access. Restoring into an ID that
// has no file creates the tenant. Close ends a restore that is still
// copying its source (ErrClosed, the tenant untouched); one past its copy
// finishes, and Close waits for it.
func (p *Proxy) RestoreTenant(ctx context.Context, id, srcPath string) error {
	if srcID, ok := p.c.r.tenantOfFile(srcPath); ok {
		// A tenant of this proxy's (a clone, or the tenant itself): read
		// on a connection of that tenant, as BackupTenant reads. Opened
		// immutable, as a file nobody had open, it was read without locks
		// while traffic opened the tenant, wrote and checkpointed: the
		// copy mixed two states (and passed quick_check). A delete of the
		// source meanwhile waits for the read, as for any.
		return p.restore(ctx, opRestoreTenant, id, false, func(tmp string) error {
			if err := p.c.r.copyTenant(ctx, opRestoreTenant, srcID, tmp); err != nil {
				return fmt.Errorf("source %s: %w", srcPath, err)
			}
			return nil
		})
	}
	return p.restore(ctx, opRestoreTenant, id, false, func(tmp string) error {
		// Ended by Close as well: a copy, or its wait for another copy of
		// the same source (another proxy's in this process), held Close
		// for BusyTimeout and the directory after it.
		ctx, cancel := untilClosed(ctx, p.c.r.stop)
		defer cancel()
		if err := copyVerified(ctx, srcPath, tmp, p.c.r.cfg.BusyTimeout); err != nil {
			if errors.Is(context.Cause(ctx), ErrClosed) && errors.Is(err, context.Canceled) {
				err = ErrClosed // a statement's wait says Canceled, not the cause
			}
			return fmt.Errorf("source %s: %w", srcPath, err)
		}
		return nil
	})
}

// settleForReplace prepares t's file, drained, to be renamed over or away
// by a restore or a delete: settled (its -wal checkpointed into it, a file
// another process has open refused), with t's open gate held exclusively
// (see enterGate) so that no other process opens it until leave. It
// settles before taking the gate (a long checkpoint held the opens of
// other tenants that share its slot) and once more within it (quick: a
// process that opened the file meanwhile is seen and refused). The gate
// is waited for up to ctx, or BusyTimeout for a ctx without deadline
// (opens hold it for the time of a connection's open).
func (r *router) settleForReplace(ctx context.Context, t *tenant) (leave func(), err error) {
	settleIfThere := func() error {
		if _, err := os.Lstat(t.path); err != nil {
			return nil // none (a restore makes the tenant), or the rename says
		}
		err := settle(t.path)
		if errors.Is(err, errOpenElsewhere) && r.repl != nil && r.repl.dropStray(ctx, t.path) {
			err = settle(t.path)
		}
		return err
	}
	if err := settleIfThere(); err != nil {
		return nil, err
	}
	if leave, err = enterGate(ctx, r.stop, r.cfg.BusyTimeout, r.presence, t.id, true); err != nil {
		return nil, err
	}
	if err := settleIfThere(); err != nil {
		leave()
		return nil, err
	}
	return leave, nil
}

// diskFull reports whether err says the file system is full.
func diskFull(err error) bool {
	var se sqlite3.Error
	if errors.As(err, &se) && (se.Code == sqlite3.ErrFull || se.SystemErrno == syscall.ENOSPC) {
		return true
	}
	return errors.Is(err, syscall.ENOSPC)
}

// gateUnsettled is settleForReplace for a file that cannot be settled (its
// file system is full): it holds t's open gate and the lock every
// connection to t's file holds on its -shm (lockShm), refusing a file that
// a process has open. leave gives both up.
func (r *router) gateUnsettled(ctx context.Context, t *tenant) (func(), error) {
	leave, err := enterGate(ctx, r.stop, r.cfg.BusyTimeout, r.presence, t.id, true)
	if err != nil {
		return nil, err
	}
	lock := func() (func(), error) { return lockUnusedShm(t.path + "-shm") }
	if _, err := os.Lstat(t.path + "-shm"); errors.Is(err, fs.ErrNotExist) {
		switch wal, frames := walFrames(t.path); {
		case frames:
			// A -wal without a -shm: a connection in exclusive locking
			// mode may hold it, which no -shm lock tells.
			leave()
			return nil, fmt.Errorf("%s has a -wal but no -shm, and a full file system leaves no room to check it: free some space first", t.path)
		case wal:
			// An empty one: what KeepWAL leaves after a migration on a
			// connection in exclusive locking mode. Such a connection, if
			// one has it open, holds the database file's locks: they tell.
			lock = func() (func(), error) { return lockUnusedDatabase(t.path, true) }
		}
	}
	release, err := lock()
	if err != nil {
		leave()
		if errors.Is(err, errShmInUse) {
			err = fmt.Errorf("%s is open in another process, or another proxy of this process: stop it first", t.path)
		}
		return nil, err
	}
	return func() { release(); leave() }, nil
}

// deleteAfterRename, set by tests, stands for a delete killed just after
// it moved the file out of the tenant's name: an error from it ends the
// delete there, the tenant left draining.
var deleteAfterRename func() error

// restoreBeforeRename, set by tests, stands for a restore killed just
// before its rename: an error from it ends the restore there.
var restoreBeforeRename func() error

// sourceOpenTried, when set (tests), runs when copyVerified's open of its
// source src fails.
var sourceOpenTried func(src string)

// copySourceLocked, when set (tests), runs once copyVerified holds its lock
// on a source file (lockDatabase); sourceCopyWaits when a copy waits for
// another of the same file.
var copySourceLocked, sourceCopyWaits func()

// restore replaces tenant id's database with the file fill writes at tmp
// (a healthy database, checked by fill), draining the tenant. A tenant that
// is or was replicated here, or whose copy comes from its replica
// (fromReplica), is marked restored on purpose: the copy becomes the
// replica's head (at once with replication on, else at its next
// registration), however far behind the replica it is.
func (p *Proxy) restore(ctx context.Context, op, id string, fromReplica bool, fill func(tmp string) error) error {
	return p.restoreChecked(ctx, op, id, fromReplica, fill, nil)
}

// restoreChecked is restore, with check (when not nil) asked once the
// tenant is drained and this node owns it (Config.Ownership), before the
// copy takes its place.
func (p *Proxy) restoreChecked(ctx context.Context, op, id string, fromReplica bool, fill func(tmp string) error, check func(t *tenant) error) error {
	endOp, err := p.c.r.beginOp(op, id)
	if err != nil {
		return err
	}
	defer endOp()
	t, err := p.tenantFor(op, id)
	if err != nil {
		return err
	}
	defer t.unpin()
	r := p.c.r
	if r.repl != nil || fromReplica {
		// From a replica, also without replication (the CLI's restore
		// -replica): the service then took the restored copy for the head.
		if err := refuseDeleted(op, t); err != nil {
			return err
		}
	}
	// Refused before the copy or download, not after it (the drain takes
	// the lease, and fails then anyway).
	if err := r.refuseOtherOwner(ctx, op, t); err != nil {
		return err
	}
	if err := r.makeTenantDir(t); err != nil {
		return opError(op, id, err)
	}
	// Where the replica is now, if the store answers soon (markRestored):
	// read before the drain, which it must not hold up.
	var remote uint64
	remoteKnown := false
	if r.repl != nil {
		lctx, cancel := context.WithTimeout(ctx, restoreBoundTimeout)
		pos, err := r.repl.replicaPos(lctx, t.replicaKey())
		cancel()
		remote, remoteKnown = pos, err == nil
	}
	tmp := tempName(filepath.Dir(t.path), restoringPrefix, id)
	defer removeWithSideFiles(tmp)
	if err := fill(tmp); err != nil {
		return opError(op, id, err)
	}
	if err := os.Chmod(tmp, 0o600); err != nil {
		return opError(op, id, err)
	}
	if err := t.drain(ctx, op, evictRestore); errors.Is(err, ErrTenantNotFound) {
		// Deleted meanwhile: restore into the new tenant.
		return p.restoreChecked(ctx, op, id, fromReplica, func(tmp2 string) error { return os.Rename(tmp, tmp2) }, check)
	} else if err != nil {
		return err
	}
	if err := r.sameDir(op, id); err != nil { // again: the copy and the drain may have taken long
		t.endDrain(tenantActive)
		return err
	}
	if check != nil {
		if err := check(t); err != nil {
			t.endDrain(tenantActive)
			return opError(op, id, err)
		}
	}
	// Side files of the old database would be replayed into the new one,
	// and Litestream's files describe the old one. Its -wal may hold
	// acknowledged commits (a process killed before it closed the file):
	// checkpoint them into the old file first, so that a restore killed
	// before its rename leaves the old tenant whole, not without them. No
	// other process opens the file from then until the rename.
	leave, err := r.settleForReplace(ctx, t)
	if err != nil {
		t.endDrain(tenantActive)
		return opError(op, id, err)
	}
	if t.lease != nil && isDone(t.lease.Lost()) {
		// A move (or the lease's loss) ended it after the drain: the
		// restore may not replace what the move's target is to restore
		// (adv25: renamed anyway, the reopen refused, nothing released the
		// lease, and the move waited). Released at the drain's position.
		leave()
		r.letGoLost(t)
		t.endDrain(tenantActive)
		return opError(op, id, fmt.Errorf("%w (a move took the tenant during the restore; nothing changed)", errLeaseEnded))
	}
	var bound *restoreBound
	if r.repl != nil {
		// What this node knows of the replica now (markRestored): its
		// position, or Litestream's beside the old file, and with
		// Ownership the generation it owns (always known: a newer one
		// written by another node supersedes the restore). Without
		// Ownership and neither known (no old file, the store down), the
		// restore is kept however far behind the replica it is, as one
		// without replication.
		local, err := localPos(t.path)
		if err != nil {
			leave()
			t.endDrain(tenantActive)
			return opError(op, id, err)
		}
		// A restore again of a copy not streamed yet knows what the one
		// before it knew (its marker, or the replica it was restored from).
		known := remoteKnown || local > 0
		if ok, b, _, err := markerNames(restoredMarker(t.path), t.path); err == nil && ok && b != nil {
			remote, known = max(remote, b.pos), true
		}
		if fr, err := readFromReplica(t.path, local, false); err == nil && fr.ok {
			remote, known = max(remote, fr.pos), true
		}
		if known || t.gen.Load() != 0 {
			bound = &restoreBound{gen: t.gen.Load(), pos: max(local, remote)}
		}
	}
	err = errors.Join(removeSideFiles(t.path), os.RemoveAll(metaDir(t.path)))
	if err == nil {
		// Restored on purpose: this copy is to become the replica's head,
		// however far behind the replica it is, whenever it is next
		// streamed. Also without replication here: a restore by the CLI
		// (a proxy without replication) into a fresh directory, which the
		// service with replication then opened, was taken for a stale copy
		// and replaced by the replica, the backup lost.
		err = markRestored(t.path, tmp, bound)
	}
	marked := err == nil
	if err == nil && restoreBeforeRename != nil {
		err = restoreBeforeRename()
	}
	if err == nil {
		r.markWritten(t)
		err = os.Rename(tmp, t.path)
	} else if marked {
		// Not restored: the marker must not stay on the old file (a stale
		// copy would then be taken for a restore and become the replica's
		// head). One left by a kill names tmp's file, not the tenant's,
		// and does not count (restoredOnPurpose).
		os.Remove(restoredMarker(t.path))
	}
	if err == nil {
		err = syncDir(filepath.Dir(t.path))
	}
	if err == nil {
		t.keptPos = nil // the position of the file replaced
	}
	leave()
	t.ready.Store(false)
	t.endDrain(tenantActive)
	if err != nil {
		return opError(op, id, err)
	}
	if r.repl != nil {
		// Open it (registering it with Litestream) and sync: the restored
		// state becomes the replica's head now, not at the next access.
		err := func() error {
			if _, err := t.acquireWriter(ctx); err != nil {
				return err
			}
			t.releaseWriter()
			return p.SyncTenant(ctx, id)
		}()
		if err != nil {
			// The file is the restored one already: say so, or the caller
			// takes the tenant for the old one.
			return fmt.Errorf("restored, but it is not in the replica yet (it becomes the head when the tenant is next opened with replication): %w", err)
		}
	}
	return nil
}

// restoreBoundTimeout bounds a restore's look at its replica's position
// (markRestored): the store down, the restore goes on without it.
const restoreBoundTimeout = 5 * time.Second

// checkFile fails unless the file at path is a healthy SQLite database
// (PRAGMA quick_check), reading it without changing it.
func checkFile(ctx context.Context, path string) error {
	sc, err := plainDriver.Open(fileURI(path) + "?mode=ro&immutable=1")
	if err != nil {
		return err
	}
	defer sc.Close()
	if err := checkIntegrity(ctx, sc.(*sqlite3.SQLiteConn), "quick_check"); err != nil {
		return unhealthy(ctx, err)
	}
	return nil
}

// tenantOfFile returns the tenant whose database file path is in this
// proxy's Dir (and layout), symlinks resolved.
func (r *router) tenantOfFile(path string) (string, bool) {
	// The whole path resolved: a symlink to a tenant's file (a link in a
	// backup folder) is that tenant's file, read through it too.
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return "", false
	}
	if real, err = filepath.Abs(real); err != nil {
		return "", false
	}
	id, ok := strings.CutSuffix(filepath.Base(real), tenantFileSuffix)
	if !ok || checkTenantID(id) != nil {
		return "", false
	}
	if real != tenantPath(r.conns.realDir, r.cfg.Layout, id) {
		return "", false
	}
	return id, true
}

// copyTenant checks that tenant id's database is healthy and copies a
// consistent snapshot of it to dst, reading it on a connection of the
// tenant (ungatedReader) while its traffic goes on.
func (r *router) copyTenant(ctx context.Context, op, id, dst string) error {
	t, err := r.tenant(id)
	if err != nil {
		return err
	}
	defer t.unpin()
	src, done, err := t.ungatedReader(ctx, op)
	if err != nil {
		return err
	}
	defer done()
	if err := checkIntegrity(ctx, src, "quick_check"); err != nil {
		return unhealthy(ctx, err)
	}
	return copyDatabase(ctx, dst, src)
}

// unhealthy is the error of a quick_check that failed with err: the
// context's own when it ended (an interrupted check said a good backup
// was not a healthy database).
func unhealthy(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	return fmt.Errorf("not a healthy SQLite database: %w", err)
}

// copyVerified checks that src is a healthy SQLite database and copies a
// consistent snapshot of it to dst. The source is never written. A
// database a process uses (this one: a tenant of this or another proxy,
// the application's own pool; or another: a tenant of another service) is
// read through SQLite, with its locks, as any reader. Otherwise it is
// locked as an EXCLUSIVE connection would (lockDatabase: no process starts
// using it until the copy is done) and, without a -wal or -journal file
// beside it, opened immutable; with one (a copy of a live WAL database, a
// file left by a crash mid-transaction), they are first copied next to dst
// and read there, so that SQLite applies the -wal or rolls the hot journal
// back (an immutable open ignores a journal, and restored the uncommitted
// half of a transaction), no side file is left beside the source, and its
// directory may be read-only.
func copyVerified(ctx context.Context, src, dst string, busyTimeout time.Duration) error {
	// Side files are beside the real file, not beside a symlink to it: a
	// link to a live WAL database was read immutable, its -wal unseen.
	if real, err := filepath.EvalSymlinks(src); err == nil {
		src = real
	}
	fi, err := os.Stat(src)
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return errors.New("not a regular file")
	}
	_, werr := os.Stat(src + "-wal")
	if fi.Size() == 0 && werr != nil {
		// SQLite opens an empty file as an empty database: restoring it
		// would empty the tenant, and no backup is empty.
		return errors.New("an empty file, not a database")
	}
	// One copy of a file at a time in this process: a second restore from
	// one backup found it open here (the first's descriptors), read it
	// through SQLite, and waited on the first's lock for SQLite's 5 s.
	doneCopy, err := awaitSourceCopy(ctx, src)
	if err != nil {
		return err
	}
	defer doneCopy() // last: after every descriptor of src is closed
	// A file this process has open is never opened beside its
	// connections: closing a descriptor of it opened here would drop the
	// locks SQLite holds on it for them, and another process could then
	// checkpoint and remove the -wal they are using.
	live, err := openInProcess(src)
	if err != nil {
		return err
	}
	var locked *os.File
	if !live {
		// Another process may write it meanwhile: staged (the file, then
		// its -wal) or read immutable while it committed and checkpointed,
		// the copy mixed two states and passed quick_check.
		if locked, live, err = lockSource(src); err != nil {
			return err
		}
		if locked != nil {
			// Closed last, after SQLite's connection to the file: the
			// lock holds until the copy is done.
			defer locked.Close()
			if copySourceLocked != nil {
				copySourceLocked()
			}
		}
	}
	if n := linkCount(fi); live && n > 1 && werr != nil {
		// Its -wal is beside the name its user opened, which SQLite,
		// opening this one, does not look for: the copy lacked the
		// commits still in it, and the restore said it was done (a
		// hard-link snapshot, cp -al, of a live database; adv30).
		return fmt.Errorf("%s is in use by a process and has %d names (hard links), and no -wal beside this one: the -wal beside the name that process opened would not be read, nor the commits in it; restore from that name, or once it is closed", src, n)
	}
	_, jerr := os.Lstat(src + "-journal")
	params := "?mode=ro&immutable=1"
	if live {
		params = "?mode=ro"
	} else if werr == nil || jerr == nil {
		stage := dst + ".src"
		defer removeWithSideFiles(stage)
		// From the locked descriptor: closing another would release the
		// lock.
		if err := createWith(stage, false, io.NewSectionReader(locked, 0, fi.Size())); err != nil {
			return err
		}
		for _, side := range [...]string{"-wal", "-journal"} {
			if err := copyFile(src+side, stage+side, false); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
		}
		src, params = stage, ""
	}
	// A live source waits for its writer's locks as a tenant does: with
	// the proxy's busy handler, for BusyTimeout, and until ctx ends (Close
	// ends it too: RestoreTenant), the open included (openRetrying).
	drv := busyDriver(busyTimeout)
	var sc driver.Conn
	err = openRetrying(busyTimeout, func(d time.Duration) error { return pause(ctx, nil, d) }, func() (err error) {
		sc, err = drv.Open(fileURI(src) + cmp.Or(params, "?") + "&_busy_timeout=0")
		if err != nil && sourceOpenTried != nil {
			sourceOpenTried(src)
		}
		return err
	})
	if err != nil {
		return err
	}
	s := sc.(*sqlite3.SQLiteConn)
	defer s.Close()
	if err := checkIntegrity(ctx, s, "quick_check"); err != nil {
		return unhealthy(ctx, err)
	}
	return copyDatabase(ctx, dst, s)
}

// sourceCopies holds the source files copyVerified is copying in this
// process (by real path), each with a channel closed when it is done.
var sourceCopies struct {
	sync.Mutex
	m map[string]chan struct{}
}

// awaitSourceCopy waits (up to ctx) until no copy of src runs in this
// process and marks one running; done ends it.
func awaitSourceCopy(ctx context.Context, src string) (done func(), err error) {
	for {
		sourceCopies.Lock()
		ch, busy := sourceCopies.m[src]
		if !busy {
			if sourceCopies.m == nil {
				sourceCopies.m = map[string]chan struct{}{}
			}
			ch = make(chan struct{})
			sourceCopies.m[src] = ch
			sourceCopies.Unlock()
			return func() {
				sourceCopies.Lock()
				delete(sourceCopies.m, src)
				sourceCopies.Unlock()
				close(ch)
			}, nil
		}
		sourceCopies.Unlock()
		if sourceCopyWaits != nil {
			sourceCopyWaits()
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		}
	}
}

// lockSource opens the database file src not in use in this process and
// locks it (lockDatabase): live when another process uses it, then read
// through SQLite. The file returned, to be closed when the copy is done,
// holds the lock.
func lockSource(src string) (f *os.File, live bool, err error) {
	writable := true
	f, err = os.OpenFile(src, os.O_RDWR|syscall.O_NOFOLLOW, 0)
	if errors.Is(err, fs.ErrPermission) || errors.Is(err, syscall.EROFS) {
		// A backup this process may not write: looked at, not locked.
		writable = false
		f, err = os.OpenFile(src, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	}
	if err != nil {
		return nil, false, err
	}
	if err := lockDatabase(f, writable); err != nil {
		f.Close()
		if errors.Is(err, errShmInUse) {
			return nil, true, nil
		}
		return nil, false, err
	}
	return f, false, nil
}

// copyFile copies a file's bytes to a new file of mode 0600 (whatever the
// umask); durable also syncs it before it is closed.
func copyFile(src, dst string, durable bool) error {
	// Not blocking: a FIFO named like a side file held the open (and the
	// restore) for ever; only a regular file is copied.
	in, err := os.OpenFile(src, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return err
	}
	defer in.Close()
	if fi, err := in.Stat(); err != nil {
		return err
	} else if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s: not a regular file", src)
	}
	return createWith(dst, durable, in)
}

// writeNewFile creates the file p (failing if it exists, mode 0600) holding
// b, synced.
func writeNewFile(p string, b []byte) error {
	return createWith(p, true, bytes.NewReader(b))
}

// createWith creates dst (failing if it exists, mode 0600 whatever the
// umask) with what r holds, synced if durable.
func createWith(dst string, durable bool, r io.Reader) error {
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, r)
	if err == nil {
		err = out.Chmod(0o600)
	}
	if err == nil && durable {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return err
}

// leftoverAge is how old a temporary file of a tenant operation must be
// before sweepLeftovers takes it for the leftover of a process killed in
// the middle: an operation in flight (here or in another process on the
// same directory) writes its file within moments, and a delete renames a
// file that keeps its own, older, time.
const leftoverAge = 10 * time.Minute

// sweepLeftovers removes, once after New, the temporary files of tenant
// operations killed midway (creation, restore, delete: .creating-,
// .restoring-, .deleting- and their side files) that are older than
// leftoverAge. A killed delete's file still holds the deleted tenant's
// rows; a killed restore's, a whole copy of a tenant.
func (r *router) sweepLeftovers() {
	defer r.reaperWG.Done()
	ctx, cancel := r.untilStop()
	defer cancel()
	// The directory resolved at New: Dir, a symlink pointed elsewhere
	// since, names another data directory (adv42).
	root := r.conns.realDir
	dirs := []string{root}
	if r.cfg.Layout == LayoutBuckets {
		for b := range numBuckets {
			dirs = append(dirs, filepath.Join(root, bucketName(b)))
		}
	}
	old := time.Now().Add(-leftoverAge)
	for _, d := range dirs {
		if d != root && realBucket(d, filepath.Base(d)) != nil {
			continue // a symlink's target is not ours to sweep
		}
		readDirBatches(ctx, d, func(ents []os.DirEntry) bool {
			for _, e := range ents {
				if !isLeftover(e.Name()) {
					continue
				}
				if fi, err := e.Info(); err == nil && (fi.ModTime().Before(old) || createdTenant(d, e.Name(), fi)) {
					os.RemoveAll(filepath.Join(d, e.Name()))
				}
			}
			return ctx.Err() == nil
		})
		if ctx.Err() != nil {
			return
		}
	}
}

// createdTenant reports whether the file fi, named name in folder d, is a
// creation's temporary name that was linked into place as its tenant's file
// (a kill before it was removed): a second name of a live tenant's file,
// whose rows it would keep after a delete. Young or not, it goes.
func createdTenant(d, name string, fi fs.FileInfo) bool {
	id, ok := tempID(name, creatingPrefix)
	if !ok {
		return false
	}
	ti, err := os.Lstat(filepath.Join(d, id+tenantFileSuffix))
	return err == nil && os.SameFile(fi, ti)
}

// foreignLinks returns how many names t's file fi (found with more than
// one) has, or 1 when its second name is a creation's own temporary name
// (creationTwin) or is gone by the time it is looked for (another
// process's creation, between its link and its unlink, finished meanwhile).
func foreignLinks(t *tenant, fi fs.FileInfo) uint64 {
	if creationTwin(t.path, t.id, fi) {
		return 1
	}
	now, err := os.Lstat(t.path)
	if err != nil || !os.SameFile(fi, now) {
		return 1 // replaced meanwhile: SQLite's open and the file watch tell
	}
	return linkCount(now)
}

// refuseHardLinked refuses t's file fi (as found by a stat of t.path) when
// another name shares its pages (foreignLinks): a hard link (ln globex.db
// acme.db, a careless copy) made the two tenants one, and what is written
// to one is read by the other.
func refuseHardLinked(t *tenant, fi fs.FileInfo) error {
	if linkCount(fi) > 1 {
		if n := foreignLinks(t, fi); n > 1 {
			return hardLinked(t.path, n)
		}
	}
	return nil
}

// hardLinked refuses a tenant file with n names.
func hardLinked(path string, n uint64) error {
	return fmt.Errorf("%w: %s has %d names (hard links): another name shares its pages; give it a file of its own (cp it to a new name, then restore the tenant from that copy)", errNotTenantFile, path, n)
}

// creationTwin reports whether the second name of the tenant file fi at
// path (tenant id's) is a creation's temporary name (createdTenant), or a
// restore from the replica's: one in flight, between its link and its
// removal, or left by a kill (removed by the sweep at New).
func creationTwin(path, id string, fi fs.FileInfo) bool {
	d := filepath.Dir(path)
	ents, err := os.ReadDir(d)
	if err != nil {
		return false
	}
	for _, e := range ents {
		other, ok := tempID(e.Name(), creatingPrefix)
		if !ok {
			other, ok = tempID(e.Name(), restoringPrefix) // restoreReplica links its copy too
		}
		if ok && other == id {
			if ti, err := os.Lstat(filepath.Join(d, e.Name())); err == nil && os.SameFile(fi, ti) {
				return true
			}
		}
	}
	return false
}

// isLeftover reports whether a directory entry is a tenant operation's
// temporary file (tempName), or one of its side files.
func isLeftover(name string) bool {
	return isTempName(name, creatingPrefix, deletingPrefix, restoringPrefix) || isMarkerRewrite(name)
}

// isMarkerRewrite reports whether name is the temporary file of a
// marker's atomic rewrite (writeSideFile: ".<id>.db<kind>.tmp-<16 hex
// digits>"; before it, ".<id>.db-restored.tmp"), left by a process killed
// between its write and its rename. Nothing reads it; the marker itself is
// either the old one or the new one.
func isMarkerRewrite(name string) bool {
	if len(name) < 2 || name[0] != '.' {
		return false
	}
	for _, kind := range sideKinds {
		i := strings.LastIndex(name, tenantFileSuffix+kind+".tmp")
		if i <= 1 {
			continue
		}
		rest := name[i+len(tenantFileSuffix+kind+".tmp"):]
		if rest == "" && kind == "-restored" {
			return true
		}
		if h, ok := strings.CutPrefix(rest, "-"); ok && len(h) == 16 && strings.Trim(h, "0123456789abcdef") == "" {
			return true
		}
	}
	return false
}
