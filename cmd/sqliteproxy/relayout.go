package main

import (
	"errors"
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
		e.relayoutErr(*f.dir, moved, err)
		return exitFailed
	}
	fmt.Fprintf(e.stdout, "moved %s; %s is in the %s layout\n", plural(moved, "tenant"), *f.dir, layout)
	return exitOK
}

// relayoutErr prints a failed relayout of dir, without the library's own
// "relayout:" (and with the tenant it stopped at, named like other
// commands name theirs). It says to run it again only when the directory
// is left marked as half converted: a relayout that could not start (the
// directory in use, an unknown marker) left nothing to finish.
func (e *env) relayoutErr(dir string, moved int, err error) {
	what, id := "relayout", ""
	var pe *sqliteproxy.Error
	if errors.As(err, &pe) && pe.Tenant != "" {
		what, id = "relayout "+pe.Tenant, pe.Tenant
	}
	msg := tenantErrText(id, err)
	switch _, lerr := sqliteproxy.DirLayout(dir); {
	case errors.Is(lerr, sqliteproxy.ErrRelayoutInterrupted):
		msg += fmt.Sprintf(" (moved %s; run it again to finish)", plural(moved, "tenant"))
	case moved > 0:
		msg += fmt.Sprintf(" (moved %s)", plural(moved, "tenant"))
	}
	e.errorf("%s: %s", what, msg)
}
