package sqliteproxy

import (
	"errors"
	"os"
	"path/filepath"
)

// A tenant file deleted, renamed or replaced while the tenant is open (rm,
// mv of a backup over it, another proxy's restore, an operator's mistake)
// is one SQLite does not notice in WAL mode: its connections go on writing
// to a file nobody can reach any more, every write acknowledged and every
// one lost when the connections close. The file watch (filewatch_linux.go,
// inotify on the folders that hold open tenants) notices the name of an
// open tenant's file change, checks that the file at the path is no longer
// the one the tenant's connections opened (recorded by tenant.opened), and
// fences the tenant: nothing more is written to the old file, a transaction
// in progress is rolled back at its next statement or commit, and the
// tenant is closed and opened anew at its path by its next use, as after an
// eviction (a missing file is then created empty, or refused with
// ErrTenantNotFound under ExplicitCreate). Writes acknowledged between the
// change and its notice (the watch reads the kernel's events as they come:
// microseconds, no more than one statement per connection in practice)
// went to the old file. Elsewhere than on Linux nothing is watched.
// (Each open tenant's file is watched, for a change of its link count, and
// each folder of one for renames: filewatch_linux.go.)

// errFileMoved: the tenant's file was deleted, moved or replaced while the
// tenant was open, not through the proxy.
var errFileMoved = errors.New("the tenant's file was deleted, moved or replaced while open (not through this proxy): nothing more is written to the old file; the tenant is opened anew at its path, retry")

// opened records t's file as its connections opened it: fi when not nil,
// else what the path holds now. What was recorded since t was last closed
// stays (a connection opened later may have met a file that replaced it:
// the watch then tells). It also has the watch look at t's folder.
func (t *tenant) opened(fi os.FileInfo) {
	if t.recordedFile() != nil {
		return
	}
	if fi == nil {
		var err error
		if fi, err = os.Lstat(t.path); err != nil {
			return
		}
	}
	t.mu.Lock()
	recorded := false
	if opens := t.opens.Load(); (t.file == nil || t.fileOpens != opens) && t.counted.Load() > 0 {
		t.file, t.fileOpens = fi, opens
		recorded = true
	}
	t.mu.Unlock()
	t.r.watch.folder(filepath.Dir(t.path))
	if !recorded {
		return
	}
	same, unwatched := t.r.watch.file(t, fi)
	if unwatched {
		// Said, not silent: a deletion or replacement of this file while
		// it is open goes unnoticed.
		t.r.unwatched.Add(1)
		t.r.tel.unwatchedOpen(t.tel)
	}
	if !same {
		// Changed before its watch was on (a folder's deletions are not
		// watched): as the watch would have.
		t.r.checkFile(t)
	}
}

// hasOpen reports whether tenant id is open (the file watch's sweep).
func (r *router) hasOpen(id string) bool {
	v, ok := r.tenants.Load(id)
	return ok && v.(*tenant).recordedFile() != nil
}

// recordedFile returns t's file as recorded in its current open session,
// nil when none was (or t is closed).
func (t *tenant) recordedFile() os.FileInfo {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.file == nil || t.fileOpens != t.opens.Load() || t.counted.Load() == 0 {
		return nil
	}
	return t.file
}

// fileChanged checks, after the name of tenant id's file changed in its
// folder, whether the file at its path is still the one its connections
// opened, and fences the tenant when it is not.
func (r *router) fileChanged(id string) {
	v, ok := r.tenants.Load(id)
	if !ok {
		return
	}
	r.checkFile(v.(*tenant))
}

// checkFile fences t (and closes it now if nothing holds it) when its file
// is not the one its connections opened.
func (r *router) checkFile(t *tenant) {
	if t.moved.Load() && t.fenced.Load() {
		// Fenced for this already, its side files recorded then: looked at
		// again once its connections closed them (the old file's watch
		// tells when its last descriptor goes), they no longer seemed this
		// process's, and the old -wal was left to be replayed into the new
		// file. (A lease taken back unfences a tenant: then it is looked
		// at again, below, keeping the side files recorded.)
		return
	}
	was := t.recordedFile()
	if was == nil {
		return // closed, or not recorded yet
	}
	if fi, err := os.Lstat(t.path); err == nil && os.SameFile(was, fi) {
		return
	}
	if !t.pin() {
		return // left the registry: closed
	}
	defer t.unpin()
	side := ownSideFiles(t.path)
	t.mu.Lock()
	same := t.file == was && t.fileOpens == t.opens.Load() // not closed and opened anew meanwhile
	if same && len(t.movedSide) == 0 {
		t.movedSide = side
	}
	t.mu.Unlock()
	if !same {
		return
	}
	t.moved.Store(true)
	t.fenced.Store(true)
	if t.wsem.TryAcquire() {
		r.unfence(t) // fails while readers are leased: the next user closes it
		t.unlockWriter()
	}
}

// ownSideFiles returns the side files (-wal, -shm) at p's side that this
// process has open: those of the file that was at p, used by t's
// connections. SQLite leaves them behind when it closes a database file
// that moved (no checkpoint on close: SQLITE_READONLY_DBMOVED), and would
// replay that -wal into the file now at p when it is opened.
func ownSideFiles(p string) []os.FileInfo {
	var own []os.FileInfo
	for _, s := range sqliteSuffixes {
		fi, err := os.Lstat(p + s)
		if err != nil {
			continue
		}
		if in, err := openInProcess(p + s); err == nil && in {
			own = append(own, fi)
		}
	}
	return own
}

// closedAfterMove ends the fence of t for its moved file once its
// connections are closed (by unfence, or any eviction: a reader leased
// when the move was seen leaves it to the idle reaper): the old file's side
// files go, and t is opened anew at its path by its next use. A fence for a
// lost lease stays. The caller holds t's writer semaphore.
func (t *tenant) closedAfterMove() {
	if !t.moved.Load() {
		return
	}
	t.removeMovedSideFiles()
	t.moved.Store(false)
	// Another file, whose ledger nobody checked: the next open checks it
	// (it was served unmigrated, and MigrateAll said it had nothing to do,
	// when requests held t as the move was seen).
	t.ready.Store(false)
	if t.lease == nil || !leaseStale(t) && !t.r.leaseLost(t) {
		t.fenced.Store(false)
	}
}

// removeMovedSideFiles removes the side files that t's connections used
// (ownSideFiles) when its file moved, now that they are closed, unless
// another process has started using them (lockShm). The caller holds t's
// writer semaphore: nothing of t opens meanwhile.
func (t *tenant) removeMovedSideFiles() {
	t.mu.Lock()
	own := t.movedSide
	t.movedSide = nil
	t.mu.Unlock()
	if len(own) == 0 {
		return
	}
	release, err := lockUnusedShm(t.path + "-shm")
	if err != nil {
		return // a connection (here or in another process) uses it now
	}
	defer release()
	for _, s := range sqliteSuffixes {
		fi, err := os.Lstat(t.path + s)
		if err != nil {
			continue
		}
		for _, o := range own {
			if os.SameFile(fi, o) {
				os.Remove(t.path + s)
			}
		}
	}
}

// checkAllFiles is checkFile for every open tenant: after the kernel
// dropped events, or a watched folder itself went away.
func (r *router) checkAllFiles() {
	r.tenants.Range(func(_, v any) bool {
		r.checkFile(v.(*tenant))
		return true
	})
}
