package sqlscan

import (
	"slices"
	"testing"
)

func TestScan(t *testing.T) {
	tests := []struct {
		sql  string
		want Info
	}{
		{"", Info{}},
		{"  -- only a comment\n", Info{}},
		{"SELECT 1", Info{Keyword: "SELECT"}},
		{"select 1;", Info{Keyword: "SELECT"}},
		{"select 1; ;  -- trailing\n /* c */", Info{Keyword: "SELECT", Trailing: true}},
		{"select 1; \n\t", Info{Keyword: "SELECT"}},
		{"insert into t values (1) -- no semicolon\n", Info{Keyword: "INSERT"}},
		{"/* lead */ with x as (select 1) select * from x", Info{Keyword: "WITH"}},
		{"insert into t values (1); insert into t values (2)", Info{Keyword: "INSERT", Multi: true, Trailing: true}},
		{"select ';'", Info{Keyword: "SELECT"}},
		{"select 'it''s; fine'", Info{Keyword: "SELECT"}},
		{`select "a;b" from t`, Info{Keyword: "SELECT"}},
		{"select `a;b` from t", Info{Keyword: "SELECT"}},
		{"select [a;b] from t", Info{Keyword: "SELECT"}},
		{"select 1 -- ; not a separator\n", Info{Keyword: "SELECT"}},
		{"select 1 /* ; */ ", Info{Keyword: "SELECT"}},
		{"select 1; delete from t", Info{Keyword: "SELECT", Multi: true, Trailing: true}},
		{"begin", Info{Keyword: "BEGIN"}},
		{"select 'unterminated; delete", Info{Keyword: "SELECT"}},
		{"select 1 - 2; /* x */ update t set a=1", Info{Keyword: "SELECT", Multi: true, Trailing: true}},
		{"insert into t values (1) returning id", Info{Keyword: "INSERT", Returning: true}},
		{"SELECT last_insert_rowid()", Info{Keyword: "SELECT", Session: true}},
		{"select Changes (), 1", Info{Keyword: "SELECT", Session: true}},
		{"SELECT total_changes/* c */()", Info{Keyword: "SELECT", Session: true}},
		{"SELECT 'last_insert_rowid()' FROM changes", Info{Keyword: "SELECT"}},
		{`SELECT "last_insert_rowid"()`, Info{Keyword: "SELECT", Session: true}},
		{"SELECT `changes` ()", Info{Keyword: "SELECT", Session: true}},
		{"SELECT [total_changes]()", Info{Keyword: "SELECT", Session: true}},
		{`SELECT "changes" FROM t`, Info{Keyword: "SELECT"}},
		{"SELECT 'changes'()", Info{Keyword: "SELECT"}},
		{"SELECT changes FROM changes -- changes()", Info{Keyword: "SELECT"}},
		{"SELECT 1; SELECT changes()", Info{Keyword: "SELECT", Multi: true, Trailing: true}},
		{"DELETE FROM t RETURNING *; select 1", Info{Keyword: "DELETE", Multi: true, Returning: true, Trailing: true}},
		{"insert into t values ('returning') -- returning\n", Info{Keyword: "INSERT"}},
		{`update t set "returning" = 1`, Info{Keyword: "UPDATE"}},
		{"select 1; delete from t returning id", Info{Keyword: "SELECT", Multi: true, Trailing: true}},
		{"update notreturning set a = 1", Info{Keyword: "UPDATE"}},
		// Parameters as SQLite reads them: a Tcl-style suffix runs to ')' or
		// a blank, quotes and all.
		{"INSERT INTO t (v) VALUES ($x(')) RETURNING id", Info{Keyword: "INSERT", Returning: true}},
		// ?NNN is digits only: RETURNING right after it is a word of its own.
		{"UPDATE t SET n = ?1RETURNING id", Info{Keyword: "UPDATE", Returning: true}},
		{"UPDATE t SET n = ?RETURNING id", Info{Keyword: "UPDATE", Returning: true}},
		{"UPDATE t SET n = ?12 WHERE x = ?3returning", Info{Keyword: "UPDATE", Returning: true}},
		{"INSERT INTO t (v) VALUES (:x(;)) RETURNING id", Info{Keyword: "INSERT", Returning: true}},
		{"INSERT INTO t (v) VALUES (@x(--)) RETURNING id", Info{Keyword: "INSERT", Returning: true}},
		{"INSERT INTO t (v) VALUES ($a::b(/*)) RETURNING id", Info{Keyword: "INSERT", Returning: true}},
		{"INSERT INTO t (v) VALUES ($x([)); select 1", Info{Keyword: "INSERT", Multi: true, Trailing: true}},
		{"select :a, @b, $c, #d, ?1, ? ; delete from t", Info{Keyword: "SELECT", Multi: true, Trailing: true}},
		{"select $returning", Info{Keyword: "SELECT"}},
		{"select a$returning from t", Info{Keyword: "SELECT"}},
		{"select éreturning from t", Info{Keyword: "SELECT"}},
		{"select ':x(' , 'returning'", Info{Keyword: "SELECT"}},
		{"select $ 'a;b'", Info{Keyword: "SELECT"}},
		{"select $x(a b) ';' returning", Info{Keyword: "SELECT", Returning: true}},
		// A byte order mark (U+FEFF) is a blank where a token begins, as
		// SQLite's tokenizer reads it, and part of a word inside one.
		{"\uFEFFBEGIN", Info{Keyword: "BEGIN"}},
		{" \uFEFF\uFEFFsavepoint s", Info{Keyword: "SAVEPOINT"}},
		{"\uFEFF-- c\n\uFEFFbegin immediate", Info{Keyword: "BEGIN"}},
		{"INSERT INTO t (v) VALUES (1) \uFEFFRETURNING v", Info{Keyword: "INSERT", Returning: true}},
		{"INSERT INTO t (v) VALUES (1)\uFEFFRETURNING v", Info{Keyword: "INSERT", Returning: true}},
		{"SELECT \uFEFFchanges()", Info{Keyword: "SELECT", Session: true}},
		{"SELECT 1;\uFEFF", Info{Keyword: "SELECT", Trailing: true}},
		{"SELECT 1;\uFEFFBEGIN", Info{Keyword: "SELECT", Multi: true, Trailing: true}},
		{"select x\uFEFFreturning from t", Info{Keyword: "SELECT"}},
		{"select returning\uFEFF from t", Info{Keyword: "SELECT"}},
		{"\uFEFE", Info{}}, // another character: a word SQLite cannot parse
	}
	for _, tt := range tests {
		if got := Scan(tt.sql); got != tt.want {
			t.Errorf("Scan(%q) = %+v, want %+v", tt.sql, got, tt.want)
		}
	}
}

