// Command benchtable turns `benchstat -col /impl -format csv` output into
// the markdown table of the README: one row per benchmark, the median time
// of each implementation as benchstat computed it, and the proxy's ratio to
// each mattn configuration. Only the first table (sec/op) is used.
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
	table, err := firstTable(in)
	if err != nil {
		return err
	}
	if len(table) < 3 {
		return fmt.Errorf("no sec/op table in the input")
	}
	// Row 0: implementation names over their column groups; row 1: units.
	impls := map[string]int{}
	for i, name := range table[0] {
		if name != "" && i < len(table[1]) && table[1][i] == "sec/op" {
			impls[name] = i
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
		fmt.Fprintf(out, "| %s | %s | %s | %s | %s | %s |\n", strings.TrimSuffix(row[0], trim),
			dur(d, dok), dur(s, sok), dur(p, pok), ratio(p, d, pok && dok), ratio(p, s, pok && sok))
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

// firstTable reads CSV records up to the first blank line.
func firstTable(in io.Reader) ([][]string, error) {
	var lines []string
	sc := bufio.NewScanner(in)
	started := false
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, ",") {
			started = true
		}
		if !started {
			continue // goos:, pkg:, ... header lines
		}
		if strings.TrimSpace(line) == "" {
			break
		}
		lines = append(lines, line)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	r := csv.NewReader(strings.NewReader(strings.Join(lines, "\n")))
	r.FieldsPerRecord = -1
	return r.ReadAll()
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
