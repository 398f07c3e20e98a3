// Command benchtable turns `benchstat -col /impl -format csv` output into
// the markdown table of the README: one row per benchmark, the median time
// of each implementation as benchstat computed it, and the proxy's ratio to
// each mattn configuration. It uses the sec/op table and, when there is one,
// the errors/op table of the concurrency benchmarks: a time whose attempts
// partly failed gets the failed share beside it, "49.9µs (13% failed)"
// (the time is per success; see bench_concurrency_test.go).
//
// Benchmarks without an impl (the proxy's own, and the paired ones, which
// time both sides within one sub-benchmark) sit in benchstat's unnamed
// column: their sec/op is the proxy's time, a mattn-ns/op metric mattn's,
// and x-mattn-defaults or x-mattn-same-dsn metrics are the ratios, measured
// in turn on the same machine.
//
//	benchstat -col /impl -format csv bench.txt | go run ./internal/benchtable
package main

import (
	"bufio"
	"encoding/csv"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"
)

func main() {
	if err := run(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "benchtable:", err)
		os.Exit(1)
	}
}

func run(in io.Reader, out io.Writer) error {
	tables, err := readTables(in)
	if err != nil {
		return err
	}
	table, impls := findTable(tables, "sec/op")
	if table == nil {
		return fmt.Errorf("no sec/op table in the input")
	}
	failed := map[string]map[string]float64{} // benchmark -> impl -> errors/op
	if et, eimpls := findTable(tables, "errors/op"); et != nil {
		for _, row := range et[2:] {
			if len(row) == 0 || row[0] == "" || row[0] == "geomean" {
				continue
			}
			for impl, i := range eimpls {
				if i < len(row) {
					if v, err := strconv.ParseFloat(row[i], 64); err == nil && v > 0 {
						if failed[row[0]] == nil {
							failed[row[0]] = map[string]float64{}
						}
						failed[row[0]][impl] = v
					}
				}
			}
		}
	}
	for _, want := range []string{"mattn-defaults", "mattn-same-dsn", "proxy"} {
		if _, ok := impls[want]; !ok && want != "mattn-defaults" {
			return fmt.Errorf("no %s column in the input", want)
		}
	}
	var rows [][]string
	for _, row := range table[2:] {
		if len(row) == 0 || row[0] == "" || row[0] == "geomean" {
			continue
		}
		rows = append(rows, row)
	}
	unnamedSec := unnamed(tables, "sec/op")
	pairedMattn := unnamed(tables, "mattn-sec/op")
	pairedRatio := map[string]map[string]float64{
		"mattn-defaults": unnamed(tables, "x-mattn-defaults"),
		"mattn-same-dsn": unnamed(tables, "x-mattn-same-dsn"),
	}
	trim := procsSuffix(rows)
	fmt.Fprintln(out, "| benchmark | mattn-defaults | mattn-same-dsn | proxy | proxy / mattn-defaults | proxy / mattn-same-dsn |")
	fmt.Fprintln(out, "|---|---:|---:|---:|---:|---:|")
	for _, row := range rows {
		get := func(impl string) (float64, bool) {
			i, ok := impls[impl]
			if !ok || i >= len(row) || row[i] == "" {
				return 0, false
			}
			v, err := strconv.ParseFloat(row[i], 64)
			return v, err == nil
		}
		d, dok := get("mattn-defaults")
		s, sok := get("mattn-same-dsn")
		p, pok := get("proxy")
		if !pok {
			p, pok = unnamedSec[row[0]]
		}
		if !dok && !sok && !pok {
			continue // another implementation's (impl=passthrough)
		}
		if !sok {
			s, sok = pairedMattn[row[0]]
		}
		ratioTo := func(impl string, v float64, ok bool) string {
			if x, ok := pairedRatio[impl][row[0]]; ok {
				return fmt.Sprintf("%.3f", x) // paired: precise enough for a third digit
			}
			return ratio(p, v, pok && ok)
		}
		cell := func(impl string, v float64, ok bool) string {
			c := dur(v, ok)
			if f := failed[row[0]][impl]; ok && f > 0 {
				c += fmt.Sprintf(" (%s%% failed)", strconv.FormatFloat(f*100, 'g', 2, 64))
			}
			return c
		}
		fmt.Fprintf(out, "| %s | %s | %s | %s | %s | %s |\n", strings.TrimSuffix(row[0], trim),
			cell("mattn-defaults", d, dok), cell("mattn-same-dsn", s, sok), cell("proxy", p, pok),
			ratioTo("mattn-defaults", d, dok), ratioTo("mattn-same-dsn", s, sok))
	}
	return nil
}

