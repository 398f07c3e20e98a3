// Package sqlscan is a minimal SQLite tokenizer: just enough to find where
// the first statement of a text ends and which keyword begins it, without a
// database connection. It follows SQLite's lexical rules for quoting
// ('str', "ident", `ident`, [ident]) and comments (-- and /* */).
package sqlscan

import (
	"iter"
	"strings"
)

// Info describes a SQL text.
type Info struct {
	// Keyword is the first word of the first statement, upper-cased
	// ("SELECT", "WITH", "INSERT", ...); empty when the text holds no statement.
	Keyword string
	// Multi reports whether anything other than blanks, comments and
	// semicolons follows the first statement. Statements whose body contains
	// semicolons (CREATE TRIGGER) also report true: callers use Multi to
	// decide conservatively.
	Multi bool
	// Trailing reports whether anything other than white space (as
	// strings.TrimSpace sees it) follows the ';' that ends the first
	// statement: a comment, another ';', another statement. mattn runs such
	// a tail as statements of their own (a blank one reports 0 rows
	// affected), so only a text without one is a single prepared statement.
	Trailing bool
	// Returning reports whether the first statement has the word RETURNING
	// outside quotes and comments (INSERT/UPDATE/DELETE ... RETURNING: a
	// write that returns rows). A column named returning also reports true.
	Returning bool
	// Session reports whether the first statement calls last_insert_rowid(),
	// changes() or total_changes() (outside quotes and comments): functions
	// that answer about the connection's own earlier writes.
	Session bool
}

// Scan describes sql.
func Scan(sql string) Info {
	var info Info
	i := skipSpace(sql, 0)
	start := i
	for i < len(sql) && isWordByte(sql[i]) {
		i++
	}
	info.Keyword = strings.ToUpper(sql[start:i])
	end, ok, returning, session := statementEnd(sql, i)
	info.Returning, info.Session = returning, session
	if !ok {
		return info
	}
	info.Trailing = strings.TrimSpace(sql[end:]) != ""
	for j := end; j < len(sql); {
		j = skipSpace(sql, j)
		if j >= len(sql) {
			break
		}
		if sql[j] == ';' {
			j++
			continue
		}
		info.Multi = true
		break
	}
	return info
}

// Statements yields the statements of sql one by one, each with its ';'
// (the last without one when none ends it), as Scan splits them: quotes
// and comments kept whole, but a CREATE TRIGGER's body split at its own
// semicolons (good enough for callers that look at a statement's first
// words: no PRAGMA, BEGIN or ATTACH may stand in a trigger's body).
func Statements(sql string) iter.Seq[string] {
	return func(yield func(string) bool) {
		for i := 0; i < len(sql); {
			end, _, _, _ := statementEnd(sql, i)
			if !yield(sql[i:end]) {
				return
			}
			i = end
		}
	}
}

// statementEnd returns the index just past the first top-level ';' at or
// after i, whether there was one, and whether the word RETURNING, or a call
// of a session function (Info.Session), came first.
func statementEnd(sql string, i int) (end int, ok, returning, session bool) {
	for i < len(sql) {
		switch c := sql[i]; c {
		case ';':
			return i + 1, true, returning, session
		case '\'', '"', '`':
			start := i
			i = skipQuoted(sql, i, c)
			if c != '\'' && !session && i-start >= 2 && sessionFunc(sql[start+1:i-1]) {
				session = calls(sql, i) // "changes"(): a quoted name called
			}
		case '[':
			j := strings.IndexByte(sql[i:], ']')
			if j < 0 {
				return len(sql), false, returning, session
			}
			if !session && sessionFunc(sql[i+1:i+j]) {
				session = calls(sql, i+j+1)
			}
			i += j + 1
		case '-', '/':
			if j := skipComment(sql, i); j > i {
				i = j
			} else {
				i++
			}
		case '$', '@', ':', '#':
			i = skipVariable(sql, i)
		case '?':
			// ?NNN is one token, digits only: "?1RETURNING" is ?1 and then
			// RETURNING, as SQLite reads it (read as one word, a prepared
			// write kept active on the writer, its transaction never
			// committed).
			for i++; i < len(sql) && sql[i] >= '0' && sql[i] <= '9'; i++ {
			}
		default:
			if isBOM(sql, i) {
				i += len(bom) // a blank where a token begins, as SQLite reads it
				continue
			}
			if !isIDByte(c) {
				i++
				continue
			}
			start := i
			for i < len(sql) && (isIDByte(sql[i]) || sql[i] == '$') {
				i++
			}
			w := sql[start:i]
			returning = returning || strings.EqualFold(w, "RETURNING")
			if !session && sessionFunc(w) {
				session = calls(sql, i)
			}
		}
	}
	return len(sql), false, returning, session
}

// sessionFunc reports whether name is one of the functions Info.Session
// looks for.
func sessionFunc(name string) bool {
	return strings.EqualFold(name, "last_insert_rowid") || strings.EqualFold(name, "changes") || strings.EqualFold(name, "total_changes")
}

// calls reports whether a '(' follows i, past blanks and comments: the
// word before i is a function called.
func calls(sql string, i int) bool {
	j := skipSpace(sql, i)
	return j < len(sql) && sql[j] == '('
}

