package main

import (
	"bytes"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/sqliteproxy/sqliteproxy"
)

// query: a read-only query fanned out over the tenants (sqliteproxy.WithFanOut).
func (e *env) query(args []string) (status int) {
	f := e.newFlags("query")
	list := f.String("tenants", "", "comma-separated `IDs` of the tenants to query (default: all)")
	asJSON := f.Bool("json", false, "print a JSON array of objects, one per row, keys in column order")
	conc := f.Int("concurrency", 0, "tenants queried at once (default: 4 x number of CPUs)")
	skip := f.Bool("skip-errors", false, "skip the tenants that fail (reported on stderr, exit status 1) instead of stopping")
	stale := f.Bool("stale", false, "read a cluster node's copies as they are (another node may own a tenant and have written it since)")
	pos, st, ok := e.parse(f, args, 1, 1)
	if !ok {
		return st
	}
	if *conc < 0 {
		return e.usageError(f, "-concurrency %d is negative", *conc)
	}
	var ids []string
	if f.isSet("tenants") {
		ids = []string{}
		for id := range strings.SplitSeq(*list, ",") {
			if id = strings.TrimSpace(id); id == "" {
				continue
			}
			if !e.checkID(f, id) {
				return exitUsage
			}
			ids = append(ids, id)
		}
	}
	// No migrations configured in MigrateAuto: nothing is checked or
	// applied (the tenants are read as they are), and nothing is created.
	p, st, ok := e.openWith(f, sqliteproxy.Config{ExplicitCreate: true})
	if !ok {
		return st
	}
	if !*stale {
		// A cluster node's copies (Ownership): a tenant moved away, or
		// taken by another node when this one stopped, was read here as
		// it was then, with nothing to say so.
		if id, n := clusterCopy(*f.dir, ids); n > 0 {
			p.Close()
			return e.usageError(f, "%s holds copies of a cluster node's tenants (%d, e.g. %s: .%s.db-gen), which another node may own and have written since: query them through a node (its fan-out brings each copy up to date first), or pass -stale to read them as they are here", *f.dir, n, id, id)
		}
	}
	defer e.closeProxy(p, &status)

	failed := false
	ctx := sqliteproxy.WithFanOut(e.ctx, sqliteproxy.FanOutOptions{
		Tenants: ids, Concurrency: *conc, SkipErrors: *skip,
		OnSkip: func(id string, err error) {
			failed = true
			e.tenantErr("query", id, unwrapFanOut(err))
		},
	})
	// A failure before the first row still prints a JSON array: empty.
	noRows := func(err error) int {
		if *asJSON {
			fmt.Fprintln(e.stdout, "[]")
		}
		e.queryErr(err)
		return exitFailed
	}
	rows, err := p.QueryContext(ctx, pos[0])
	if err != nil {
		return noRows(err)
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		return noRows(err)
	}
	// A JSON object with a key twice loses one of its values: refused
	// before any output. (A column named tenant the fan-out refuses.)
	if *asJSON {
		if dup, ok := duplicateColumn(cols); ok {
			e.errorf("query: column %q appears twice in the result: alias it (AS ...) for -json", dup)
			return exitUsage
		}
	}
	out := e.newRowPrinter(cols, *asJSON)
	vals := make([]any, len(cols))
	ptrs := make([]any, len(cols))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	for rows.Next() {
		if err := rows.Scan(ptrs...); err != nil {
			out.finish()
			e.queryErr(err)
			return exitFailed
		}
		out.row(vals)
	}
	out.finish()
	if err := rows.Err(); err != nil {
		if !e.interrupted() {
			e.queryErr(err)
		}
		return exitFailed
	}
	if failed {
		return exitFailed
	}
	return exitOK
}

// duplicateColumn returns a column name that cols holds twice, if any.
func duplicateColumn(cols []string) (string, bool) {
	seen := make(map[string]bool, len(cols))
	for _, c := range cols {
		if seen[c] {
			return c, true
		}
		seen[c] = true
	}
	return "", false
}

// queryErr prints a failure of query: of one tenant, named, or of the query.
func (e *env) queryErr(err error) {
	var fe *sqliteproxy.FanOutError
	if errors.As(err, &fe) {
		e.tenantErr("query", fe.Tenant, fe.Err)
		return
	}
	e.errorf("query: %s", errText(err))
}

func unwrapFanOut(err error) error {
	var fe *sqliteproxy.FanOutError
	if errors.As(err, &fe) {
		return fe.Err
	}
	return err
}

// rowPrinter prints a query's rows as an aligned table (with a header
// line) or as a JSON array of objects.
type rowPrinter struct {
	e    *env
	cols []string
	json bool
	tw   *tabwriter.Writer
	n    int
}

