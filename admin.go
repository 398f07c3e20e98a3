package sqliteproxy

import (
	"context"
	"crypto/rand"
	"database/sql/driver"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/mattn/go-sqlite3"
)

// Temporary files the driver keeps in Dir start with a dot, which no
// tenant ID may, so Tenants never lists them and no tenant can reach them.
const (
	creatingPrefix  = ".creating-"
	deletingPrefix  = ".deleting-"
	restoringPrefix = ".restoring-"
)

func tempName(dir, prefix, id string) string {
	var b [8]byte
	rand.Read(b[:])
	return filepath.Join(dir, prefix+id+"-"+hex.EncodeToString(b[:])+tenantFileSuffix)
}

func fileURI(path string) string {
	return (&url.URL{Scheme: "file", OmitHost: true, Path: filepath.ToSlash(path)}).String()
}

// removeWithSideFiles removes a database file and its -wal, -shm and
// -journal files, ignoring those that do not exist.
func removeWithSideFiles(path string) error {
	var first error
	for _, p := range []string{path + "-wal", path + "-shm", path + "-journal", path} {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) && first == nil {
			first = err
		}
	}
	return first
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// createFile creates t's database file, fully migrated, or reports
// ErrTenantExists. The file is built under a temporary name and linked into
// place, so no one (Tenants, another process) ever sees it half-made.
func (r *router) createFile(ctx context.Context, t *tenant) error {
	tmp := tempName(r.cfg.Dir, creatingPrefix, t.id)
	defer removeWithSideFiles(tmp)
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return opError("create tenant", t.id, err)
	}
	err = f.Chmod(0o600) // whatever the umask
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return opError("create tenant", t.id, err)
	}
	c, err := r.drv.Open(fileURI(tmp) + r.writerParams)
	if err != nil {
		return opError("create tenant", t.id, err)
	}
	_, err = r.mig.migrate(ctx, t, c.(*sqlite3.SQLiteConn))
	if cerr := c.Close(); err == nil && cerr != nil {
		err = opError("create tenant", t.id, cerr)
	}
	if err != nil {
		return err
	}
	if err := os.Link(tmp, t.path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return opError("create tenant", t.id, ErrTenantExists)
		}
		return opError("create tenant", t.id, err)
	}
	t.ready.Store(true)
	if err := syncDir(r.cfg.Dir); err != nil {
		return opError("create tenant", t.id, err)
	}
	return nil
}

// drain stops new leases of t, waits (up to ctx) for the leased ones to end
// and closes t's connections. On success the caller holds t's writer
// semaphore and must call endDrain.
func (t *tenant) drain(ctx context.Context, op string) error {
	t.mu.Lock()
	if t.state.Load() != tenantActive {
		t.mu.Unlock()
		return opError(op, t.id, errors.New("another delete or restore of this tenant is in progress"))
	}
	t.state.Store(tenantDraining)
	t.drainDone = make(chan struct{})
	t.mu.Unlock()

	giveUp := func(err error) error {
		t.endDrain(tenantActive)
		return opError(op, t.id, fmt.Errorf("gave up waiting for in-flight work, nothing changed: %w", err))
	}
	if err := t.wsem.Acquire(ctx); err != nil {
		t.mu.Lock()
		t.state.Store(tenantActive)
		close(t.drainDone)
		t.mu.Unlock()
		t.r.wake()
		return opError(op, t.id, fmt.Errorf("gave up waiting for in-flight work, nothing changed: %w", err))
	}
	for {
		ch := t.r.waitCh()
		t.mu.Lock()
		n := t.leasedReaders
		t.mu.Unlock()
		if n == 0 {
			t.r.unwait()
			break
		}
		select {
		case <-ch:
			t.r.unwait()
		case <-ctx.Done():
			t.r.unwait()
			return giveUp(ctx.Err())
		}
	}
	t.r.tryEvict(t, true, op)
	return nil
}

