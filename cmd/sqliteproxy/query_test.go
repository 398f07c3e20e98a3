package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestQuery(t *testing.T) {
	t.Parallel()
	mdir := migrationsDir(t, "0001_init.sql")
	dir := fleet(t, mdir, 2, "globex", "acme")
	before := snapshot(t, dir)

	r := cli(t, nil, "query", "-dir", dir, `SELECT count(*) AS n, max(type) AS last FROM events`).want(t, exitOK)
	want := "tenant  n  last\nacme    2  acme-1\nglobex  2  globex-1\n"
	if r.stdout != want || r.stderr != "" {
		t.Errorf("table:\n%s\nwant:\n%s\nstderr: %s", r.stdout, want, r.stderr)
	}

	r = cli(t, nil, "query", "-json", "-tenants", "globex", "-dir", dir, `SELECT id, type, NULL AS x, 1.5 AS f FROM events`).want(t, exitOK)
	var got []map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
		t.Fatalf("-json output %q: %v", r.stdout, err)
	}
	wantJSON := []map[string]any{
		{"tenant": "globex", "id": 1.0, "type": "globex-0", "x": nil, "f": 1.5},
		{"tenant": "globex", "id": 2.0, "type": "globex-1", "x": nil, "f": 1.5},
	}
	if diff := cmp.Diff(wantJSON, got); diff != "" {
		t.Errorf("-json (-want +got):\n%s", diff)
	}
	if !strings.HasPrefix(r.stdout, "[\n  {\"tenant\": \"globex\", \"id\": 1,") {
		t.Errorf("keys not in column order: %q", r.stdout)
	}
	if r := cli(t, nil, "query", "-json", "-tenants", "", "-dir", dir, `SELECT 1`).want(t, exitOK); r.stdout != "[]\n" {
		t.Errorf("no tenants, -json: %q", r.stdout)
	}

	// A listed tenant that does not exist: named, never created.
	r = cli(t, nil, "query", "-tenants", "acme,nope", "-dir", dir, `SELECT count(*) FROM events`).want(t, exitFailed)
	if r.stdout != "tenant  count(*)\nacme    2\n" || r.stderr != "sqliteproxy: query nope: no such tenant\n" {
		t.Errorf("missing tenant: stdout %q, stderr %q", r.stdout, r.stderr)
	}
	r = cli(t, nil, "query", "-skip-errors", "-tenants", "nope,globex", "-dir", dir, `SELECT count(*) FROM events`).want(t, exitFailed)
	if r.stdout != "tenant  count(*)\nglobex  2\n" || r.stderr != "sqliteproxy: query nope: no such tenant\n" {
		t.Errorf("-skip-errors: stdout %q, stderr %q", r.stdout, r.stderr)
	}

	// Writes are refused and run nowhere.
	r = cli(t, nil, "query", "-dir", dir, `DELETE FROM events RETURNING id`).want(t, exitFailed)
	if !strings.Contains(r.stderr, "a fan-out only reads") {
		t.Errorf("write: stderr %q", r.stderr)
	}
	unchanged(t, dir, before)

	// Usage errors.
	cli(t, nil, "query", "-dir", dir).want(t, exitUsage)
	cli(t, nil, "query", "-dir", dir, "-tenants", "Bad!", "SELECT 1").want(t, exitUsage)
	cli(t, nil, "query", "-dir", dir, "-concurrency", "-1", "SELECT 1").want(t, exitUsage)
	cli(t, nil, "query", "-dir", dir+"/missing", "SELECT 1").want(t, exitUsage)
}

// TestQueryJSONColumns: -json refuses a result with two columns of one
// name: an object with a key twice loses a value when read. The table
// shows them as they are. A column named tenant is refused by the fan-out.
func TestQueryJSONColumns(t *testing.T) {
	t.Parallel()
	dir := fleet(t, migrationsDir(t, "0001_init.sql"), 1, "acme")
	for _, tc := range []struct{ sql, col string }{
		{`SELECT 1 AS a, 2 AS a`, "a"},
	} {
		r := cli(t, nil, "query", "-json", "-dir", dir, tc.sql).want(t, exitUsage)
		want := `sqliteproxy: query: column "` + tc.col + `" appears twice in the result: alias it (AS ...) for -json` + "\n"
		if r.stdout != "" || r.stderr != want {
			t.Errorf("%s: stdout %q, stderr %q, want %q", tc.sql, r.stdout, r.stderr, want)
		}
	}
	r := cli(t, nil, "query", "-dir", dir, `SELECT type AS t, 1 AS a, 2 AS a FROM events`).want(t, exitOK)
	if want := "tenant  t       a  a\nacme    acme-0  1  2\n"; r.stdout != want {
		t.Errorf("table with repeated columns: %q, want %q", r.stdout, want)
	}
	// A column named like the tenant column is refused by the fan-out
	// itself, in either form: a mapper reading rows by name would take it
	// for the tenant.
	for _, json := range []string{"-json=false", "-json"} {
		r := cli(t, nil, "query", json, "-dir", dir, `SELECT type AS tenant FROM events`).want(t, exitFailed)
		if want := `column named "tenant", like the fan-out's own tenant column: alias it (AS ...)`; !strings.Contains(r.stderr, want) {
			t.Errorf("%s: stderr %q, want it to say %q", json, r.stderr, want)
		}
	}
	// Aliased, it prints.
	r = cli(t, nil, "query", "-json", "-dir", dir, `SELECT type AS t, 1 AS a, 2 AS b FROM events`).want(t, exitOK)
	if want := "[\n  {\"tenant\": \"acme\", \"t\": \"acme-0\", \"a\": 1, \"b\": 2}\n]\n"; r.stdout != want {
		t.Errorf("aliased: %q, want %q", r.stdout, want)
	}
}

