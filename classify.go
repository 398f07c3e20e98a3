package sqliteproxy

import (
	"strings"
	"sync"
	"sync/atomic"

	"github.com/sqliteproxy/sqliteproxy/internal/sqlscan"
)

// classCache remembers, by SQL text, whether a query may run on a reader.
// The verdict depends only on the text (sqlite3_stmt_readonly and the
// statement count), so it is shared by all tenants. It is bounded, so that
// applications that build SQL with literals (or send long texts) cannot
// grow it without limit: each text weighs its length
// plus classWeight, and when the weights pass maxClassWeight (~10 000
// short texts, or 8 MiB of SQL whatever the texts) it starts over. Texts
// longer than maxClassText are not kept (classified again each time).
type classCache struct {
	m sync.Map // string -> bool (true: read-only)
	n atomic.Int64
}

const (
	classWeight    = 800
	maxClassWeight = 8 << 20
	maxClassText   = 64 << 10
)

func (c *classCache) lookup(query string) (readonly, ok bool) {
	v, ok := c.m.Load(query)
	if !ok {
		return false, false
	}
	return v.(bool), true
}

func (c *classCache) store(query string, readonly bool) {
	if len(query) > maxClassText {
		return
	}
	w := int64(len(query) + classWeight)
	if c.n.Add(w) > maxClassWeight {
		c.m.Clear()
		c.n.Store(w)
	}
	c.m.Store(query, readonly)
}

// mayOpenTx reports whether running query could leave its connection
// inside a transaction: its first word is BEGIN or SAVEPOINT, or it holds
// more than one statement. Conservative, and cheap for the usual text
// (one statement, no semicolon): the scanner runs only on texts with a
// semicolon or that do not start with a word.
func mayOpenTx(query string) bool {
	i, j := firstWord(query)
	if j == i {
		return opensTx(sqlscan.Scan(query)) // a comment first, or no statement
	}
	if w := query[i:j]; strings.EqualFold(w, "BEGIN") || strings.EqualFold(w, "SAVEPOINT") {
		return true
	}
	return strings.IndexByte(query[j:], ';') >= 0 && sqlscan.Scan(query).Multi
}

// firstWord returns where query's first word of ASCII letters, after
// blanks, begins and ends (i == j: it does not begin with one).
func firstWord(query string) (i, j int) {
	for i < len(query) && (query[i] == ' ' || query[i] == '\t' || query[i] == '\n' || query[i] == '\r') {
		i++
	}
	j = i
	for j < len(query) && (query[j]|0x20 >= 'a' && query[j]|0x20 <= 'z') {
		j++
	}
	return i, j
}

// mayCreateTemp reports whether query may create a TEMP object (see
// tenant.noteTemp): it begins with CREATE, or holds several statements.
func mayCreateTemp(query string) bool {
	i, j := firstWord(query)
	if j == i {
		return createsTemp(sqlscan.Scan(query)) // a comment first, or no statement
	}
	if strings.EqualFold(query[i:j], "CREATE") {
		return true
	}
	return strings.IndexByte(query[j:], ';') >= 0 && sqlscan.Scan(query).Multi
}

// createsTemp is mayCreateTemp for a text already scanned.
func createsTemp(info sqlscan.Info) bool { return info.Multi || info.Keyword == "CREATE" }

// opensTx is mayOpenTx for a text already scanned.
func opensTx(info sqlscan.Info) bool {
	return info.Multi || info.Keyword == "BEGIN" || info.Keyword == "SAVEPOINT"
}
