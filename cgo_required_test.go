package sqliteproxy

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// A build without cgo (CGO_ENABLED=0, the default of many container
// builds and of cross-compiling) was a wall of "undefined: sqlite3.…"
// errors; one of the first lines now says what is missing.
func TestBuild_WithoutCgoSaysSo(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the package")
	}
	cmd := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "build", "-o", os.DevNull, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatal("the package built without cgo")
	}
	lines := strings.SplitN(string(out), "\n", 5)
	if !strings.Contains(strings.Join(lines[:min(len(lines), 4)], "\n"), "sqliteproxy requires cgo: build with CGO_ENABLED=1 and gcc") {
		t.Fatalf("a build without cgo does not say so in its first lines:\n%s", out)
	}
}
