// Command pgtable turns the output of `go test -bench` in bench/postgres
// (any -count) into the README's markdown tables: for each workload and
// durability pairing the median of each metric over the runs, side by side
// for the proxy and PostgreSQL; then the tenant operations (delete, backup,
// restore) with their times and bytes.
//
//	go run ./internal/pgtable < bench-postgres.txt
package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

func main() {
	if err := run(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "pgtable:", err)
		os.Exit(1)
	}
}

// row is one benchmark without its impl: name plus the other keys.
type row struct {
	name string // Insert, TenantLifecycle, ...
	op   string // op= of TenantLifecycle
	sync string // full, normal
	cpu  int    // GOMAXPROCS (go test's -N suffix; 1 without one)
}

// results: row -> impl -> unit -> values (one per run).
type results struct {
	order []row
	m     map[row]map[string]map[string][]float64
	impls map[row][]string // in order of appearance
}

func parse(in io.Reader) (*results, error) {
	res := &results{m: map[row]map[string]map[string][]float64{}, impls: map[row][]string{}}
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") {
			continue
		}
		name, cpu := f[0], 1
		if i := strings.LastIndexByte(name, '-'); i > 0 {
			if n, err := strconv.Atoi(name[i+1:]); err == nil {
				name, cpu = name[:i], n // the GOMAXPROCS suffix
			}
		}
		parts := strings.Split(strings.TrimPrefix(name, "Benchmark"), "/")
		r := row{name: parts[0], cpu: cpu}
		impl := ""
		for _, p := range parts[1:] {
			k, v, _ := strings.Cut(p, "=")
			switch k {
			case "impl":
				impl = v
			case "op":
				r.op = v
			case "sync":
				r.sync = v
			}
		}
		if impl == "" {
			continue
		}
		if res.m[r] == nil {
			res.m[r] = map[string]map[string][]float64{}
			res.order = append(res.order, r)
		}
		if res.m[r][impl] == nil {
			res.m[r][impl] = map[string][]float64{}
			res.impls[r] = append(res.impls[r], impl)
		}
		// f[1] is b.N; then value-unit pairs.
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				return nil, fmt.Errorf("%s: %q: %v", f[0], f[i], err)
			}
			res.m[r][impl][f[i+1]] = append(res.m[r][impl][f[i+1]], v)
		}
	}
	return res, sc.Err()
}

// median of the metric unit of impl on r, and whether there is one.
func (res *results) median(r row, impl, unit string) (float64, bool) {
	vs := slices.Clone(res.m[r][impl][unit])
	if len(vs) == 0 {
		return 0, false
	}
	slices.Sort(vs)
	if len(vs)%2 == 1 {
		return vs[len(vs)/2], true
	}
	return (vs[len(vs)/2-1] + vs[len(vs)/2]) / 2, true
}

var durability = map[string]string{"full": "FULL / on", "normal": "NORMAL / off"}

