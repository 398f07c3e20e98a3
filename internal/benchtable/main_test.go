package main

import (
	"strings"
	"testing"
)

const sample = `goos: linux
pkg: github.com/sqliteproxy/sqliteproxy
,mattn-defaults,,mattn-same-dsn,,,,proxy,,,
,sec/op,CI,sec/op,CI,vs base,P,sec/op,CI,vs base,P
Insert-2,2e-05,1%,1e-05,1%,-50%,p=0.002 n=6,1.1e-05,2%,-45%,p=0.002 n=6
Routing/op=exec-2,,,6e-07,1%,,,8e-07,1%,+33%,p=0.002 n=6
geomean,2e-05,,1e-05,,,,1.1e-05,,,

,mattn-defaults,,mattn-same-dsn
,B/op,CI,B/op
Insert-2,331,0%,155
`

func TestRun(t *testing.T) {
	var out strings.Builder
	if err := run(strings.NewReader(sample), &out); err != nil {
		t.Fatal(err)
	}
	want := `| benchmark | mattn-defaults | mattn-same-dsn | proxy | proxy / mattn-defaults | proxy / mattn-same-dsn |
|---|---:|---:|---:|---:|---:|
| Insert | 20µs | 10µs | 11µs | 0.55 | 1.10 |
| Routing/op=exec | — | 600ns | 800ns | — | 1.33 |
`
	if out.String() != want {
		t.Errorf("got\n%s\nwant\n%s", out.String(), want)
	}
}

// TestRunPaired, on real benchstat output (-col /impl) of the paired
// benchmarks: those without an impl fill the proxy column from the unnamed
// sec/op column, mattn-same-dsn from a paired mattn-sec/op metric, and the
// ratios from the paired x- metrics rather than dividing medians; those of
// impl=proxy (ColdOpenPaired) have their x- metrics in the proxy's column
// (the table lost them); those of another impl (RoutingFloorPaired's
// passthrough) are left out (they sat in the proxy column).
func TestRunPaired(t *testing.T) {
	const in = `goos: linux
goarch: amd64
pkg: github.com/sqliteproxy/sqliteproxy
cpu: AMD EPYC
,mattn-defaults,,mattn-same-dsn,,,,proxy,,,,,,,,passthrough,,,
,sec/op,CI,sec/op,CI,vs base,P,sec/op,CI,vs base,P,sec/op,CI,vs base,P,sec/op,CI,vs base,P
Insert-2,1.5712e-05,∞,1.1070500000000002e-05,∞,~,p=0.333 n=2,1.20185e-05,∞,~,p=0.333 n=2
ArticlePaired/row=Insert-2,,,,,,,,,,,1.2212500000000002e-05,∞
RoutingPaired-2,,,,,,,,,,,6.493e-07,∞
RoutingFloorPaired/op=exec-2,,,,,,,,,,,,,,,7.093999999999999e-07,∞
RoutingFloorPaired/op=single-query-2,,,,,,,,,,,,,,,3.837000000000001e-06,∞
ColdOpenPaired-2,,,,,,,0.001072849,∞
geomean,1.5712e-05,,1.1070500000000002e-05,,-29.54%,,0.0001135519075423218,,-23.51%,,2.8159503280420264e-06,,?,,1.6498387193904725e-06,,?,

,mattn-defaults,,mattn-same-dsn,,,,proxy,,,
,B/op,CI,B/op,CI,vs base,P,B/op,CI,vs base,P
Insert-2,320,∞,144,∞,~,p=0.333 n=2,145,∞,~,p=0.333 n=2
geomean,319.99999999999994,,144.00000000000003,,-55.00%,,144.99999999999997,,-54.69%,

,mattn-defaults,,mattn-same-dsn,,,,proxy,,,
,allocs/op,CI,allocs/op,CI,vs base,P,allocs/op,CI,vs base,P
Insert-2,7,∞,4,∞,~,p=0.333 n=2,4,∞,~,p=0.333 n=2
geomean,7,,4,,-42.86%,,4,,-42.86%,

,,,passthrough,,,
,mattn-sec/op,CI,mattn-sec/op,CI,vs base,P
ArticlePaired/row=Insert-2,1.23525e-05,∞
RoutingPaired-2,6.1795e-07,∞
RoutingFloorPaired/op=exec-2,,,1.0013500000000002e-06,∞
RoutingFloorPaired/op=single-query-2,,,3.9295e-06,∞
geomean,2.762829595722471e-06,,1.9836342467803904e-06,,?,

,proxy,,,,,,passthrough,,,
,x-mattn-same-dsn,CI,x-mattn-same-dsn,CI,vs base,P,x-mattn-same-dsn,CI,vs base,P
ArticlePaired/row=Insert-2,,,0.98865,∞
RoutingFloorPaired/op=exec-2,,,,,,,0.70215,∞
RoutingFloorPaired/op=single-query-2,,,,,,,0.9783000000000001,∞
ColdOpenPaired-2,0.6344,∞
geomean,0.6344,,0.98865,,?,,0.828802355812289,,?,

,,,passthrough,,,
,overhead-sec,CI,overhead-sec,CI,vs base,P
RoutingPaired-2,3.1360000000000004e-08,∞
RoutingFloorPaired/op=exec-2,,,-2.9195e-07,∞
RoutingFloorPaired/op=single-query-2,,,-9.240000000000001e-08,∞
geomean,3.135999999999998e-08,,,,?,

,proxy,
,x-mattn-defaults,CI
ColdOpenPaired-2,1.4405999999999999,∞
geomean,1.4405999999999999,
`
	var out strings.Builder
	if err := run(strings.NewReader(in), &out); err != nil {
		t.Fatal(err)
	}
	want := `| benchmark | mattn-defaults | mattn-same-dsn | proxy | proxy / mattn-defaults | proxy / mattn-same-dsn |
|---|---:|---:|---:|---:|---:|
| Insert | 15.712µs | 11.07µs | 12.018µs | 0.76 | 1.09 |
| ArticlePaired/row=Insert | — | 12.352µs | 12.212µs | — | 0.989 |
| RoutingPaired | — | 617ns | 649ns | — | 1.05 |
| ColdOpenPaired | — | — | 1.072849ms | 1.441 | 0.634 |
`
	if out.String() != want {
		t.Errorf("got\n%s\nwant\n%s", out.String(), want)
	}
}