// procsSuffix returns the GOMAXPROCS suffix ("-8") that go test appended to
// every benchmark name, or "" when they do not all end in the same
// "-<digits>": with GOMAXPROCS=1 go test appends nothing, and a name may end
// in digits of its own ("Writers64/n-10"); with -cpu 1,2 the suffix is what
// tells rows apart.
func procsSuffix(rows [][]string) string {
	suffix := ""
	for i, row := range rows {
		j := strings.LastIndexByte(row[0], '-')
		if j < 0 || j == len(row[0])-1 || strings.Trim(row[0][j+1:], "0123456789") != "" {
			return ""
		}
		if i == 0 {
			suffix = row[0][j:]
		} else if row[0][j:] != suffix {
			return ""
		}
	}
	return suffix
}

// unnamed returns the values of unit in benchstat's unnamed column (the
// benchmarks without an impl) and in the proxy's (a paired benchmark named
// impl=proxy, whose metrics benchstat puts there), by benchmark.
func unnamed(tables [][][]string, unit string) map[string]float64 {
	out := map[string]float64{}
	for _, t := range tables {
		if len(t) < 3 {
			continue
		}
		for i, u := range t[1] {
			if u != unit || (i < len(t[0]) && t[0][i] != "" && t[0][i] != "proxy") {
				continue
			}
			for _, row := range t[2:] {
				if len(row) <= i || row[0] == "" || row[0] == "geomean" {
					continue
				}
				if v, err := strconv.ParseFloat(row[i], 64); err == nil {
					out[row[0]] = v
				}
			}
		}
	}
	return out
}

// findTable returns the first table whose units row has unit, with the
// column of that unit under each implementation. Row 0 of a table holds the
// implementation names over their column groups; row 1 the units.
func findTable(tables [][][]string, unit string) ([][]string, map[string]int) {
	for _, t := range tables {
		if len(t) < 3 {
			continue
		}
		impls := map[string]int{}
		for i, name := range t[0] {
			if name != "" && i < len(t[1]) && t[1][i] == unit {
				impls[name] = i
			}
		}
		if len(impls) > 0 {
			return t, impls
		}
	}
	return nil, nil
}

// readTables reads the CSV tables of benchstat's output, which blank lines
// separate, after the goos:, pkg:, ... header lines.
func readTables(in io.Reader) ([][][]string, error) {
	var tables [][][]string
	var lines []string
	flush := func() error {
		if len(lines) == 0 {
			return nil
		}
		r := csv.NewReader(strings.NewReader(strings.Join(lines, "\n")))
		r.FieldsPerRecord = -1
		t, err := r.ReadAll()
		if err != nil {
			return err
		}
		tables = append(tables, t)
		lines = nil
		return nil
	}
	sc := bufio.NewScanner(in)
	started := false
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, ",") {
			started = true
		}
		if !started {
			continue
		}
		if strings.TrimSpace(line) == "" {
			if err := flush(); err != nil {
				return nil, err
			}
			continue
		}
		lines = append(lines, line)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if err := flush(); err != nil {
		return nil, err
	}
	return tables, nil
}

func dur(sec float64, ok bool) string {
	if !ok {
		return "—"
	}
	return time.Duration(sec * float64(time.Second)).Round(time.Nanosecond).String()
}

func ratio(a, b float64, ok bool) string {
	if !ok || b == 0 {
		return "—"
	}
	return fmt.Sprintf("%.2f", a/b)
}
