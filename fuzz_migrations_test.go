package sqliteproxy

import (
	"bytes"
	"io/fs"
	"maps"
	"math/big"
	"regexp"
	"slices"
	"strings"
	"testing"
	"testing/fstest"
)

// migrationFileRE is the documented pattern of a migration file name (see
// loadMigrations and the README): a number, an underscore, a name, then
// ".sql" or ".up.sql" (".up.sql" is a ".sql" name); a ".down.sql" file is
// the down migration of the migration of its number. The name may be empty
// ("0001_.sql"), as the code accepts.
var migrationFileRE = regexp.MustCompile(`(?s)^([0-9]+)_.*\.sql$`)

var maxMigrationNumber = new(big.Int).SetUint64(1<<63 - 1)

// numberedRE is a file name meant as a migration: a digit first, or V and
// a digit (Flyway's V2__add.sql). Such a .sql file not named by the
// pattern (0002-add.sql, 0002_add.SQL) is an error, not skipped.
var numberedRE = regexp.MustCompile(`^([0-9]|[Vv][0-9])`)

// nestedMigrationRE is what loadMigrations takes, in a folder, for a sign
// that the migrations were meant to be at the top: a digit, then an
// underscore somewhere, ".sql" at the end.
var nestedMigrationRE = regexp.MustCompile(`(?s)^[0-9].*_.*\.sql$`)

