// Package replica keeps the Litestream replicas of sqliteproxy tenants
// compact, with Litestream's own Compactor.
//
// Litestream compacts a replica only while it streams the database, and
// sqliteproxy streams a tenant only while the tenant is open: a tenant
// opened and evicted again and again leaves a level-0 file per session in
// its replica, and each file makes its next restore slower (~2 ms a small
// file, more for the snapshot every restore on another node uploads).
// Set a Compactor as sqliteproxy.Config.ReplicaCompactor and the driver
// compacts a closed tenant's replica once it holds 8 level-0 files not yet
// compacted; the ops CLI's `sqliteproxy compact` uses it too.
//
// This is a module of its own so that the driver does not link Litestream.
// The Compactor works on the replica alone (it never opens a database
// file), so it is safe in the process that runs the driver.
//
// Litestream v0.5.18's S3 client fails every request when AWS_CA_BUNDLE is
// set in the environment ("unable to add custom RootCAs HTTPClient"), and so
// does the Litestream process: unset it (the system's roots apply).
// Compact says so instead of failing on Litestream's error.
package replica

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/benbjohnson/litestream"
	_ "github.com/benbjohnson/litestream/file" // file:// replica clients
	_ "github.com/benbjohnson/litestream/s3"   // s3:// replica clients
	"github.com/sqliteproxy/sqliteproxy"
)

// DefaultRetention is how long level-0 files already compacted into level
// 1 are kept, as in Litestream.
const DefaultRetention = 5 * time.Minute

// Compactor compacts one tenant's replica: level 0 into level 1 and level 1
// into level 2, then deletes the level-0 files compacted into level 1 that
// are older than Retention. A restore then reads a few files instead of one
// per session.
type Compactor struct {
	// Retention is how long level-0 files compacted into level 1 are kept
	// (0: DefaultRetention; negative: kept until Litestream deletes them).
	// It is also how far back a point-in-time restore is exact: a
	// compacted file carries the time of the newest file it replaces, so
	// once the level-0 files are gone, RestoreTenantAt can only reach the
	// ends of compacted files (a time inside one says the replica holds no
	// state as early as that).
	Retention time.Duration
	// Logger receives Litestream's log (nil: discarded).
	Logger *slog.Logger
}

var _ sqliteproxy.ReplicaCompactor = (*Compactor)(nil)

// CompactReplica compacts the replica at url, one tenant's
// (<Config.ReplicaURL>/<id>). Litestream may stream the tenant meanwhile
// (it compacts the same levels): a restore takes the longest run of
// contiguous files across levels, and level-0 files go only once a
// level-1 file covers them. Both may write the same level file at once:
// each is written whole under a temporary name and renamed, the last
// rename wins (on a file:// replica this one's temporary name is its own,
// see ownTmpClient; on S3 a PUT replaces an object whole). Their level files
// can overlap, though (each compacts from the level's end as it saw it):
// nothing is lost, but Litestream's compactions of the next level then fail
// for that tenant ("non-contiguous transaction ids"). Compact tenants no
// Litestream streams where you can, as the driver does.
func (c *Compactor) CompactReplica(ctx context.Context, url string) error {
	_, _, err := c.Compact(ctx, url)
	return err
}

// Compact compacts the replica at url and returns how many LTX files it
// held before and after.
func (c *Compactor) Compact(ctx context.Context, url string) (before, after int, err error) {
	if strings.HasPrefix(url, "s3:") && os.Getenv("AWS_CA_BUNDLE") != "" {
		return 0, 0, errors.New("Litestream v0.5.18's S3 client fails when AWS_CA_BUNDLE is set: unset it in this process's environment")
	}
	client, err := litestream.NewReplicaClientFromURL(url)
	if err != nil {
		return 0, 0, err
	}
	defer closeIdle(client)
	client = withOwnTmp(client) // beside a Litestream that streams the tenant
	if before, err = countLTX(ctx, client); err != nil {
		return 0, 0, err
	}
	logger := c.Logger
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	lc := litestream.NewCompactor(client, logger)
	for _, level := range []int{1, 2} {
		if _, err := lc.Compact(ctx, level); err != nil && !errors.Is(err, litestream.ErrNoCompaction) {
			return before, 0, fmt.Errorf("compact into level %d: %w", level, err)
		}
	}
	retention := c.Retention
	if retention == 0 {
		retention = DefaultRetention
	}
	if retention > 0 {
		if err := lc.EnforceL0Retention(ctx, retention); err != nil {
			return before, 0, fmt.Errorf("level-0 retention: %w", err)
		}
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

// Restorer restores tenants from their replicas in the driver's process
// (set it as sqliteproxy.Config.ReplicaRestorer) with Litestream's
// Replica.Restore: it writes the database aside, syncs it and renames it,
// and never opens it with SQLite (the driver checks it with its own), so it
// is safe beside the driver's connections. It spares starting the
// litestream binary for each restore.
type Restorer struct {
	// Logger receives Litestream's log (nil: discarded).
	Logger *slog.Logger
}

var _ sqliteproxy.ReplicaRestorer = (*Restorer)(nil)

// RestoreReplica writes the replica at url, as it was at at (zero: its
// latest state), into dst. It fails with an error matching
// sqliteproxy.ErrTenantNotFound when the replica holds nothing.
func (r *Restorer) RestoreReplica(ctx context.Context, url, dst string, at time.Time) error {
	if strings.HasPrefix(url, "s3:") && os.Getenv("AWS_CA_BUNDLE") != "" {
		return errors.New("Litestream v0.5.18's S3 client fails when AWS_CA_BUNDLE is set: unset it in this process's environment")
	}
	client, err := litestream.NewReplicaClientFromURL(url)
	if err != nil {
		return err
	}
	defer closeIdle(client)
	rep := litestream.NewReplicaWithClient(nil, client)
	if r.Logger != nil {
		rep.Client.SetLogger(r.Logger)
	}
	opt := litestream.NewRestoreOptions()
	opt.OutputPath = dst
	opt.Timestamp = at
	if !at.IsZero() {
		// A time after the last upload is the latest state; one before the
		// first is an error that says so (as the driver reads it from
		// `litestream restore -timestamp`).
		created, updated, err := rep.TimeBounds(ctx)
		// The bounds come from the store's listing, which S3 gives in whole
		// seconds (a time with no fraction); a time within the second of
		// the last upload may be before it. The restore's own plan reads
		// each file's exact time: leave such a time to it.
		prec := time.Nanosecond
		if updated.Nanosecond() == 0 {
			prec = time.Second
		}
		switch {
		case err != nil:
			return err
		case created.IsZero() && updated.IsZero():
			return fmt.Errorf("%w: nothing in the replica %s", sqliteproxy.ErrTenantNotFound, url)
		case !at.Before(updated.Add(prec)):
			opt.Timestamp = time.Time{}
		case at.Before(created):
			return fmt.Errorf("timestamp does not exist: the replica holds no state as early as %s", at.UTC().Format(time.RFC3339Nano))
		}
	}
	err = rep.Restore(ctx, opt)
	if errors.Is(err, litestream.ErrTxNotAvailable) {
		return fmt.Errorf("%w: nothing in the replica %s", sqliteproxy.ErrTenantNotFound, url)
	}
	return err
}
