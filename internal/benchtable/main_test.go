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
