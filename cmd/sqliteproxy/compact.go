package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/sqliteproxy/sqliteproxy"
	"github.com/sqliteproxy/sqliteproxy/replica"
)

// compactRetention is how long level-0 files already compacted into level
// 1 are kept before compact deletes them, as Litestream's own default.
const compactRetention = replica.DefaultRetention

// compact compacts the replicas of closed tenants. Litestream compacts a
// database only while it streams it, and the driver streams a tenant only
// while it is open: a tenant opened briefly again and again leaves one
// level-0 file per session in its replica, and its restores take longer
// and longer (here ~2 ms per file). A service with
// Config.ReplicaCompactor set compacts its closed tenants itself; without
// one, run this from time to time (cron). It works on the replica alone;
// beside a service that streams the same tenant nothing is lost, but the
// level files of both compactors can overlap and Litestream then logs failed
// compactions of the next level (see replica.Compactor.CompactReplica;
// replication's TestCompact_BesideStreaming).
func (e *env) compact(args []string) int {
	f := e.newFlagsNoDir("compact")
	replica := f.String("replica", "", "the replica `URL` (file:///path, s3://bucket/prefix?endpoint=...), as in Config.ReplicaURL (required)")
	retention := f.Duration("retention", compactRetention, "keep level-0 files compacted into level 1 for this long")
	ids, st, ok := e.parse(f, args, 0, -1)
	if !ok {
		return st
	}
	if !f.isSet("replica") {
		return e.usageError(f, "-replica URL is required")
	}
	if err := checkReplicaURL(*replica); err != nil {
		return e.usageError(f, "-replica: %v", err)
	}
	for _, id := range ids {
		if err := sqliteproxy.ValidTenantID(id); err != nil {
			return e.usageError(f, "%s", errText(err))
		}
	}
	// Litestream v0.5.18's S3 client fails every request when AWS_CA_BUNDLE
	// is set ("unable to add custom RootCAs HTTPClient"); without it, the
	// system's roots apply.
	os.Unsetenv("AWS_CA_BUNDLE")
	if len(ids) == 0 {
		var err error
		if ids, err = sqliteproxy.ReplicaTenants(e.ctx, *replica); err != nil {
			e.errorf("compact: %s", errText(err))
			return exitFailed
		}
	}
	status := exitOK
	for _, id := range ids {
		before, after, err := compactTenant(e.ctx, *replica, id, *retention)
		if err == nil && before == 0 {
			err = errors.New("not in the replica") // a typo'd ID is not "compacted"
		}
		if err != nil {
			e.errorf("compact %s: %v", id, err)
			status = exitFailed
			continue
		}
		note := ""
		if after > before {
			// The level-0 files compacted are still there: the count
			// goes down once they are older than the retention.
			note = fmt.Sprintf(" (the level-0 files compacted are kept for -retention %v, then a compact deletes them)", *retention)
		}
		fmt.Fprintf(e.stdout, "%s: %d files, %d after compaction%s\n", id, before, after, note)
	}
	return status
}

// compactTenant compacts tenant id's replica (see package replica), each
// generation's with Ownership, and returns how many files they held before
// and after.
func compactTenant(ctx context.Context, replicaURL, id string, retention time.Duration) (before, after int, err error) {
	urls, err := sqliteproxy.TenantReplicaURLs(ctx, replicaURL, id)
	if err != nil {
		return 0, 0, err
	}
	c := replica.Compactor{Retention: retention}
	for _, u := range urls {
		b, a, err := c.Compact(ctx, u)
		if err != nil {
			return before, after, err
		}
		before, after = before+b, after+a
	}
	return before, after, nil
}