// FuzzMigrationFileNames feeds loadMigrations a directory of fuzzed file
// names (one per line of names; "a/b" makes a subdirectory) and contents
// (the NUL-separated parts of contents, used in turn) and checks it against
// an independent reading of the documented rule: no panic; exactly the
// top-level files that match the pattern and are not .down.sql are used,
// with their contents, in numeric order, each with the .down.sql file of
// its number, if any; an error exactly when two used files (or two down
// files) share a number, a used or down file is blank, a number does not
// fit in 63 bits, a down file has no migration of its number or another
// name than it (0002_a.sql, 0002_b.down.sql), a top-level
// .sql file that starts like a migration's name is not named by the
// pattern, or no file is used while a top-level file ends in .sql or a
// top-level folder holds what looks like a migration.
func FuzzMigrationFileNames(f *testing.F) {
	f.Add("0001_init.sql\n0002_add_severity.up.sql\n0002_add_severity.down.sql\nREADME.md",
		[]byte("CREATE TABLE t (a)\x00ALTER TABLE t ADD b\x00DROP TABLE t\x00# notes"))
	f.Add("0010_late.sql\n0002_second.sql\n0001_first.sql", []byte("SELECT 10\x00SELECT 2\x00SELECT 1"))
	f.Add("0001_a.sql\n001_b.sql", []byte("SELECT 1"))                               // same number
	f.Add("0001_a.sql", []byte(" \n\t"))                                             // blank
	f.Add("99999999999999999999_big.sql", []byte("SELECT 1"))                        // does not fit
	f.Add("9223372036854775807_max.sql\n0_zero.sql", []byte("SELECT 1\x00SELECT 2")) // fits
	f.Add("sub/0003_nested.sql\nx0004_x.sql\n0005.sql\n_0006_x.sql\n0007_x.SQL\n0008_x.sql.orig\n+9_x.sql\n 10_x.sql",
		[]byte("SELECT 1"))
	f.Add("0001_a.sql\n1_a.down.sql\n0002_b.up.sql\n0002_b.down.sql\n0002_c.down.sql", []byte("SELECT 1\x00SELECT 2")) // two downs
	f.Add("0001_a.sql\n1_a.down.sql\n0002_b.up.sql", []byte("SELECT 1\x00 "))                                          // blank down
	f.Add("0001_a.up.sql\n0001_b.down.sql", []byte("SELECT 1\x00SELECT 2"))                                            // another migration's down
	f.Add("0001_.sql\n0002_.down.up.sql\n0003_x.down.sql\n0004_\u00e9\u0301.sql\n\u0661_arabic_digit.sql", []byte("SELECT 1\x00SELECT 2"))
	f.Fuzz(func(t *testing.T, names string, contents []byte) {
		lines := strings.Split(names, "\n")
		if len(lines) > 64 {
			return
		}
		// File names are what this target is about: goose annotations,
		// which split a file's contents, have tests of their own.
		parts := bytes.Split(bytes.ReplaceAll(contents, []byte("+goose"), []byte("goose")), []byte{0})
		fsys := fstest.MapFS{}
		dirs := map[string]bool{} // top-level directories
		for i, name := range lines {
			if !fs.ValidPath(name) || name == "." {
				continue // not a name a directory can hold
			}
			fsys[name] = &fstest.MapFile{Data: parts[i%len(parts)]}
			if top, _, ok := strings.Cut(name, "/"); ok {
				dirs[top] = true
			}
		}
		for name := range fsys {
			for d := fuzzParentDir(name); d != ""; d = fuzzParentDir(d) {
				if fsys[d] != nil {
					return // a name that is both a file and a directory: not a file system
				}
			}
		}

		// What the rule says.
		type file struct {
			n    *big.Int
			name string
			sql  string
		}
		var want []file
		downs := map[string]file{} // number -> down file
		wantErr := ""
		for name, mf := range fsys {
			if strings.Contains(name, "/") || dirs[name] {
				continue // in or is a subdirectory
			}
			m := migrationFileRE.FindStringSubmatch(name)
			if m == nil {
				if strings.HasSuffix(strings.ToLower(name), ".sql") && numberedRE.MatchString(name) {
					wantErr = "numbered but misnamed " + name
				}
				continue
			}
			n, _ := new(big.Int).SetString(m[1], 10)
			if n.Cmp(maxMigrationNumber) > 0 {
				wantErr = "number out of range"
			}
			if strings.TrimSpace(string(mf.Data)) == "" {
				wantErr = "empty file"
			}
			if strings.HasSuffix(name, ".down.sql") {
				if _, dup := downs[n.String()]; dup {
					wantErr = "same down number"
				}
				downs[n.String()] = file{n, name, string(mf.Data)}
				continue
			}
			want = append(want, file{n, name, string(mf.Data)})
		}
		for k, d := range downs {
			if !slices.ContainsFunc(want, func(f file) bool { return f.n.String() == k }) {
				wantErr = "down file without its migration"
			}
			for _, w := range want {
				if w.n.String() == k && migrationLabel(d.name) != migrationLabel(w.name) {
					wantErr = "down file named for another migration"
				}
			}
		}
		slices.SortFunc(want, func(a, b file) int { return a.n.Cmp(b.n) })
		for i := 1; i < len(want); i++ {
			if want[i-1].n.Cmp(want[i].n) == 0 {
				wantErr = "same number"
			}
		}

		// A source with SQL files but no migration is a mistake: files in
		// a folder (//go:embed without fs.Sub) or misnamed.
		if len(want) == 0 && len(downs) == 0 {
			for name := range fsys {
				top, rest, nested := strings.Cut(name, "/")
				switch {
				case nested && !strings.Contains(rest, "/") && nestedMigrationRE.MatchString(rest):
					wantErr = "migrations in " + top + "/"
				case !nested && !dirs[name] && strings.HasSuffix(strings.ToLower(name), ".sql"):
					wantErr = "misnamed " + name
				}
			}
		}

		var wantNames []string
		for _, w := range want {
			wantNames = append(wantNames, w.name)
		}
		files := slices.Sorted(maps.Keys(fsys))
		got, err := loadMigrations(&Config{MigrationsFS: fsys})
		if wantErr != "" {
			if err == nil {
				t.Fatalf("files %q: no error, want one (%s); got %v", files, wantErr, fuzzMigrationNames(got))
			}
			return
		}
		if err != nil {
			t.Fatalf("files %q: %v; want migrations %v", files, err, wantNames)
		}
		if len(got) != len(want) {
			t.Fatalf("files %q: got %v, want %v", files, fuzzMigrationNames(got), wantNames)
		}
		for i := range got {
			if got[i].name != want[i].name || got[i].sql != want[i].sql {
				t.Fatalf("files %q: migration %d is %q (%q), want %q (%q)", files, i,
					got[i].name, got[i].sql, want[i].name, want[i].sql)
			}
			d := downs[want[i].n.String()]
			if got[i].downName != d.name || got[i].down != d.sql {
				t.Fatalf("files %q: migration %q has down %q (%q), want %q (%q)", files, got[i].name,
					got[i].downName, got[i].down, d.name, d.sql)
			}
			if strings.HasSuffix(got[i].name, ".down.sql") || !migrationFileRE.MatchString(got[i].name) {
				t.Fatalf("used %q, which does not match the documented pattern", got[i].name)
			}
		}
	})
}

// fuzzParentDir returns the parent directory of a slash-separated name, "" at the top.
func fuzzParentDir(name string) string {
	i := strings.LastIndexByte(name, '/')
	if i < 0 {
		return ""
	}
	return name[:i]
}

func fuzzMigrationNames(list []migration) []string {
	var out []string
	for _, m := range list {
		out = append(out, m.name)
	}
	return out
}
