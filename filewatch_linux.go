package sqliteproxy

import (
	"bytes"
	"os"
	"sync"
	"syscall"
	"unsafe"
)

// fileWatch reads inotify events on the folders that hold open tenants
// (filewatch.go): a tenant file's name deleted, moved away or moved onto,
// and a watched folder itself deleted or moved. SQLite's own deletions of
// -wal and -shm files at every close come too, and are passed over by name.
type fileWatch struct {
	r    *router
	f    *os.File // the inotify descriptor; closing it ends run
	done chan struct{}

	mu      sync.Mutex
	folders map[string]bool // watched
}

const (
	watchFolderMask = syscall.IN_DELETE | syscall.IN_MOVED_FROM | syscall.IN_MOVED_TO |
		syscall.IN_DELETE_SELF | syscall.IN_MOVE_SELF | syscall.IN_ONLYDIR
	watchRecheck = syscall.IN_Q_OVERFLOW | syscall.IN_DELETE_SELF | syscall.IN_MOVE_SELF
)

// startFileWatch starts r's file watch, nil when inotify is not available
// (its limits reached): nothing is then watched, as elsewhere than Linux.
func startFileWatch(r *router) *fileWatch {
	fd, err := syscall.InotifyInit1(syscall.IN_CLOEXEC | syscall.IN_NONBLOCK)
	if err != nil {
		return nil
	}
	w := &fileWatch{r: r, f: os.NewFile(uintptr(fd), "inotify"), done: make(chan struct{}), folders: map[string]bool{}}
	go w.run()
	return w
}

// folder watches dir, once.
func (w *fileWatch) folder(dir string) {
	if w == nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.folders[dir] {
		return
	}
	sc, err := w.f.SyscallConn()
	if err != nil {
		return
	}
	var werr error
	sc.Control(func(fd uintptr) { _, werr = syscall.InotifyAddWatch(int(fd), dir, watchFolderMask) })
	if werr == nil {
		w.folders[dir] = true
	}
}

// run reads events until close.
func (w *fileWatch) run() {
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

// handle acts on a read's events.
func (w *fileWatch) handle(b []byte) {
	recheck := false
	for len(b) >= syscall.SizeofInotifyEvent {
		ev := (*syscall.InotifyEvent)(unsafe.Pointer(&b[0]))
		end := syscall.SizeofInotifyEvent + int(ev.Len)
		if end > len(b) {
			return
		}
		name := b[syscall.SizeofInotifyEvent:end]
		if i := bytes.IndexByte(name, 0); i >= 0 {
			name = name[:i]
		}
		switch {
		case ev.Mask&watchRecheck != 0:
			recheck = true
			if ev.Mask&(syscall.IN_DELETE_SELF|syscall.IN_MOVE_SELF) != 0 {
				// The watch follows the folder moved away: a folder made
				// again at its path is watched as tenants open in it.
				w.mu.Lock()
				clear(w.folders)
				w.mu.Unlock()
			}
		case ev.Mask&syscall.IN_IGNORED != 0:
			w.mu.Lock()
			clear(w.folders) // which one is not told: watched again as tenants open
			w.mu.Unlock()
		default:
			if id, ok := tenantIDFromFile(string(name)); ok {
				w.r.fileChanged(id)
			}
		}
		b = b[end:]
	}
	if recheck {
		w.r.checkAllFiles()
	}
}

// close stops the watch and waits for its reader.
func (w *fileWatch) close() {
	if w == nil {
		return
	}
	w.f.Close()
	<-w.done
}
