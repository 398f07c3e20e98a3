package sqliteproxy

import (
	"cmp"
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// Relayout converts the data directory dir to layout to (see Layout),
// moving every tenant file, with its Litestream files and markers, to its
// place in the new layout, and returns how many tenants it moved.
//
// It is offline: it fails at once if a proxy (a service, the CLI) has dir
// open, and while it runs New refuses dir. A tenant that another process
// has open (its -wal or -shm file survives a checkpoint) stops it with an
// error.
//
// It is crash-safe and idempotent: it first marks dir as being converted
// (New refuses such a directory), then moves one tenant at a time: its
// -wal is checkpointed into the database and removed first, then its side
// files and its database file are renamed within dir's filesystem and both
// folders are synced. A tenant is in exactly one place at any moment, so an
// interrupted run (killed, crashed, cancelled, failed) leaves every tenant
// visible once, and running Relayout again, to the same layout or back to
// the other one, finishes the job. It ends by recording the new layout.
// A tenant found in both places (which no run of Relayout leaves) is an
// error that names both files, left for a person to resolve.
func Relayout(ctx context.Context, dir string, to Layout) (moved int, err error) {
	return relayout(ctx, dir, to, nil)
}

// relayout is Relayout, calling afterMove (tests: to stop at any point)
// after each tenant moved, with the number moved so far; an error from it
// stops the run as an interruption would.
func relayout(ctx context.Context, dir string, to Layout, afterMove func(moved int) error) (moved int, err error) {
	const op = "relayout"
	if to != LayoutFlat && to != LayoutBuckets {
		return 0, opError(op, "", fmt.Errorf("unknown layout %d", to))
	}
	lock, err := lockDir(dir, true)
	if errors.Is(err, errDirLocked) {
		err = fmt.Errorf("%s is in use by a proxy (a service or a CLI command): stop it first", dir)
	}
	if err != nil {
		return 0, opError(op, "", err)
	}
	defer lock.Close()
	st, err := readDirState(dir)
	if err != nil {
		return 0, opError(op, "", err)
	}
	if !st.relayout && st.layout == to {
		// Done, unless flat tenant files sit in a bucketed directory (a
		// version before layouts wrote them, not reading the marker): they
		// move into their buckets as in a conversion (checkLayout refuses
		// the directory until they have).
		if to != LayoutBuckets {
			return 0, opErrorOrNil(op, "", unmarkedBuckets(dir))
		}
		if found, err := hasFlatTenant(dir); err != nil {
			return 0, opError(op, "", err)
		} else if !found {
			return 0, nil
		}
	}
	from := other(to)
	rl := &relayouter{dir: dir, from: from, to: to}
	// Listed first, moved afterwards: the listing does not see its own moves.
	var ids []string
	for id, err := range listTenants(ctx, dir, from) {
		if err != nil {
			return 0, opError(op, "", err)
		}
		ids = append(ids, id)
	}
	// A tenant in both layouts stops the run before it begins, not midway
	// with the directory marked as being converted (refused by every proxy
	// until a person resolved it).
	if err := rl.inBoth(ids); err != nil {
		return 0, opError(op, "", err)
	}
	if err := rl.misplaced(); err != nil {
		return 0, opError(op, "", err)
	}
	// A tenant another process has open (a sqlite3 shell, which the
	// README's top suggests for a look) is found before the directory is
	// marked as being converted, not midway: then every proxy and CLI
	// command refused the directory until relayout ran again (adv43). Each
	// move settles its file again (a process may open one meanwhile).
	for _, id := range ids {
		if err := ctx.Err(); err != nil {
			return 0, opError(op, "", err)
		}
		if err := settle(tenantPath(dir, from, id)); err != nil {
			return 0, opError(op, id, err)
		}
	}
	if err := writeMarker(dir, markerRelayoutTo+to.String()); err != nil {
		return 0, opError(op, "", err)
	}
	for _, id := range ids {
		if err := ctx.Err(); err != nil {
			return moved, opError(op, "", err)
		}
		if err := rl.move(id); err != nil {
			return moved, opError(op, id, err)
		}
		moved++
		if afterMove != nil {
			if err := afterMove(moved); err != nil {
				return moved, opError(op, id, err)
			}
		}
	}
	// Side files whose database moved in a run interrupted between the two,
	// and temporary files of crashed operations.
	if err := rl.sweep(ctx); err != nil {
		return moved, opError(op, "", err)
	}
	for id, err := range listTenants(ctx, dir, from) {
		if err != nil {
			return moved, opError(op, "", err)
		}
		return moved, opError(op, id, fmt.Errorf("tenant appeared in the %s layout while converting", from))
	}
	final := ""
	if to == LayoutBuckets {
		final = markerBuckets
	}
	if err := writeMarker(dir, final); err != nil {
		return moved, opError(op, "", err)
	}
	return moved, nil
}

// relayouter moves tenants of one directory from one layout to the other.
type relayouter struct {
	dir      string
	from, to Layout
	made     [numBuckets]bool // bucket folders known to exist
}

// sideFiles are the names, beside a tenant's database file at p, of the
// files that belong to it and move with it (not -wal, -shm and -journal:
// those are settled first).
func sideFiles(p string) []string {
	var names []string
	for _, kind := range sideKinds {
		names = append(names, sideName(p, kind))
	}
	return names
}

// sideKinds are the kinds of sideFiles (genMarker, restoredMarker,
// unsyncedMarker, metaDir, deletedMarker, fromReplicaMarker), each named
// ".<file><kind>" (sideName): sweep finds one left behind by its suffix.
var sideKinds = []string{"-gen", "-restored", "-unsynced", "-litestream", "-deleted", "-fromreplica"}

// sideName names the side file of kind beside the tenant file at p.
// hasSide reports whether SQLite's side file suffix (-wal, -journal) is
// beside the database file at p (anything of that name that cannot be
// looked at counts).
func hasSide(p, suffix string) bool {
	_, err := os.Lstat(p + suffix)
	return !errors.Is(err, fs.ErrNotExist)
}

// walFrames reports whether p has a -wal, and whether it may hold frames:
// an empty one is what a clean close leaves when the -wal is kept
// (Config.KeepWAL, or Litestream's connection), and holds nothing to read.
func walFrames(p string) (exists, frames bool) {
	fi, err := os.Lstat(p + "-wal")
	if errors.Is(err, fs.ErrNotExist) {
		return false, false
	}
	return true, err != nil || fi.Size() > 0
}

func sideName(p, kind string) string {
	dir, file := path.Split(p)
	return path.Join(dir, "."+file+kind)
}

// inBoth fails, naming them (a few, and how many), when any of ids has a
// file in r.to as well as in r.from (not two names of one file: a crash
// between link and unlink can leave that, and move finishes it).
func (r *relayouter) inBoth(ids []string) error {
	var both, sides []string
	for _, id := range ids {
		src, dst := tenantPath(r.dir, r.from, id), tenantPath(r.dir, r.to, id)
		// A side file in both (a stale one beside no database: a marker
		// left by an interrupted operation) stopped the move midway, and
		// every run after it, either way, with the directory marked as
		// being converted.
		srcSide, dstSide := sideFiles(src), sideFiles(dst)
		for i := range srcSide {
			if _, err := os.Lstat(srcSide[i]); err != nil {
				continue
			}
			if _, err := os.Lstat(dstSide[i]); !errors.Is(err, fs.ErrNotExist) {
				sides = append(sides, fmt.Sprintf("%s and %s", srcSide[i], dstSide[i]))
			}
		}
		fi, err := os.Lstat(dst)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		} else if err != nil {
			return err
		}
		if si, err := os.Lstat(src); err == nil && os.SameFile(fi, si) {
			continue
		}
		both = append(both, fmt.Sprintf("%s and %s", src, dst))
	}
	if len(both) > 0 {
		return fmt.Errorf("tenants in both layouts, nothing moved: %s; merge each pair into one file (or remove one, with its -wal), then run relayout again", firstFew(both))
	}
	if len(sides) > 0 {
		return fmt.Errorf("side files in both layouts, nothing moved: %s; the one beside no tenant file is stale: remove it, then run relayout again", firstFew(sides))
	}
	return nil
}

