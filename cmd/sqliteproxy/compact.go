package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"path"
	"time"

	"github.com/benbjohnson/litestream"
	_ "github.com/benbjohnson/litestream/file" // file:// replica clients
	_ "github.com/benbjohnson/litestream/s3"   // s3:// replica clients
	"github.com/sqliteproxy/sqliteproxy"
)

// compactRetention is how long level-0 files already compacted into level
// 1 are kept before compact deletes them, as Litestream's own default.
const compactRetention = 5 * time.Minute

// compact compacts the replicas of closed tenants. Litestream compacts a
// database only while it streams it, and the driver streams a tenant only
// while it is open: a tenant opened briefly again and again leaves one
// level-0 file per session in its replica, and its restores take longer
// and longer (here ~2 ms per file). Run it from time to time (cron); it
// works on the replica alone and is safe beside the service.
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
		if err != nil {
			e.errorf("compact %s: %v", id, err)
			status = exitFailed
			continue
		}
		fmt.Fprintf(e.stdout, "%s: %d files, %d after compaction\n", id, before, after)
	}
	return status
}

// compactTenant compacts level 0 into level 1 and level 1 into level 2 in
// tenant id's replica (Litestream's own Compactor), then deletes the
// level-0 files compacted into level 1 that are older than retention. It
// returns how many files the replica had before and after.
func compactTenant(ctx context.Context, replicaURL, id string, retention time.Duration) (before, after int, err error) {
	u, err := url.Parse(replicaURL)
	if err != nil {
		return 0, 0, err
	}
	u.Path = path.Join("/", u.Path, id)
	client, err := litestream.NewReplicaClientFromURL(u.String())
	if err != nil {
		return 0, 0, err
	}
	if before, err = countLTX(ctx, client); err != nil {
		return 0, 0, err
	}
	c := litestream.NewCompactor(client, slog.New(slog.NewTextHandler(io.Discard, nil)))
	for _, level := range []int{1, 2} {
		if _, err := c.Compact(ctx, level); err != nil && !errors.Is(err, litestream.ErrNoCompaction) {
			return before, 0, fmt.Errorf("compact into level %d: %w", level, err)
		}
	}
	if err := c.EnforceL0Retention(ctx, retention); err != nil {
		return before, 0, fmt.Errorf("level-0 retention: %w", err)
	}
	after, err = countLTX(ctx, client)
	return before, after, err
}

// countLTX counts the LTX files of a replica, every level.
func countLTX(ctx context.Context, client litestream.ReplicaClient) (int, error) {
	n := 0
	for level := 0; level <= litestream.SnapshotLevel; level++ {
		itr, err := client.LTXFiles(ctx, level, 0, false)
		if err != nil {
			return 0, err
		}
		for itr.Next() {
			n++
		}
		if err := itr.Close(); err != nil {
			return 0, err
		}
	}
	return n, nil
}
