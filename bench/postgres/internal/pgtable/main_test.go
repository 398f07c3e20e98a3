package main

import (
	"os"
	"strings"
	"testing"
)

func TestRun(t *testing.T) {
	in, err := os.Open("testdata/bench.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	var out strings.Builder
	if err := run(in, &out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		// medians of two runs; ratio of the medians
		"| Insert | FULL / on | 2500 | 2120 | 1.18 | 245 µs / 2.7 ms | 348 µs / 2.6 ms | 0, 0.25 |",
		"| WorkingSet | NORMAL / off | 413 | 2106 | 0.20 |",
		"| … writes | | 138 | 702 | 0.20 | 4.5 ms / 4.5 ms | 1.4 ms / 1.4 ms | |",
		"| WorkingSet (proxy-max500) | NORMAL / off | 827 | 2106 | 0.39 |",
		"One PostgreSQL round trip through the same pool (SELECT 1, no transaction): 32863 ops/s, p50 / p99 24 µs / 104 µs.",
		"| delete | FULL / on | 1.43ms | 66.65ms | 0.02 | 365 kB | 978 kB | VACUUM 8 ms; freed 598 kB of 978 kB (proxy: 397 kB) |",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks\n%s\n--- output:\n%s", want, out.String())
		}
	}
	if err := run(strings.NewReader("PASS\n"), &out); err == nil {
		t.Error("no results: no error")
	}
}

// Runs at several GOMAXPROCS stay apart: their median was a number no run
// produced (100k and 300k ops/s made one row of 200k).
func TestRun_SeveralCPUs(t *testing.T) {
	const in = `BenchmarkWriters8/sync=full/impl=proxy          	1	100 ns/op	100000 ok-ops/s
BenchmarkWriters8/sync=full/impl=postgres       	1	100 ns/op	10000 ok-ops/s
BenchmarkWriters8/sync=full/impl=proxy-4        	1	100 ns/op	300000 ok-ops/s
BenchmarkWriters8/sync=full/impl=postgres-4     	1	100 ns/op	40000 ok-ops/s
`
	var out strings.Builder
	if err := run(strings.NewReader(in), &out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"| Writers8 (GOMAXPROCS 1) | FULL / on | 100000 | 10000 | 10.00 |",
		"| Writers8 (GOMAXPROCS 4) | FULL / on | 300000 | 40000 | 7.50 |",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks\n%s\n--- output:\n%s", want, out.String())
		}
	}
}
