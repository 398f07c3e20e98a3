package sqliteproxy

import (
	"bytes"
	"errors"
	"os"
	"sync"
	"syscall"
	"unsafe"
)

// The file watch reads inotify events on the files of open tenants
// (filewatch.go): a change of a file's link count (its name removed, as rm
// does, or another file renamed over it, as mv backup.db acme.db does), the
// file moved or deleted; and on the folders that hold them: a tenant file's
// name moved away or onto, the folder itself deleted or moved. Not a
// folder's deletions: SQLite deletes a -wal and a -shm at every close, and
// those two events woke the watch at every cold cycle, which cost 16 % of
// one on tmpfs (BenchmarkColdOpenPaired, x-mattn-defaults 1.27 with them,
// 1.10 without).
//
// A file's watch is added when its tenant opens. Removing it when the
// tenant closes would queue an event (IN_IGNORED) and wake the watch at
// every close again; instead, every fileWatchSweep additions (or a quarter
// of the watches, with many tenants open), the watches of files no tenant
// has open any more are removed together (the kernel keeps a watched file's
// inode in memory meanwhile: at most that many besides the open tenants').
//
// One inotify instance serves every proxy of the process (the kernel allows
// 128 per user by default, and a process may open many proxies): started
// with the first proxy, stopped with the last. Each folder's events go to
// the proxies that watch it.
type inotifyWatch struct {
	f    *os.File // the inotify descriptor; closing it ends run
	done chan struct{}

	mu      sync.Mutex
	folders map[string]*watchedFolder // by path
	byWD    map[int32]*watchedFolder
	files   map[int32]*watchedFile // tenant files' watches, by watch descriptor
	added   int                    // file watches added since the last sweep

	dispatch sync.Mutex // held while events are handed to routers: fileWatch.close waits for it
}

// watchedFolder is a folder watched for some routers.
type watchedFolder struct {
	path    string
	wd      int32
	routers map[*router]struct{}
}

// watchedFile is a tenant file watched for some routers.
type watchedFile struct {
	ids map[*router]string // the routers that watch it, and its tenant's ID in each
}

const (
	watchFolderMask = syscall.IN_MOVED_FROM | syscall.IN_MOVED_TO |
		syscall.IN_DELETE_SELF | syscall.IN_MOVE_SELF | syscall.IN_ONLYDIR
	watchFileMask = syscall.IN_ATTRIB | syscall.IN_MOVE_SELF | syscall.IN_DELETE_SELF
	watchRecheck  = syscall.IN_Q_OVERFLOW | syscall.IN_DELETE_SELF | syscall.IN_MOVE_SELF
	// fileWatchSweep is how many file watches are added, at least,
	// between two removals of those no open tenant needs; a quarter of all
	// the watches with many tenants open (a sweep looks at each).
	fileWatchSweep = 64
)

// inotifyAddWatch is syscall.InotifyAddWatch; tests make it fail as the
// kernel does past fs.inotify.max_user_watches.
var inotifyAddWatch = syscall.InotifyAddWatch

// processWatch is the process's inotify instance, nil while no router uses
// it; users counts the routers that do.
var processWatch struct {
	mu    sync.Mutex
	w     *inotifyWatch
	users int
}

// fileWatch is a router's use of the process's watch.
type fileWatch struct {
	r      *router
	w      *inotifyWatch
	closed bool // under w.mu
}

// startFileWatch gives r the process's file watch, nil when inotify is not
// available (its limits reached): nothing is then watched for r, as
// elsewhere than Linux.
func startFileWatch(r *router) *fileWatch {
	pw := &processWatch
	pw.mu.Lock()
	defer pw.mu.Unlock()
	if pw.w == nil {
		fd, err := syscall.InotifyInit1(syscall.IN_CLOEXEC | syscall.IN_NONBLOCK)
		if err != nil {
			return nil
		}
		pw.w = &inotifyWatch{f: os.NewFile(uintptr(fd), "inotify"), done: make(chan struct{}),
			folders: map[string]*watchedFolder{}, byWD: map[int32]*watchedFolder{}, files: map[int32]*watchedFile{}}
		go pw.w.run()
	}
	pw.users++
	return &fileWatch{r: r, w: pw.w}
}