// skipVariable returns the index past a parameter starting at i ($name,
// @name, :name, #name) as SQLite's tokenizer reads it: identifier bytes and
// "::", and then a Tcl-style suffix "(...)" that ends at the first ')' or
// blank, whatever it holds ($x(') is one parameter, not a quote). Without a
// name it is one byte.
func skipVariable(sql string, i int) int {
	j, n := i+1, 0
scan:
	for j < len(sql) {
		switch c := sql[j]; {
		case isIDByte(c) || c == '$':
			n++
			j++
		case c == '(' && n > 0:
			for j++; j < len(sql) && !isBlank(sql[j]) && sql[j] != ')'; j++ {
			}
			if j < len(sql) && sql[j] == ')' {
				j++
			}
			return j
		case c == ':' && j+1 < len(sql) && sql[j+1] == ':':
			j += 2
		default:
			break scan
		}
	}
	if n == 0 {
		return i + 1
	}
	return j
}

// skipQuoted skips a quoted token starting at i; a doubled quote escapes it.
func skipQuoted(sql string, i int, q byte) int {
	for i++; i < len(sql); i++ {
		if sql[i] == q {
			if i+1 < len(sql) && sql[i+1] == q {
				i++
				continue
			}
			return i + 1
		}
	}
	return len(sql)
}

// skipComment returns the index past a comment starting at i, or i if none starts there.
func skipComment(sql string, i int) int {
	if strings.HasPrefix(sql[i:], "--") {
		if j := strings.IndexByte(sql[i:], '\n'); j >= 0 {
			return i + j + 1
		}
		return len(sql)
	}
	if strings.HasPrefix(sql[i:], "/*") {
		if j := strings.Index(sql[i+2:], "*/"); j >= 0 {
			return i + 2 + j + 2
		}
		return len(sql)
	}
	return i
}

// Empty reports whether sql holds no statement: only white space,
// comments and semicolons (SQLite prepares it as no statement at all).
func Empty(sql string) bool {
	for i := skipSpace(sql, 0); i < len(sql); i = skipSpace(sql, i) {
		if sql[i] != ';' {
			return false
		}
		i++
	}
	return true
}

func isBlank(c byte) bool {
	switch c {
	case ' ', '\t', '\n', '\r', '\f', '\v':
		return true
	}
	return false
}

// bom is U+FEFF in UTF-8, the byte order mark. SQLite's tokenizer reads
// it as white space wherever a token begins (CC_BOM), anywhere in a text,
// and as part of a word inside one: "\uFEFFBEGIN" is BEGIN, "x\uFEFFy" one
// name. Read as a word byte, it hid the first word of "\uFEFFBEGIN" (the
// writer went back to the pool inside the transaction it opened) and the
// RETURNING of "... \uFEFFRETURNING v" (adv49).
const bom = "\xEF\xBB\xBF"

// isBOM reports whether a byte order mark begins at sql[i].
func isBOM(sql string, i int) bool { return strings.HasPrefix(sql[i:], bom) }

// skipSpace returns the index of the first token at or after i: past
// blanks, byte order marks and comments.
func skipSpace(sql string, i int) int {
	for i < len(sql) {
		switch c := sql[i]; {
		case isBlank(c):
			i++
		case c == bom[0] && isBOM(sql, i):
			i += len(bom)
		case c == '-' || c == '/':
			j := skipComment(sql, i)
			if j == i {
				return i
			}
			i = j
		default:
			return i
		}
	}
	return i
}

func isWordByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' || c >= '0' && c <= '9'
}

// isIDByte reports whether c may be part of an identifier or a number as
// SQLite reads them (sqlite3IsIdChar, less '$', which may not begin one):
// every byte of a UTF-8 sequence is.
func isIDByte(c byte) bool { return isWordByte(c) || c >= 0x80 }

// Tokens returns up to max tokens of sql from its start, skipping blanks
// and comments: a word (an identifier or keyword, upper-cased), a quoted
// identifier ("x", [x], `x`: its name, as written), a string literal
// ('x': "'" and its text, as written), or any other byte. It is enough to read the few words
// of a statement such as "VACUUM main" or "PRAGMA main.optimize" however
// they are spelled.
func Tokens(sql string, max int) []string {
	var toks []string
	for i := skipSpace(sql, 0); i < len(sql) && len(toks) < max; i = skipSpace(sql, i) {
		switch c := sql[i]; {
		case isIDByte(c):
			j := i
			for j < len(sql) && isIDByte(sql[j]) {
				j++
			}
			toks = append(toks, strings.ToUpper(sql[i:j]))
			i = j
		case c == '"' || c == '`':
			j := skipQuoted(sql, i, c)
			name := strings.TrimSuffix(sql[i+1:j], string(c))
			toks = append(toks, strings.ReplaceAll(name, string([]byte{c, c}), string(c)))
			i = j
		case c == '[':
			j := strings.IndexByte(sql[i:], ']')
			if j < 0 { // unterminated: the rest
				toks = append(toks, sql[i+1:])
				i = len(sql)
				continue
			}
			toks = append(toks, sql[i+1:i+j])
			i += j + 1
		case c == '\'':
			j := skipQuoted(sql, i, c)
			toks = append(toks, "'"+strings.ReplaceAll(strings.TrimSuffix(sql[i+1:j], "'"), "''", "'"))
			i = j
		case c == '=':
			// "==" is one token to SQLite, an "=" (adv51: PRAGMA x == ''
			// read as the value "=").
			toks = append(toks, "=")
			i++
			if i < len(sql) && sql[i] == '=' {
				i++
			}
		default:
			toks = append(toks, string(c))
			i++
		}
	}
	return toks
}