// endDrain ends a drain begun by drain, leaving t in state.
func (t *tenant) endDrain(state int32) {
	t.mu.Lock()
	t.state.Store(state)
	close(t.drainDone)
	t.mu.Unlock()
	t.wsem.Release()
	t.r.wake()
}

// tenantFor returns the live tenant for id after checking the ID.
func (p *Proxy) tenantFor(op, id string) (*tenant, error) {
	if p.c.r.isClosed.Load() {
		return nil, opError(op, id, ErrClosed)
	}
	if err := checkTenantID(id); err != nil {
		return nil, opError(op, id, err)
	}
	return p.c.r.tenant(id)
}

// CreateTenant creates the tenant's database file and applies the
// migrations, or fails with ErrTenantExists. It works whatever
// Config.ExplicitCreate says.
func (p *Proxy) CreateTenant(ctx context.Context, id string) error {
	for {
		t, err := p.tenantFor("create tenant", id)
		if err != nil {
			return err
		}
		if err := t.lockWriter(ctx); err != nil {
			if errors.Is(err, ErrTenantNotFound) {
				continue
			}
			return err
		}
		// Under the writer semaphore nobody else in this process creates it.
		exists, err := t.fileExists()
		if err == nil && exists {
			err = opError("create tenant", id, ErrTenantExists)
		}
		if err != nil {
			t.wsem.Release()
			return err
		}
		t.createdBy.Store(false)
		if _, err := t.openLockedWriter(ctx, openOpts{mayCreate: true, migrate: true}); err != nil {
			return err
		}
		created := t.createdBy.Load()
		t.releaseWriter()
		if !created { // another process linked it first
			return opError("create tenant", id, ErrTenantExists)
		}
		return nil
	}
}

// TenantExists reports whether the tenant has a database file.
func (p *Proxy) TenantExists(ctx context.Context, id string) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	t, err := p.tenantFor("check tenant", id)
	if err != nil {
		return false, err
	}
	if t.state.Load() == tenantDeleted {
		return false, nil
	}
	return t.fileExists()
}

// DeleteTenant erases a tenant: it stops new work for it, waits for
// in-flight work (up to ctx; if it gives up it says so and deletes
// nothing), closes its connections and removes its database file and -wal,
// -shm and -journal files, then syncs the directory. Work that was waiting
// for the tenant fails with ErrTenantNotFound; work that arrives afterwards
// sees a new, empty tenant (unless ExplicitCreate). ErrTenantNotFound if
// the tenant has no file.
func (p *Proxy) DeleteTenant(ctx context.Context, id string) error {
	t, err := p.tenantFor("delete tenant", id)
	if err != nil {
		return err
	}
	if err := t.mustExist("delete tenant"); err != nil {
		return err
	}
	if err := t.drain(ctx, "delete"); err != nil {
		return err
	}
	r := p.c.r
	// Move the file out of the tenant's name first, so nothing can open a
	// half-deleted tenant; then its side files, then the file.
	hidden := tempName(r.cfg.Dir, deletingPrefix, id)
	if err := os.Rename(t.path, hidden); err != nil {
		t.endDrain(tenantActive)
		if errors.Is(err, fs.ErrNotExist) {
			return opError("delete tenant", id, ErrTenantNotFound)
		}
		return opError("delete tenant", id, err)
	}
	err = removeWithSideFiles(t.path)
	if rerr := removeWithSideFiles(hidden); err == nil {
		err = rerr
	}
	if serr := syncDir(r.cfg.Dir); err == nil {
		err = serr
	}
	r.tenants.CompareAndDelete(id, t)
	t.ready.Store(false)
	t.endDrain(tenantDeleted)
	if err != nil {
		return opError("delete tenant", id, err)
	}
	return nil
}