// TestProcsSuffix: the GOMAXPROCS suffix is stripped whatever the core count,
// and only when every row has the same one.
func TestProcsSuffix(t *testing.T) {
	for _, tc := range []struct {
		name  string
		names []string
		want  []string
	}{
		{"8 cores", []string{"Insert-8", "Writers64/op=insert/sync=FULL-8"}, []string{"Insert", "Writers64/op=insert/sync=FULL"}},
		{"4 cores, digits inside names", []string{"Writers64/op=insert-4", "Mixed/readers=8/writers=2-4"}, []string{"Writers64/op=insert", "Mixed/readers=8/writers=2"}},
		{"16 cores", []string{"Insert-16"}, []string{"Insert"}},
		{"GOMAXPROCS=1: no suffix", []string{"Insert", "Writers64/op=insert"}, []string{"Insert", "Writers64/op=insert"}},
		{"GOMAXPROCS=1, a name ending in -digits", []string{"Insert", "Size/n-10"}, []string{"Insert", "Size/n-10"}},
		{"-cpu 2,4: suffixes differ", []string{"Insert-2", "Insert-4"}, []string{"Insert-2", "Insert-4"}},
		{"trailing dash", []string{"Insert-"}, []string{"Insert-"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var in strings.Builder
			in.WriteString(",mattn-same-dsn,,proxy,,,\n,sec/op,CI,sec/op,CI,vs base,P\n")
			for _, n := range tc.names {
				in.WriteString(n + ",1e-06,1%,2e-06,1%,+100%,p=0.002 n=6\n")
			}
			var out strings.Builder
			if err := run(strings.NewReader(in.String()), &out); err != nil {
				t.Fatal(err)
			}
			lines := strings.Split(strings.TrimSpace(out.String()), "\n")[2:]
			if len(lines) != len(tc.want) {
				t.Fatalf("got %d rows, want %d:\n%s", len(lines), len(tc.want), out.String())
			}
			for i, line := range lines {
				if got := strings.Split(line, " | ")[0]; got != "| "+tc.want[i] {
					t.Errorf("row %d: got %q, want %q", i, strings.TrimPrefix(got, "| "), tc.want[i])
				}
			}
		})
	}
}

// TestRunFailed: a time whose attempts partly failed (errors/op > 0) carries
// the failed share; zero and absent error rates add nothing.
func TestRunFailed(t *testing.T) {
	const in = `goos: linux
,mattn-defaults,,mattn-same-dsn,,,,proxy,,,
,sec/op,CI,sec/op,CI,vs base,P,sec/op,CI,vs base,P
Writers8/op=tx/sync=FULL-8,4e-03,∞,6e-04,∞,~,p=0.333 n=2,2e-04,∞,~,p=0.333 n=2
Insert-8,2e-05,1%,1e-05,1%,-50%,p=0.002 n=6,1.1e-05,2%,-45%,p=0.002 n=6
geomean,2e-05,,1e-05,,,,1.1e-05,,,

,mattn-defaults,,mattn-same-dsn,,,,proxy,,,
,errors/op,CI,errors/op,CI,vs base,P,errors/op,CI,vs base,P
Writers8/op=tx/sync=FULL-8,0.1325,∞,0,∞,~,p=0.333 n=2,0,∞,~,p=0.333 n=2
geomean,,,,,?,,,,?,
`
	var out strings.Builder
	if err := run(strings.NewReader(in), &out); err != nil {
		t.Fatal(err)
	}
	want := `| benchmark | mattn-defaults | mattn-same-dsn | proxy | proxy / mattn-defaults | proxy / mattn-same-dsn |
|---|---:|---:|---:|---:|---:|
| Writers8/op=tx/sync=FULL | 4ms (13% failed) | 600µs | 200µs | 0.05 | 0.33 |
| Insert | 20µs | 10µs | 11µs | 0.55 | 1.10 |
`
	if out.String() != want {
		t.Errorf("got\n%s\nwant\n%s", out.String(), want)
	}
}