// TestQueryJSONFailure: -json prints a valid array however the query
// fails: [] when it fails before any row, the rows so far after.
func TestQueryJSONFailure(t *testing.T) {
	t.Parallel()
	dir := fleet(t, migrationsDir(t, "0001_init.sql"), 1, "acme", "globex")
	for _, tc := range []struct {
		args   []string
		rows   int
		stderr string
	}{
		{[]string{"-tenants", "globex,aaa", `SELECT 1 AS x`}, 0, "sqliteproxy: query aaa: no such tenant\n"}, // tenants in ID order: aaa first
		{[]string{`SELECT * FROM nosuch`}, 0, "sqliteproxy: query acme: no such table: nosuch\n"},
		{[]string{`DELETE FROM events RETURNING id`}, 0, ""},
		{[]string{"-tenants", "acme,nope", `SELECT 1 AS x`}, 1, "sqliteproxy: query nope: no such tenant\n"},
	} {
		args := append([]string{"query", "-json", "-dir", dir}, tc.args...)
		r := cli(t, nil, args...).want(t, exitFailed)
		var got []map[string]any
		if err := json.Unmarshal([]byte(r.stdout), &got); err != nil || len(got) != tc.rows {
			t.Errorf("%v: stdout %q (%v), want an array of %d", tc.args, r.stdout, err, tc.rows)
		}
		if tc.rows == 0 && r.stdout != "[]\n" {
			t.Errorf("%v: stdout %q, want []", tc.args, r.stdout)
		}
		if tc.stderr != "" && r.stderr != tc.stderr {
			t.Errorf("%v: stderr %q, want %q", tc.args, r.stderr, tc.stderr)
		}
	}
}

// A tenant's text cannot draw rows of the table for another tenant: a
// value with a newline, a tab, an escape sequence or a bidirectional
// control is shown Go-quoted on its own row; -json keeps it as it is.
func TestQueryTableQuotesControls(t *testing.T) {
	t.Parallel()
	mdir := migrationsDir(t, "0001_init.sql")
	dir := fleet(t, mdir, 1, "attacker")
	r := cli(t, nil, "query", "-dir", dir, `SELECT char(111,107,10,118,105,99,116,105,109,9,50) AS body, '"q' AS q, 'plain text' AS p`).want(t, exitOK)
	want := "tenant    body             q      p\nattacker  \"ok\\nvictim\\t2\"  \"\\\"q\"  plain text\n"
	if r.stdout != want {
		t.Errorf("table:\n%s\nwant:\n%s", r.stdout, want)
	}
	r = cli(t, nil, "query", "-dir", dir, `SELECT char(27) || '[2K' || char(8238) || 'x' AS e`).want(t, exitOK)
	if want := "tenant    e\nattacker  \"\\x1b[2K\\u202ex\"\n"; r.stdout != want {
		t.Errorf("escape and bidi control:\n%q\nwant\n%q", r.stdout, want)
	}
	r = cli(t, nil, "query", "-dir", dir, `SELECT CAST(x'41429b33' AS TEXT) AS e`).want(t, exitOK)
	if want := "tenant    e\nattacker  \"AB\\x9b3\"\n"; r.stdout != want {
		t.Errorf("a byte that is not UTF-8:\n%q\nwant\n%q", r.stdout, want)
	}
	// Text that reads as a NULL or a BLOB is quoted; those values are not.
	r = cli(t, nil, "query", "-dir", dir, `SELECT 'NULL' AS a, NULL AS b, 'x''00ff''' AS c, x'00ff' AS d`).want(t, exitOK)
	if want := "tenant    a       b     c          d\nattacker  \"NULL\"  NULL  \"x'00ff'\"  x'00ff'\n"; r.stdout != want {
		t.Errorf("text like NULL and a BLOB:\n%q\nwant\n%q", r.stdout, want)
	}
	r = cli(t, nil, "query", "-json", "-dir", dir, `SELECT char(111,107,10,27) AS body`).want(t, exitOK)
	var got []map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil || len(got) != 1 || got[0]["body"] != "ok\n\x1b" {
		t.Errorf("-json: %q, %v", r.stdout, err)
	}
}