// BackupTenant writes a transactionally consistent copy of the tenant to
// dstPath while the tenant keeps taking writes (SQLite's online backup API,
// one step). The copy is a standalone database (journal mode DELETE) that
// passes integrity_check; it is written under a temporary name next to
// dstPath and renamed into place, so dstPath is never half-written.
func (p *Proxy) BackupTenant(ctx context.Context, id, dstPath string) error {
	const op = "backup tenant"
	t, err := p.tenantFor(op, id)
	if err != nil {
		return err
	}
	if err := t.mustExist(op); err != nil {
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
	if err := os.Rename(tmp, dstPath); err != nil {
		return opError(op, id, err)
	}
	if err := syncDir(filepath.Dir(dstPath)); err != nil {
		return opError(op, id, err)
	}
	return nil
}

// CheckTenant runs PRAGMA integrity_check on the tenant and returns nil
// when SQLite reports it ok, else an error quoting the first problems. Like
// BackupTenant it neither applies nor requires migrations, and it runs
// beside the tenant's traffic (on a reader, or on a read-only connection of
// its own within the budget). A full check reads the whole file.
func (p *Proxy) CheckTenant(ctx context.Context, id string) error {
	const op = "check tenant"
	t, err := p.tenantFor(op, id)
	if err != nil {
		return err
	}
	if err := t.mustExist(op); err != nil {
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

// ungatedReader returns a connection to read t from (a backup, a check),
// and the function that gives it back. It neither applies nor requires
// migrations: backing up or checking a tenant that is behind (MigrateCheck)
// or ahead (drift) is when operators need it most.
func (t *tenant) ungatedReader(ctx context.Context, op string) (*sqlite3.SQLiteConn, func(), error) {
	if t.ready.Load() {
		pc, err := t.acquireReader(ctx)
		if err != nil {
			return nil, nil, err
		}
		return pc.c, func() { t.release(pc) }, nil
	}
	// A connection of its own, within the budget; the writer semaphore is
	// held only while reserving, so writes go on during the copy.
	if err := t.lockWriter(ctx); err != nil {
		return nil, nil, err
	}
	c, done, err := t.r.ownConn(ctx, t, plainDriver, "?mode=rw&_query_only=1")
	t.releaseWriter()
	if err != nil {
		return nil, nil, opError(op, t.id, err)
	}
	return c, done, nil
}

// ownConn opens a connection to t outside its pool, with drv and the URI
// query params, within the connection budget; done closes it and gives the
// slot back. The caller holds t's writer semaphore at least until it
// returns, so that t itself can be evicted to make room.
func (r *router) ownConn(ctx context.Context, t *tenant, drv *sqlite3.SQLiteDriver, params string) (c *sqlite3.SQLiteConn, done func(), err error) {
	if err := r.reserve(ctx, t); err != nil {
		return nil, nil, err
	}
	dc, err := drv.Open(t.uri + params)
	if err != nil {
		r.unreserve(t)
		return nil, nil, err
	}
	return dc.(*sqlite3.SQLiteConn), func() { dc.Close(); r.unreserve(t) }, nil
}

// plainDriver opens files that are not tenant connections (backup copies,
// restore sources): no authorizer, no pool.
var plainDriver = &sqlite3.SQLiteDriver{}

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
	bk, err := d.Backup("main", src, "main")
	if err != nil {
		return err
	}
	_, err = bk.Step(-1)
	if ferr := bk.Finish(); err == nil {
		err = ferr
	}
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
		problems = append(problems, msg)
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
// ctx), its file replaced by an atomic rename and its side files removed;
// work that arrives meanwhile waits and then sees the restored data.
// Pending migrations apply on the next access. Restoring into an ID that
// has no file creates the tenant.
func (p *Proxy) RestoreTenant(ctx context.Context, id, srcPath string) error {
	const op = "restore tenant"
	t, err := p.tenantFor(op, id)
	if err != nil {
		return err
	}
	r := p.c.r
	tmp := tempName(r.cfg.Dir, restoringPrefix, id)
	defer removeWithSideFiles(tmp)
	if err := copyVerified(ctx, srcPath, tmp); err != nil {
		return opError(op, id, fmt.Errorf("source %s: %w", srcPath, err))
	}
	if err := os.Chmod(tmp, 0o600); err != nil {
		return opError(op, id, err)
	}
	if err := t.awaitDrain(ctx); err != nil && !errors.Is(err, ErrTenantNotFound) {
		return err
	} else if err != nil {
		return p.RestoreTenant(ctx, id, srcPath) // deleted meanwhile: restore into the new tenant
	}
	if err := t.drain(ctx, "restore"); err != nil {
		return err
	}
	// Side files of the old database would be replayed into the new one.
	err = removeWithSideFiles(t.path + "-wal")
	if err == nil {
		err = errors.Join(os.Remove(t.path+"-shm"), os.Remove(t.path+"-journal"))
		if errors.Is(err, fs.ErrNotExist) {
			err = nil
		}
	}
	if err == nil {
		err = os.Rename(tmp, t.path)
	}
	if err == nil {
		err = syncDir(r.cfg.Dir)
	}
	t.ready.Store(false)
	t.endDrain(tenantActive)
	if err != nil {
		return opError(op, id, err)
	}
	return nil
}

// copyVerified checks that src is a healthy SQLite database and copies a
// consistent snapshot of it to dst. The source is never written: without a
// -wal file beside it, it is opened immutable; with one (a copy of a live
// WAL database), both are first copied next to dst and read there, so no
// -wal or -shm file is left beside the source and its directory may be
// read-only.
func copyVerified(ctx context.Context, src, dst string) error {
	fi, err := os.Stat(src)
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return errors.New("not a regular file")
	}
	params := "?mode=ro&immutable=1"
	if _, err := os.Stat(src + "-wal"); err == nil {
		stage := dst + ".src"
		defer removeWithSideFiles(stage)
		if err := copyFile(src, stage); err != nil {
			return err
		}
		if err := copyFile(src+"-wal", stage+"-wal"); err != nil {
			return err
		}
		src, params = stage, ""
	}
	sc, err := plainDriver.Open(fileURI(src) + params)
	if err != nil {
		return err
	}
	s := sc.(*sqlite3.SQLiteConn)
	defer s.Close()
	if err := checkIntegrity(ctx, s, "quick_check"); err != nil {
		return fmt.Errorf("not a healthy SQLite database: %w", err)
	}
	return copyDatabase(ctx, dst, s)
}

// TenantStats describes one tenant with open connections.
type TenantStats struct {
	ID       string
	Open     int       // connections open
	InUse    int       // connections leased
	LastUsed time.Time // last time a lease ended (10 ms resolution)

	attrs *tenantAttrs
}

func (r *router) stats() Stats {
	r.mu.Lock()
	st := Stats{
		OpenConnections: r.open,
		MaxConnections:  r.cfg.MaxConnections,
		OpenTenants:     len(r.openSet),
		Evictions:       r.evictions.Load(),
		Waits:           r.waits.Load(),
	}
	open := make(map[*tenant]int, len(r.openSet))
	for t := range r.openSet {
		open[t] = t.nopen
	}
	r.mu.Unlock()
	for t, n := range open { // tenant locks come before r.mu: take them now
		t.mu.Lock()
		inUse := t.leasedReaders
		t.mu.Unlock()
		if t.wsem.held.Load() {
			inUse++
		}
		st.Tenants = append(st.Tenants, TenantStats{
			ID: t.id, Open: n, InUse: inUse,
			LastUsed: r.epoch.Add(time.Duration(t.lastUsed.Load())),
			attrs:    t.attrs.Load(),
		})
	}
	slices.SortFunc(st.Tenants, func(a, b TenantStats) int { return strings.Compare(a.ID, b.ID) })
	return st
}

// copyFile copies a file's bytes to a new file of mode 0600.
func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return err
}
