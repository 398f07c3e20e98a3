//go:build linux

package main

import (
	"bytes"
	"debug/elf"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
)

// staticBuildArgs are the flags of `make static` (see the Makefile): CGo
// with glibc linked statically. osusergo and netgo replace os/user and the
// resolver's use of getpwnam/getaddrinfo, which glibc cannot provide to a
// static binary (the linker warns about them), and sqlite_omit_load_extension
// removes SQLite's dlopen.
var staticBuildArgs = []string{
	"-tags", "sqlite_omit_load_extension osusergo netgo",
	"-ldflags", `-s -w -extldflags "-static"`,
	"-trimpath",
}

// cannotLinkStatic matches a build that failed because static linking is
// not available (no libc.a: glibc's static libraries are not installed),
// as opposed to a broken build.
var cannotLinkStatic = regexp.MustCompile(`cannot find -l\w+|C compiler "[^"]*" not found`)

// TestStaticBinaryInEmptyRoot builds the service as `make static` does and
// runs it in an empty root directory that holds only the binary and an
// empty /data: no libc, no /etc, no /tmp, no /proc, an empty environment.
// That is what the FROM scratch image (Dockerfile) gives it. The build is
// checked for linker warnings and for being static on any machine; the
// chroot needs root and is skipped otherwise.
func TestStaticBinaryInEmptyRoot(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a static binary; skipped in -short mode")
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("go tool not found: %v", err)
	}
	pkgDir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	bin := filepath.Join(root, "events")
	build := exec.CommandContext(t.Context(), goTool, slices.Concat([]string{"build"}, staticBuildArgs, []string{"-o", bin, "."})...)
	build.Dir = pkgDir
	build.Env = append(os.Environ(), "CGO_ENABLED=1")
	out, err := build.CombinedOutput()
	if err != nil {
		var why []string
		for line := range strings.Lines(string(out)) {
			if cannotLinkStatic.MatchString(line) {
				why = append(why, strings.TrimSpace(line))
			}
		}
		if len(why) > 0 {
			t.Skipf("static linking is not possible on this machine (it needs glibc's static libraries: Debian's libc6-dev): %s", strings.Join(why, "; "))
		}
		t.Fatalf("static build: %v\n%s", err, out)
	}
	if len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("the static build printed warnings (make static must build cleanly):\n%s", out)
	}
	checkStatic(t, bin)

	if os.Geteuid() != 0 {
		t.Skip("running the binary in an empty root directory needs chroot, which needs root")
	}
	if err := os.Mkdir(filepath.Join(root, "data"), 0o755); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()

	cmd := exec.Command("/events", "-addr", addr, "-dir", "/data")
	cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: root}
	cmd.Dir = "/"        // inside the new root
	cmd.Env = []string{} // nothing from the host: no TMPDIR, HOME, TZ
	logs := exerciseBinary(t, cmd, addr)
	if t.Failed() {
		t.Logf("server output:\n%s", logs)
	}

	// The tenant's file is in /data, closed cleanly (no -wal or -shm left),
	// beside the file every proxy process keeps locked while it has the
	// directory open, and nothing else was written anywhere in the root: no
	// temporary files (SQLite would fall back to the working directory
	// without /tmp).
	if got, want := tree(t, root), []string{"data/", "data/.sqliteproxy-processes", "data/acme.db", "events"}; !slices.Equal(got, want) {
		t.Errorf("files in the root after the run: %v, want %v", got, want)
	}
}

// checkStatic fails unless bin is an ELF executable without an interpreter
// (the dynamic loader) and without shared libraries.
func checkStatic(t *testing.T, bin string) {
	t.Helper()
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("%s has an ELF interpreter: it is dynamically linked", bin)
		}
	}
	if libs, err := f.ImportedLibraries(); err != nil || len(libs) > 0 {
		t.Errorf("%s needs shared libraries %v (%v)", bin, libs, err)
	}
}

// tree lists the files and directories under root, relative, sorted;
// directories end in a slash.
func tree(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil || path == root {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		if d.IsDir() {
			rel += "/"
		}
		out = append(out, rel)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(out)
	return out
}