func FuzzScan(f *testing.F) {
	for _, s := range []string{"select 1; select 2", "select ';'", "/* */ -- \n", "[", "'", "a/*"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, sql string) {
		_ = Scan(sql) // must not panic or loop
	})
}

func TestEmpty(t *testing.T) {
	for sql, want := range map[string]bool{
		"": true, "  ": true, ";": true, " ; ;\n": true, "-- c": true, "/* c */ ;": true, "/* open": true,
		"SELECT 1": false, "; SELECT 1": false, "-- c\nx": false, "'str'": false, "(": false, "-": false,
	} {
		if got := Empty(sql); got != want {
			t.Errorf("Empty(%q) = %v, want %v", sql, got, want)
		}
	}
}

func TestTokens(t *testing.T) {
	for _, tt := range []struct {
		sql  string
		max  int
		want []string
	}{
		{"VACUUM", 4, []string{"VACUUM"}},
		{" -- c\nvacuum /* x */ main ;", 4, []string{"VACUUM", "MAIN", ";"}},
		{`VACUUM "ma""in"`, 4, []string{"VACUUM", `ma"in`}},
		{"VACUUM [main] INTO 'f.db'", 4, []string{"VACUUM", "main", "INTO", "'f.db"}},
		{"VACUUM `main`", 4, []string{"VACUUM", "main"}},
		{"PRAGMA main.optimize(0x10002)", 4, []string{"PRAGMA", "MAIN", ".", "OPTIMIZE"}},
		{"PRAGMA 'it''s'", 4, []string{"PRAGMA", "'it's"}},
		{"a b c d e", 2, []string{"A", "B"}},
		{"\fVACUUM\v", 4, []string{"VACUUM"}},
		{"[open", 4, []string{"open"}},
		// "==" is one token to SQLite, an "=".
		{"PRAGMA x == ''", 4, []string{"PRAGMA", "X", "=", "'"}},
		{"PRAGMA x=== 1", 5, []string{"PRAGMA", "X", "=", "=", "1"}},
		{"\uFEFFPRAGMA \uFEFFx = 1", 4, []string{"PRAGMA", "X", "=", "1"}},
		{"PRAGMA\uFEFFx", 4, []string{"PRAGMA\uFEFFX"}}, // one word to SQLite too
		{"", 4, nil},
	} {
		if got := Tokens(tt.sql, tt.max); !slices.Equal(got, tt.want) {
			t.Errorf("Tokens(%q, %d) = %q, want %q", tt.sql, tt.max, got, tt.want)
		}
	}
}

func FuzzTokens(f *testing.F) {
	for _, s := range []string{"VACUUM main", "[", "'", `"`, "a/*", "x.y"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, sql string) {
		if toks := Tokens(sql, 8); len(toks) > 8 {
			t.Fatalf("%d tokens", len(toks))
		}
	})
}