// firstFew joins the first three of list, and says how many more.
func firstFew(list []string) string {
	if len(list) > 3 {
		list = append(list[:3:3], fmt.Sprintf("and %d more", len(list)-3))
	}
	return strings.Join(list, "; ")
}

// misplaced fails, naming them, when r.from holds entries named like a
// tenant's file that no listing takes for one: a file in a bucket other
// than its ID's, or a symlink, directory or other non-file where a tenant
// file would be. The CLI's check reports them in the layout they are in;
// left behind by a conversion, they were reported by nothing (the only
// copy of a tenant's rows in a wrong bucket disappeared from every check).
func (r *relayouter) misplaced() error {
	folders := []string{r.dir}
	if r.from == LayoutBuckets {
		folders = folders[:0]
		ents, err := os.ReadDir(r.dir)
		if err != nil {
			return err
		}
		for _, e := range ents {
			if n := e.Name(); e.IsDir() && len(n) == 2 && isHex(n[0]) && isHex(n[1]) {
				folders = append(folders, filepath.Join(r.dir, n))
			}
		}
	}
	var found []string
	for _, folder := range folders {
		err := readDirBatches(context.Background(), folder, func(ents []os.DirEntry) bool {
			for _, e := range ents {
				id, ok := strings.CutSuffix(e.Name(), tenantFileSuffix)
				if !ok || checkTenantID(id) != nil {
					continue
				}
				p := filepath.Join(folder, e.Name())
				if !e.Type().IsRegular() || p != tenantPath(r.dir, r.from, id) {
					found = append(found, p)
				}
			}
			return true
		})
		if err != nil {
			return err
		}
	}
	switch {
	case len(found) == 0:
		return nil
	case len(found) > 3:
		found = append(found[:3], fmt.Sprintf("and %d more", len(found)-3))
	}
	return fmt.Errorf("entries named like tenant files that are not where the %s layout reads tenants, nothing moved: %s; "+
		"a conversion would leave them where nothing lists them: move each file to its place (or remove it), then run relayout again", r.from, strings.Join(found, "; "))
}