// folder watches dir for fw's router.
func (fw *fileWatch) folder(dir string) {
	if fw == nil {
		return
	}
	w := fw.w
	w.mu.Lock()
	defer w.mu.Unlock()
	if fw.closed {
		return // an open that raced Close
	}
	wf := w.folders[dir]
	if wf == nil {
		wd, _ := w.addWatch(dir, watchFolderMask)
		if wd < 0 {
			return
		}
		if wf = w.byWD[wd]; wf == nil { // the same folder by another path shares it
			wf = &watchedFolder{path: dir, wd: wd, routers: map[*router]struct{}{}}
			w.byWD[wf.wd] = wf
		}
		w.folders[dir] = wf
	}
	wf.routers[fw.r] = struct{}{}
}

// file watches t's file, which its connections opened as fi, for fw's
// router, and reports whether the path still held that file once the watch
// was on (a change before it would not be seen), and whether the file
// could not be watched (inotify's limits: no instance for the router, or
// fs.inotify.max_user_watches met even after a sweep).
func (fw *fileWatch) file(t *tenant, fi os.FileInfo) (same, unwatched bool) {
	if fw == nil {
		return true, true
	}
	w := fw.w
	w.mu.Lock()
	if fw.closed {
		w.mu.Unlock()
		return true, false // an open that raced Close
	}
	wd, err := w.addWatch(t.path, watchFileMask)
	if overLimit(err) && len(w.files) > 0 {
		// Past the kernel's limit (fs.inotify.max_user_watches, shared
		// with the user's other processes), maybe for closed tenants'
		// watches: sweep now, and try again.
		w.sweepLocked()
		wd, err = w.addWatch(t.path, watchFileMask)
	}
	if wd >= 0 {
		wf := w.files[wd]
		if wf == nil {
			wf = &watchedFile{ids: map[*router]string{}}
			w.files[wd] = wf
			w.added++
		}
		wf.ids[fw.r] = t.id
		if w.added >= max(fileWatchSweep, len(w.files)/4) {
			w.sweepLocked() // t's watch stays: t's file is recorded (opened)
		}
	}
	w.mu.Unlock()
	now, lerr := os.Lstat(t.path)
	// Not for a file gone meanwhile (ENOENT): the check below tells.
	return lerr == nil && os.SameFile(now, fi), overLimit(err)
}

// overLimit reports whether err, inotify_add_watch's, is for the kernel's
// limits (fs.inotify.max_user_watches; its memory).
func overLimit(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.ENOMEM)
}

// sweepLocked removes the watches of files whose tenants no router
// watching them has open any more. (A tenant open on a file that replaced
// the watched one keeps the old file's watch until it closes: a watch added
// after the path changed is on the new file, whatever the tenant recorded,
// and the kernel gives its descriptor back when that file's open adds it
// again.) The caller holds w.mu.
func (w *inotifyWatch) sweepLocked() {
	w.added = 0
	for wd, wf := range w.files {
		for r, id := range wf.ids {
			if !r.hasOpen(id) {
				delete(wf.ids, r)
			}
		}
		if len(wf.ids) == 0 {
			w.removeFileLocked(wd)
		}
	}
}

// removeFileLocked forgets the file watch wd and removes it from the
// kernel. The caller holds w.mu.
func (w *inotifyWatch) removeFileLocked(wd int32) {
	delete(w.files, wd)
	w.rmWatch(wd)
}

// rmWatch removes the kernel's watch wd. The caller holds w.mu.
func (w *inotifyWatch) rmWatch(wd int32) {
	if sc, err := w.f.SyscallConn(); err == nil {
		sc.Control(func(fd uintptr) { syscall.InotifyRmWatch(int(fd), uint32(wd)) })
	}
}

// addWatch adds (or extends) the kernel's watch of path with mask and
// returns its descriptor, -1 and why if it could not. The caller holds
// w.mu.
func (w *inotifyWatch) addWatch(path string, mask uint32) (int32, error) {
	sc, err := w.f.SyscallConn()
	if err != nil {
		return -1, err
	}
	wd, werr := -1, error(nil)
	if err := sc.Control(func(fd uintptr) { wd, werr = inotifyAddWatch(int(fd), path, mask) }); err != nil {
		return -1, err
	}
	if werr != nil {
		return -1, werr
	}
	return int32(wd), nil
}

