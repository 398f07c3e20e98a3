package sqliteproxy

import (
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestInvalidTenantIDs(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := newTestProxy(t, Config{Dir: dir})
	bad := []string{
		"", "../x", "..", ".", "a/b", `a\b`, "a\x00b", ".hidden", "-flag", "_x", "%2e%2e", "a?b", "a#b", "a:b",
		"with space", " ", "ACME", "Acme", "acme.db", "a.b", "a;rm", "a$b", "a`b", "a*", "ａｃｍｅ", "аcme", // Cyrillic а
		strings.Repeat("a", MaxTenantIDLen+1), "con", "nul", "com1", "x\n",
	}
	for _, id := range bad {
		if err := ValidTenantID(id); !errors.Is(err, ErrInvalidTenant) {
			t.Errorf("ValidTenantID(%q) = %v, want ErrInvalidTenant", id, err)
		}
		if _, err := p.ExecContext(tctx(id), `CREATE TABLE t (a)`); !errors.Is(err, ErrInvalidTenant) {
			t.Errorf("Exec for %q: %v, want ErrInvalidTenant", id, err)
		}
		if _, err := p.QueryContext(tctx(id), `SELECT 1`); !errors.Is(err, ErrInvalidTenant) {
			t.Errorf("Query for %q: %v, want ErrInvalidTenant", id, err)
		}
	}
	if files := dbFiles(t, filepath.Dir(dir)); !slices.Equal(files, []string{filepath.Base(dir)}) {
		t.Errorf("files next to Dir: %v", files)
	}
	if files := dbFiles(t, dir); len(files) != 0 {
		t.Errorf("files created for invalid IDs: %v", files)
	}
	for _, id := range []string{"a", "0", "acme-corp", "org_42", strings.Repeat("z", MaxTenantIDLen), "9lives", "a-"} {
		if err := ValidTenantID(id); err != nil {
			t.Errorf("ValidTenantID(%q) = %v, want nil", id, err)
		}
	}
}

func FuzzTenantPath(f *testing.F) {
	for _, s := range []string{"acme", "../x", "a/b", "ACME", "a.db", "%2e", "-x", "a\x00", "con"} {
		f.Add(s)
	}
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, id string) {
		if checkTenantID(id) != nil {
			return
		}
		p := filepath.Join(dir, id+tenantFileSuffix)
		if filepath.Dir(p) != dir || filepath.Base(p) != id+tenantFileSuffix {
			t.Fatalf("accepted ID %q maps to %q, outside %q", id, p, dir)
		}
		if got, ok := tenantIDFromFile(filepath.Base(p)); !ok || got != id {
			t.Fatalf("file of %q reads back as %q, %v", id, got, ok)
		}
		if strings.ToLower(id) != id {
			t.Fatalf("accepted ID %q has a case twin", id)
		}
	})
}

// An error of ours wrapped in an *Error says "sqliteproxy:" once:
// "sqliteproxy: check tenant ID: sqliteproxy: invalid tenant ID: ..." read
// as two errors.
func TestError_PrefixOnce(t *testing.T) {
	t.Parallel()
	p := newTestProxy(t, Config{})
	_, err := p.ExecContext(tctx("ACME"), `CREATE TABLE t (a)`)
	if !errors.Is(err, ErrInvalidTenant) {
		t.Fatalf("an upper-case ID: %v, want ErrInvalidTenant", err)
	}
	if n := strings.Count(err.Error(), "sqliteproxy:"); n != 1 {
		t.Errorf("%q says sqliteproxy: %d times", err, n)
	}
	if got := opError(opRoute, "acme", opError(opWaitWriter, "acme", errBusy)).Error(); strings.Count(got, "sqliteproxy:") != 1 {
		t.Errorf("nested: %q", got)
	}
}

// An invalid ID is refused saying what is wrong with it, the ID quoted
// short (a routing error quoted a 300-byte one in full).
func TestValidTenantID_SaysWhy(t *testing.T) {
	t.Parallel()
	for id, want := range map[string]string{
		"Acme":                        `"Acme": byte 0 is upper case: IDs are lower case`,
		"-acme":                       `"-acme" starts with '-': an ID starts with a letter or a digit`,
		"a/b":                         `"a/b": byte 1 ('/') is not one of [a-z0-9_-]`,
		"café":                        `byte 3 ('é') is not one of [a-z0-9_-]`,
		strings.Repeat("a", 61) + "!": `…: byte 61 ('!')`,
	} {
		err := ValidTenantID(id)
		if !errors.Is(err, ErrInvalidTenant) || !strings.Contains(err.Error(), want) {
			t.Errorf("ValidTenantID(%q) = %v, want it to say %s", id, err, want)
		}
	}
}