// move moves tenant id from its place in r.from to its place in r.to.
func (r *relayouter) move(id string) error {
	src, dst := tenantPath(r.dir, r.from, id), tenantPath(r.dir, r.to, id)
	if err := r.makeDir(id); err != nil {
		return err
	}
	if fi, err := os.Lstat(dst); err == nil {
		si, serr := os.Lstat(src)
		if serr != nil || !os.SameFile(fi, si) {
			return fmt.Errorf("tenant is in both layouts, %s and %s: keep one and remove the other (with its -wal), then run relayout again", src, dst)
		}
		// Both names of one file: only a crash can leave that.
		return errors.Join(os.Remove(src), syncDir(filepath.Dir(src)))
	} else if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if err := settle(src); err != nil {
		return err
	}
	// A -wal left at dst by a file deleted there (a DeleteTenant on a full
	// disk, killed) would be replayed into this one at its next open: the
	// deleted tenant's rows back, this one's lost.
	if err := removeOrphanSideFiles(dst); err != nil {
		return err
	}
	if _, err := os.Lstat(dst + "-wal"); !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s-wal exists without its database, and a process has it open: %w", dst, cmp.Or(err, errShmInUse))
	}
	srcSide, dstSide := sideFiles(src), sideFiles(dst)
	for i := range srcSide {
		if err := renameIfExists(srcSide[i], dstSide[i]); err != nil {
			return err
		}
	}
	if err := os.Rename(src, dst); err != nil {
		return err
	}
	return errors.Join(syncDir(filepath.Dir(dst)), syncDir(filepath.Dir(src)))
}

// makeDir creates the folder of id's file in r.to if missing.
func (r *relayouter) makeDir(id string) error {
	if r.to != LayoutBuckets {
		return nil
	}
	b := bucketOf(id)
	i := int(hexVal(b[0])<<4 | hexVal(b[1]))
	if r.made[i] {
		return nil
	}
	folder := filepath.Join(r.dir, b)
	err := os.Mkdir(folder, 0o700)
	if err == nil {
		err = syncDir(r.dir)
	} else if errors.Is(err, fs.ErrExist) {
		err = realBucket(folder, b) // a symlink would take the tenant outside the directory
	}
	r.made[i] = err == nil
	return err
}

func hexVal(c byte) byte {
	if c >= 'a' {
		return c - 'a' + 10
	}
	return c - '0'
}

// renameIfExists renames src to dst if src exists; dst must not.
func renameIfExists(src, dst string) error {
	if _, err := os.Lstat(src); errors.Is(err, fs.ErrNotExist) {
		return nil
	} else if err != nil {
		return err
	}
	if _, err := os.Lstat(dst); err == nil {
		return fmt.Errorf("both %s and %s exist", src, dst)
	}
	return os.Rename(src, dst)
}