// close ends fw's router's use of the watch: no event reaches the router
// once it returns. The last router out stops the watch.
func (fw *fileWatch) close() {
	if fw == nil {
		return
	}
	w := fw.w
	w.mu.Lock()
	fw.closed = true
	for _, wf := range w.byWD {
		delete(wf.routers, fw.r)
		if len(wf.routers) == 0 {
			// Watched for no one: its events would be read for nothing.
			w.rmWatch(wf.wd)
			w.forgetLocked(wf)
		}
	}
	for wd, wf := range w.files {
		delete(wf.ids, fw.r)
		if len(wf.ids) == 0 {
			w.removeFileLocked(wd)
		}
	}
	w.mu.Unlock()
	w.dispatch.Lock() // events being handed to it are handed
	w.dispatch.Unlock()
	pw := &processWatch
	pw.mu.Lock()
	defer pw.mu.Unlock()
	if pw.users--; pw.users == 0 {
		w.f.Close()
		<-w.done
		pw.w = nil
	}
}

// run reads events until the descriptor is closed.
func (w *inotifyWatch) run() {
	defer close(w.done)
	buf := make([]byte, 64<<10)
	for {
		n, err := w.f.Read(buf)
		if err != nil {
			return
		}
		w.handle(buf[:n])
	}
}

// handle acts on a read's events: tenant names to check, per router, and
// routers whose open tenants are all checked (the kernel dropped events,
// or a folder went away).
func (w *inotifyWatch) handle(b []byte) {
	type change struct {
		r  *router
		id string
	}
	var changes []change
	recheck := map[*router]bool{}
	w.mu.Lock()
	for len(b) >= syscall.SizeofInotifyEvent {
		ev := (*syscall.InotifyEvent)(unsafe.Pointer(&b[0]))
		end := syscall.SizeofInotifyEvent + int(ev.Len)
		if end > len(b) {
			break
		}
		name := b[syscall.SizeofInotifyEvent:end]
		if i := bytes.IndexByte(name, 0); i >= 0 {
			name = name[:i]
		}
		b = b[end:]
		if ev.Mask&syscall.IN_Q_OVERFLOW != 0 {
			for _, wf := range w.byWD {
				for r := range wf.routers {
					recheck[r] = true
				}
			}
			continue
		}
		if ff := w.files[ev.Wd]; ff != nil {
			// The file's link count changed, it moved or was deleted:
			// each router checks its tenant.
			for r, id := range ff.ids {
				changes = append(changes, change{r, id})
			}
			if ev.Mask&syscall.IN_IGNORED != 0 {
				delete(w.files, ev.Wd) // the kernel ended it: the file is gone
			}
			continue
		}
		wf := w.byWD[ev.Wd]
		if wf == nil {
			continue
		}
		switch {
		case ev.Mask&watchRecheck != 0 || ev.Mask&syscall.IN_IGNORED != 0:
			// The folder went away (its watch follows it, or ends): its
			// routers check their tenants, and a folder made again at its
			// path is watched anew as tenants open in it.
			for r := range wf.routers {
				recheck[r] = true
			}
			w.forgetLocked(wf)
		default:
			if id, ok := tenantIDFromFile(string(name)); ok {
				for r := range wf.routers {
					changes = append(changes, change{r, id})
				}
			}
		}
	}
	w.dispatch.Lock() // before w.mu is let go: a router's close waits for what it was sent
	w.mu.Unlock()
	defer w.dispatch.Unlock()
	for _, c := range changes {
		c.r.fileChanged(c.id)
	}
	for r := range recheck {
		r.checkAllFiles()
	}
}

// forgetLocked forgets the watched folder wf; the caller holds w.mu.
func (w *inotifyWatch) forgetLocked(wf *watchedFolder) {
	delete(w.byWD, wf.wd)
	for p, f := range w.folders {
		if f == wf {
			delete(w.folders, p)
		}
	}
}
