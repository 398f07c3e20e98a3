package main

import (
	"fmt"

	"github.com/sqliteproxy/sqliteproxy"
)

// relayout: convert the data directory to another layout (offline).
func (e *env) relayout(args []string) int {
	f := e.newFlagsNoDir("relayout")
	f.dir = f.String("dir", "./data", "the data `directory` to convert (must exist; nothing may use it meanwhile)")
	to := f.String("to", "", "the `layout` to convert to: flat (<dir>/<id>.db) or buckets (<dir>/<bucket>/<id>.db) (required)")
	if _, st, ok := e.parse(f, args, 0, 0); !ok {
		return st
	}
	var layout sqliteproxy.Layout
	switch *to {
	case "flat":
		layout = sqliteproxy.LayoutFlat
	case "buckets":
		layout = sqliteproxy.LayoutBuckets
	case "":
		return e.usageError(f, "-to flat|buckets is required")
	default:
		return e.usageError(f, "-to %q is not flat or buckets", *to)
	}
	if err := requireDir("data directory", *f.dir); err != nil {
		e.errorf("relayout: %v", err)
		return exitUsage
	}
	moved, err := sqliteproxy.Relayout(e.ctx, *f.dir, layout)
	if err != nil {
		e.errorf("relayout: %s (moved %d tenants; run it again to finish)", errText(err), moved)
		return exitFailed
	}
	fmt.Fprintf(e.stdout, "moved %d tenants; %s is in the %s layout\n", moved, *f.dir, layout)
	return exitOK
}
