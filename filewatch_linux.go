package sqliteproxy

import (
	"bytes"
	"os"
	"sync"
	"syscall"
	"unsafe"
)

// The file watch reads inotify events on the folders that hold open tenants
// (filewatch.go): a tenant file's name deleted, moved away or moved onto,
// and a watched folder itself deleted or moved. SQLite's own deletions of
// -wal and -shm files at every close come too, and are passed over by name.
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

	dispatch sync.Mutex // held while events are handed to routers: fileWatch.close waits for it
}

// watchedFolder is a folder watched for some routers.
type watchedFolder struct {
	path    string
	wd      int32
	routers map[*router]struct{}
}

const (
	watchFolderMask = syscall.IN_DELETE | syscall.IN_MOVED_FROM | syscall.IN_MOVED_TO |
		syscall.IN_DELETE_SELF | syscall.IN_MOVE_SELF | syscall.IN_ONLYDIR
	watchRecheck = syscall.IN_Q_OVERFLOW | syscall.IN_DELETE_SELF | syscall.IN_MOVE_SELF
)

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
			folders: map[string]*watchedFolder{}, byWD: map[int32]*watchedFolder{}}
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
		sc, err := w.f.SyscallConn()
		if err != nil {
			return
		}
		wd, werr := -1, error(nil)
		sc.Control(func(fd uintptr) { wd, werr = syscall.InotifyAddWatch(int(fd), dir, watchFolderMask) })
		if werr != nil {
			return
		}
		if wf = w.byWD[int32(wd)]; wf == nil { // the same folder by another path shares it
			wf = &watchedFolder{path: dir, wd: int32(wd), routers: map[*router]struct{}{}}
			w.byWD[wf.wd] = wf
		}
		w.folders[dir] = wf
	}
	wf.routers[fw.r] = struct{}{}
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
			if sc, err := w.f.SyscallConn(); err == nil {
				sc.Control(func(fd uintptr) { syscall.InotifyRmWatch(int(fd), uint32(wf.wd)) })
			}
			w.forgetLocked(wf)
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
