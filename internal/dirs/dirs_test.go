package dirs

import (
	"os"
	"path/filepath"
	"testing"
)

func TestInside(t *testing.T) {
	base := t.TempDir()
	root := filepath.Join(base, "data")
	other := filepath.Join(base, "backups")
	for _, d := range []string{filepath.Join(root, "82"), other} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	link := filepath.Join(base, "link")
	if err := os.Symlink(root, link); err != nil {
		t.Fatal(err)
	}
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	rel, err := filepath.Rel(wd, filepath.Join(root, "82", "acme.db"))
	if err != nil {
		t.Fatal(err)
	}
	// A link out of the backups into a bucket: "../" after it is the data
	// directory itself, as the system resolves it (filepath.Join would
	// clean it to the backups' own folder).
	bucketLink := filepath.Join(other, "lnk")
	if err := os.Symlink(filepath.Join(root, "82"), bucketLink); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		path, root string
		want       bool
	}{
		{bucketLink + "/../acme.db", root, true},
		{bucketLink + "/../c4/new.db", root, true},
		{bucketLink + "/../../backups/x.db", root, false},
		{root, root, true},
		{filepath.Join(root, "acme.db"), root, true},
		{filepath.Join(root, "82", "acme.db"), root, true},
		{filepath.Join(root, "new", "deeper", "x.db"), root, true}, // not there yet
		{filepath.Join(root, "82", "..", "..", "backups", "x.db"), root, false},
		{filepath.Join(link, "82", "acme.db"), root, true}, // through a link
		{filepath.Join(root, "acme.db"), link, true},       // root through a link
		{rel, root, true}, // relative
		{filepath.Join(other, "acme.db"), root, false},
		{base, root, false},                               // a parent
		{filepath.Join(root+"x", "acme.db"), root, false}, // a name sharing the prefix
		{filepath.Join(other, "acme.db"), filepath.Join(base, "missing"), false},
	} {
		got, err := Inside(tc.path, tc.root)
		if err != nil || got != tc.want {
			t.Errorf("Inside(%q, %q) = %v, %v; want %v", tc.path, tc.root, got, err, tc.want)
		}
	}
}

func TestResolve(t *testing.T) {
	base := t.TempDir()
	base, err := filepath.EvalSymlinks(base)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(base, "a", "b"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(base, "a", "b"), filepath.Join(base, "l")); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ path, want string }{
		{base + "/l/x.db", base + "/a/b/x.db"},
		{base + "/l/../x.db", base + "/a/x.db"},
		{base + "/l/../new/deeper/", base + "/a/new/deeper"},
		{base + "/a//b/./x.db", base + "/a/b/x.db"},
	} {
		got, err := Resolve(tc.path)
		if err != nil || got != tc.want {
			t.Errorf("Resolve(%q) = %q, %v; want %q", tc.path, got, err, tc.want)
		}
	}
}