func (e *env) newRowPrinter(cols []string, asJSON bool) *rowPrinter {
	p := &rowPrinter{e: e, cols: cols, json: asJSON}
	if !asJSON {
		p.tw = tabwriter.NewWriter(e.stdout, 0, 8, 2, ' ', 0)
		names := make([]string, len(cols))
		for i, c := range cols {
			names[i] = printable(c)
		}
		fmt.Fprintln(p.tw, strings.Join(names, "\t"))
	}
	return p
}

func (p *rowPrinter) row(vals []any) {
	defer func() { p.n++ }()
	if !p.json {
		cells := make([]string, len(vals))
		for i, v := range vals {
			cells[i] = cellText(v)
		}
		fmt.Fprintln(p.tw, strings.Join(cells, "\t"))
		return
	}
	var b bytes.Buffer
	if p.n == 0 {
		b.WriteString("[\n  {")
	} else {
		b.WriteString(",\n  {")
	}
	for i, v := range vals {
		if i > 0 {
			b.WriteString(", ")
		}
		k, _ := json.Marshal(p.cols[i])
		b.Write(k)
		b.WriteString(": ")
		if s, ok := v.([]byte); ok && utf8.Valid(s) {
			v = string(s)
		}
		j, err := json.Marshal(v)
		if err != nil {
			j, _ = json.Marshal(fmt.Sprint(v))
		}
		b.Write(j)
	}
	b.WriteString("}")
	p.e.stdout.Write(b.Bytes())
}

// finish ends the output: flushes the table, closes the JSON array.
func (p *rowPrinter) finish() {
	if !p.json {
		p.tw.Flush()
		return
	}
	if p.n == 0 {
		fmt.Fprintln(p.e.stdout, "[]")
		return
	}
	fmt.Fprintln(p.e.stdout, "\n]")
}

// cellText renders a value for the table.
func cellText(v any) string {
	switch v := v.(type) {
	case nil:
		return "NULL"
	case []byte:
		if utf8.Valid(v) {
			return printable(string(v))
		}
		return fmt.Sprintf("x'%x'", v)
	case time.Time:
		return v.Format(time.RFC3339Nano)
	case float64:
		return strconv.FormatFloat(v, 'g', -1, 64)
	case sql.RawBytes:
		return printable(string(v))
	case string:
		return printable(v)
	}
	return fmt.Sprint(v)
}

// printable returns s for one cell of the table, Go-quoted when it holds
// what a terminal or the table would act on (a newline or a tab would
// start a row or a column of another tenant's; escape sequences, bytes
// that are not UTF-8 such as 0x9b, an 8-bit terminal's control sequence
// introducer, and bidirectional controls rewrite what is shown), starts
// with a quote, or reads as another kind of value: the text NULL showed as
// a NULL, and x'00ff' as that BLOB.
func printable(s string) string {
	if strings.HasPrefix(s, `"`) || strings.EqualFold(s, "NULL") || len(s) > 1 && (s[0]|0x20) == 'x' && s[1] == '\'' ||
		!utf8.ValidString(s) || strings.ContainsFunc(s, func(r rune) bool { return !strconv.IsPrint(r) }) {
		return strconv.Quote(s)
	}
	return s
}

// clusterCopy returns one of the tenants in dir (of ids; nil: any) whose
// file is a cluster node's copy (a generation marker, .<id>.db-gen, beside
// it, written by a proxy with Ownership), and how many there are.
func clusterCopy(dir string, ids []string) (string, int) {
	want := map[string]bool{}
	for _, id := range ids {
		want[id] = true
	}
	first, n := "", 0
	look := func(d string) {
		ents, err := os.ReadDir(d)
		if err != nil {
			return
		}
		for _, e := range ents {
			base, ok := strings.CutSuffix(e.Name(), ".db-gen")
			if !ok || !strings.HasPrefix(base, ".") {
				continue
			}
			id := base[1:]
			if ids != nil && !want[id] {
				continue
			}
			if _, err := os.Lstat(filepath.Join(d, id+".db")); err != nil {
				continue // the marker of a tenant deleted here: no copy to read
			}
			if n == 0 {
				first = id
			}
			n++
		}
	}
	look(dir)
	if ents, err := os.ReadDir(dir); err == nil {
		for _, e := range ents {
			if e.IsDir() && len(e.Name()) == 2 && strings.Trim(e.Name(), "0123456789abcdef") == "" {
				look(filepath.Join(dir, e.Name())) // a bucket (LayoutBuckets)
			}
		}
	}
	return first, n
}
