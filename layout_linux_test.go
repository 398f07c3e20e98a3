//go:build linux

package sqliteproxy

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A layout marker that is not a regular file is refused at New, at once:
// a FIFO hung New (and every CLI command) for ever, a symlink to /dev/zero
// ran the process out of memory, a symlink to a file quoted its contents.
func TestLayoutMarkerNotARegularFile(t *testing.T) {
	t.Parallel()
	for name, plant := range map[string]func(p string) error{
		"fifo":    func(p string) error { return syscall.Mkfifo(p, 0o600) },
		"devzero": func(p string) error { return os.Symlink("/dev/zero", p) },
		"symlink": func(p string) error { return os.Symlink(filepath.Join(filepath.Dir(p), "x"), p) },
		"dir":     func(p string) error { return os.Mkdir(p, 0o700) },
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			os.WriteFile(filepath.Join(dir, "x"), []byte("buckets"), 0o600)
			if err := plant(filepath.Join(dir, layoutMarkerName)); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() {
				p, err := New(Config{Dir: dir})
				if err == nil {
					p.Close()
				}
				done <- err
			}()
			select {
			case err := <-done:
				if err == nil || !strings.Contains(err.Error(), "regular file") && !strings.Contains(err.Error(), "directory") {
					t.Errorf("New with a %s as the layout marker: %v, want a refusal", name, err)
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("New with a %s as the layout marker still runs after 10 s", name)
			}
		})
	}
}