func run(in io.Reader, out io.Writer) error {
	res, err := parse(in)
	if err != nil {
		return err
	}
	if len(res.order) == 0 {
		return fmt.Errorf("no benchmark results in the input")
	}
	w := func(format string, a ...any) { fmt.Fprintf(out, format, a...) }
	// Runs at several GOMAXPROCS (-cpu 1,4) stay apart, each named with it:
	// a median across them was a number no run produced.
	cpus := map[int]bool{}
	for _, r := range res.order {
		cpus[r.cpu] = true
	}
	named := func(r row, name string) string {
		if len(cpus) > 1 {
			return fmt.Sprintf("%s (GOMAXPROCS %d)", name, r.cpu)
		}
		return name
	}
	get := func(r row, impl, unit string, format func(float64) string) string {
		if v, ok := res.median(r, impl, unit); ok {
			return format(v)
		}
		return "—"
	}
	ops := func(v float64) string { return strconv.FormatFloat(v, 'f', 0, 64) }
	us := func(v float64) string {
		if v >= 1000 {
			return fmt.Sprintf("%.1f ms", v/1000)
		}
		return fmt.Sprintf("%.0f µs", v)
	}
	errs := func(v float64) string { return strconv.FormatFloat(v, 'g', 3, 64) }
	lat := func(r row, impl, prefix string) string {
		return get(r, impl, prefix+"p50-µs", us) + " / " + get(r, impl, prefix+"p99-µs", us)
	}
	ratio := func(r row, impl, unit string) string {
		p, ok1 := res.median(r, impl, unit)
		q, ok2 := res.median(r, "postgres", unit)
		if !ok1 || !ok2 || q == 0 {
			return "—"
		}
		return fmt.Sprintf("%.2f", p/q)
	}

	w("| workload | sync: proxy / PostgreSQL | proxy ops/s | PostgreSQL ops/s | proxy / PostgreSQL | proxy p50 / p99 | PostgreSQL p50 / p99 | errors/op (proxy, PostgreSQL) |\n")
	w("|---|---|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range res.order {
		if r.op != "" {
			continue
		}
		// The proxy, then its variants (impl=proxy-...), each beside PostgreSQL.
		for _, impl := range res.impls[r] {
			if impl != "proxy" && !strings.HasPrefix(impl, "proxy-") {
				continue
			}
			label := named(r, r.name)
			if impl != "proxy" {
				label += " (" + impl + ")"
			}
			w("| %s | %s | %s | %s | %s | %s | %s | %s, %s |\n", label, durability[r.sync],
				get(r, impl, "ok-ops/s", ops), get(r, "postgres", "ok-ops/s", ops), ratio(r, impl, "ok-ops/s"),
				lat(r, impl, ""), lat(r, "postgres", ""),
				get(r, impl, "errors/op", errs), get(r, "postgres", "errors/op", errs))
			for _, kind := range []string{"reads", "writes"} {
				if _, ok := res.median(r, impl, kind+"-ok-ops/s"); !ok {
					continue
				}
				p := kind + "-"
				w("| … %s | | %s | %s | %s | %s | %s | |\n", kind,
					get(r, impl, p+"ok-ops/s", ops), get(r, "postgres", p+"ok-ops/s", ops), ratio(r, impl, p+"ok-ops/s"),
					lat(r, impl, p), lat(r, "postgres", p))
			}
		}
	}

	for _, r := range res.order {
		if r.name == "RoundTrip" {
			w("\nOne PostgreSQL round trip through the same pool (SELECT 1, no transaction): %s ops/s, p50 / p99 %s.\n",
				get(r, "postgres", "ok-ops/s", ops), lat(r, "postgres", ""))
		}
	}

	var life []row
	for _, r := range res.order {
		if r.op != "" {
			life = append(life, r)
		}
	}
	if len(life) == 0 {
		return nil
	}
	dur := func(ns float64) string { return time.Duration(ns).Round(10 * time.Microsecond).String() }
	kb := func(v float64) string { return fmt.Sprintf("%.0f kB", v/1000) }
	w("\n| one tenant | sync | proxy time | PostgreSQL time | proxy / PostgreSQL (time) | proxy bytes | PostgreSQL bytes | PostgreSQL after delete: VACUUM, space freed |\n")
	w("|---|---|---:|---:|---:|---:|---:|---|\n")
	for _, r := range life {
		extra := ""
		if v, ok := res.median(r, "postgres", "vacuum-ms/op"); ok {
			extra = fmt.Sprintf("VACUUM %.0f ms; freed %s of %s (proxy: %s)", v,
				get(r, "postgres", "freed-bytes/op", kb), get(r, "postgres", "bytes/op", kb), get(r, "proxy", "freed-bytes/op", kb))
		}
		w("| %s | %s | %s | %s | %s | %s | %s | %s |\n", named(r, r.op), durability[r.sync],
			get(r, "proxy", "ns/op", dur), get(r, "postgres", "ns/op", dur), ratio(r, "proxy", "ns/op"),
			get(r, "proxy", "bytes/op", kb), get(r, "postgres", "bytes/op", kb), extra)
	}
	return nil
}