// errOpenElsewhere: settle found the file open in another process.
var errOpenElsewhere = errors.New("open in another process, or another proxy of this process (its -wal or -shm survived a checkpoint): stop it first")

// settle makes the database file at p self-contained, so that it can be
// renamed alone: a -wal is checkpointed into it and removed, a hot
// -journal rolled back. It fails if another process has the file open.
// Side files that survive its checkpoint with no process holding them are
// looked at again, twice: a process that opened and closed the file
// meanwhile (a service's eviction churn) left them for a moment, and the
// refusal blamed permissions or a full disk (adv30).
func settle(p string) (err error) {
	for range 3 {
		if err = settleOnce(p); !errors.Is(err, errSideFilesSurvived) {
			break
		}
	}
	return err
}

// settleClosed, set by tests, runs when settle has checkpointed p and
// closed its connection.
var settleClosed func(p string)

// errSideFilesSurvived: side files outlived a checkpoint, and no process
// holds them.
var errSideFilesSurvived = errors.New("its -wal or -shm survived a checkpoint though no process has it open: this process may not write the file or its folder (permissions, chattr +i, a read-only mount), or the disk is full")

// settleLone looks at a database file p without side files: a connection
// in a transaction on it in rollback-journal mode (a restored tenant before
// its first open here) makes none, and DeleteTenant and RestoreTenant moved
// the file from under its BEGIN IMMEDIATE, which then failed to write. Its
// locks on the file tell, and so do this process's descriptors of it (its
// own POSIX locks do not show: openInProcess). Only where the latter can
// be told (Linux): elsewhere opening the file to look, and closing it,
// would drop the locks of this process's own connections to it. An idle
// connection of another process holds no lock, and nothing tells of it.
// A name that is not a regular file (a FIFO, whose open would wait for a
// writer; a symlink a restore replaces) is not looked at.
func settleLone(p string) error {
	if !openInProcessTells {
		return nil
	}
	if fi, err := os.Lstat(p); err != nil || !fi.Mode().IsRegular() {
		return nil
	}
	if _, err := lockUnusedDatabase(p, false); errors.Is(err, errShmInUse) {
		return fmt.Errorf("%s is open in this process, or in a transaction in another one: stop it first", p)
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

func settleOnce(p string) error {
	side := false
	for _, s := range sqliteSuffixes {
		if _, err := os.Lstat(p + s); err == nil {
			side = true
		}
	}
	if !side {
		return settleLone(p)
	}
	dc, err := plainDriver.Open(fileURI(p) + "?mode=rw&_busy_timeout=0")
	if err != nil {
		return err
	}
	c := dc.(interface {
		driver.QueryerContext
		driver.Conn
	})
	busy, err := checkpoint(c)
	if cerr := c.Close(); err == nil {
		err = cerr
	}
	if settleClosed != nil {
		settleClosed(p)
	}
	if err != nil {
		return fmt.Errorf("checkpoint %s: %w", p, err)
	}
	// Closing the last connection removes -shm (and -wal, unless kept
	// empty: PERSIST_WAL). Anything else left means another process has
	// the file open: decide that before removing anything, since its WAL
	// is still in use even when empty.
	inUse, emptyWAL, emptyJournal := busy != 0, false, false
	for _, s := range sqliteSuffixes {
		fi, err := os.Lstat(p + s)
		switch {
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			return err
		case s == "-wal" && fi.Size() == 0:
			emptyWAL = true
		case s == "-journal" && fi.Size() == 0:
			// Left by a process killed as it began a transaction:
			// SQLite ignores an empty journal, and so does relayout, which
			// blamed permissions or a full disk (adv46).
			emptyJournal = true
		default:
			inUse = true
		}
	}
	if inUse {
		if presenceTells {
			// No process holds the -shm's lock: the side files survived
			// for another reason (a file opened read-only, for want of
			// permission to write it).
			// (POSIX locks do not tell of this process's own connections:
			// /proc does.)
			if release, err := lockShm(p + "-shm"); err == nil {
				release()
				if in, err := openInProcess(p + "-shm"); err != nil || in {
					return fmt.Errorf("%s is %w", p, errOpenElsewhere)
				}
				return fmt.Errorf("%s: %w", p, errSideFilesSurvived)
			}
		}
		return fmt.Errorf("%s is %w", p, errOpenElsewhere)
	}
	if emptyJournal {
		// Unless a process holds the file (one in rollback mode that has
		// just begun writing, its journal still empty).
		release, err := lockUnusedDatabase(p, true)
		if err != nil {
			if errors.Is(err, errShmInUse) {
				return fmt.Errorf("%s is %w", p, errOpenElsewhere)
			}
			return err
		}
		// Looked at again under the lock: a process that held the file may
		// have written the journal since, and died (a hot journal, which
		// the next try's read rolls back: settle tries again on
		// errSideFilesSurvived).
		fi, err := os.Lstat(p + "-journal")
		switch {
		case errors.Is(err, fs.ErrNotExist):
			err = nil
		case err == nil && fi.Size() == 0:
			err = os.Remove(p + "-journal")
		case err == nil:
			err = fmt.Errorf("%s: %w", p, errSideFilesSurvived)
		}
		release()
		if err != nil {
			return err
		}
	}
	if emptyWAL {
		return os.Remove(p + "-wal")
	}
	return nil
}

// checkpoint runs a TRUNCATE checkpoint (in WAL mode; a read otherwise,
// which rolls back a hot journal) and returns its busy flag.
func checkpoint(c driver.QueryerContext) (int64, error) {
	// A read first: it rolls back a hot journal.
	rows, err := c.QueryContext(context.Background(), "SELECT count(*) FROM sqlite_master", nil)
	if err != nil {
		return 0, err
	}
	rows.Close()
	rows, err = c.QueryContext(context.Background(), "PRAGMA wal_checkpoint(TRUNCATE)", nil)
	if err != nil {
		return 0, err
	}
	defer rows.Close()
	v := make([]driver.Value, len(rows.Columns()))
	if err := rows.Next(v); err != nil {
		if err == io.EOF {
			return 0, nil
		}
		return 0, err
	}
	busy, _ := v[0].(int64)
	return busy, nil
}

// sweep moves side files left in r.from's places by a run interrupted
// between a tenant's side files and its database (they follow their
// database, wherever it is now), and removes the temporary files of
// operations that crashed, then the bucket folders left empty.
func (r *relayouter) sweep(ctx context.Context) error {
	dirs := []string{r.dir}
	if r.from == LayoutBuckets || r.to == LayoutBuckets {
		for b := range numBuckets {
			dirs = append(dirs, filepath.Join(r.dir, bucketName(b)))
		}
	}
	for _, d := range dirs {
		if d != r.dir {
			if err := realBucket(d, filepath.Base(d)); errors.Is(err, fs.ErrNotExist) {
				continue
			} else if err != nil {
				return err // a symlink's target is not ours to sweep or fill
			}
		}
		var names []string
		err := readDirBatches(ctx, d, func(ents []os.DirEntry) bool {
			for _, e := range ents {
				if strings.HasPrefix(e.Name(), ".") {
					names = append(names, e.Name())
				}
			}
			return true
		})
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return err
		}
		for _, name := range names {
			if err := r.sweepEntry(d, name); err != nil {
				return err
			}
		}
		if d != r.dir && r.to == LayoutFlat {
			// Left if not empty: unknown files are not ours to remove.
			if err := os.Remove(d); err == nil {
				continue
			}
		}
	}
	return syncDir(r.dir)
}

// sweepEntry handles the entry name in folder d (see sweep).
func (r *relayouter) sweepEntry(d, name string) error {
	if isTempName(name, creatingPrefix, deletingPrefix, restoringPrefix, layoutTempPrefix) || isMarkerRewrite(name) {
		return os.RemoveAll(filepath.Join(d, name))
	}
	rest, ok := strings.CutPrefix(name, ".")
	if !ok {
		return nil
	}
	for _, kind := range sideKinds {
		file, ok := strings.CutSuffix(rest, kind)
		if !ok {
			continue
		}
		id, ok := tenantIDFromFile(file)
		if !ok {
			return nil
		}
		src := filepath.Join(d, name)
		if src != filepath.Join(filepath.Dir(tenantPath(r.dir, r.from, id)), name) {
			return nil // not in its place in r.from
		}
		dst := filepath.Join(filepath.Dir(tenantPath(r.dir, r.to, id)), name)
		if _, err := os.Lstat(tenantPath(r.dir, r.from, id)); err == nil {
			return nil // its database has not moved (a tenant that failed)
		}
		if err := r.makeDir(id); err != nil {
			return err
		}
		if err := renameIfExists(src, dst); err != nil {
			return err
		}
		return errors.Join(syncDir(filepath.Dir(dst)), syncDir(d))
	}
	return nil
}
