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

// TestRunPaired: benchmarks without an impl fill the proxy column from the
// unnamed sec/op column, mattn-same-dsn from a paired mattn-ns/op metric,
// and the ratios from the paired x- metrics rather than dividing medians.
func TestRunPaired(t *testing.T) {
	const in = `goos: linux
,mattn-defaults,,mattn-same-dsn,,,,proxy,,,,,,,
,sec/op,CI,sec/op,CI,vs base,P,sec/op,CI,vs base,P,sec/op,CI,vs base,P
Insert-2,2e-05,1%,1e-05,1%,-50%,p=0.002 n=6,1.1e-05,2%,-45%,p=0.002 n=6
ArticlePaired/row=Insert-2,,,,,,,,,,,1.5e-05,10%
ColdOpenPaired/impl=proxy-2,,,,,,,,,,,0.0003,2%
ManyTenants/dist=uniform-2,,,,,,,,,,,0.0004,5%
geomean,2e-05,,1e-05,,,,1.1e-05,,,,1e-05,,?,

,,
,mattn-sec/op,CI
ArticlePaired/row=Insert-2,1.4e-05,10%
geomean,1.4e-05,

,,
,x-mattn-same-dsn,CI
ArticlePaired/row=Insert-2,1.025,5%
ColdOpenPaired/impl=proxy-2,1.08,1%
geomean,1.05,

,,
,x-mattn-defaults,CI
ColdOpenPaired/impl=proxy-2,1.12,1%
geomean,1.12,
`
	var out strings.Builder
	if err := run(strings.NewReader(in), &out); err != nil {
		t.Fatal(err)
	}
	want := `| benchmark | mattn-defaults | mattn-same-dsn | proxy | proxy / mattn-defaults | proxy / mattn-same-dsn |
|---|---:|---:|---:|---:|---:|
| Insert | 20µs | 10µs | 11µs | 0.55 | 1.10 |
| ArticlePaired/row=Insert | — | 14µs | 15µs | — | 1.025 |
| ColdOpenPaired/impl=proxy | — | — | 300µs | 1.120 | 1.080 |
| ManyTenants/dist=uniform | — | — | 400µs | — | — |
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
