package main

import (
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"os/exec"
	"time"

	"github.com/sqliteproxy/sqliteproxy"
)

// checkReplicaURL fails for a -replica value that cannot be a Litestream
// replica URL at all. Schemes the library cannot list or fetch are its to
// report.
func checkReplicaURL(raw string) error {
	if raw == "" {
		return errors.New("empty URL; want file:///path or s3://bucket/prefix")
	}
	u, err := url.Parse(raw)
	switch {
	case err != nil:
		return err
	case u.Scheme == "":
		return fmt.Errorf("%q has no scheme; want file:///path or s3://bucket/prefix", raw)
	case u.Scheme == "file" && (u.Host != "" || u.Opaque != "" || u.Path == ""):
		return fmt.Errorf("%q: a file URL takes an absolute path (file:///path)", raw)
	case u.Scheme == "file":
		// A mistyped path read as a replica holding nothing: replicas and
		// compact printed nothing and exited 0.
		if _, err := os.Stat(u.Path); errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%q: %w", raw, err)
		}
	}
	return nil
}

// replicas: list the tenants that have a replica under -replica.
func (e *env) replicas(args []string) int {
	f := e.newFlagsNoDir("replicas")
	replica := f.String("replica", "", "the replica `URL` (file:///path, s3://bucket/prefix?endpoint=...), as in Config.ReplicaURL (required)")
	asJSON := f.Bool("json", false, "print a JSON array of IDs")
	if _, st, ok := e.parse(f, args, 0, 0); !ok {
		return st
	}
	if !f.isSet("replica") {
		return e.usageError(f, "-replica URL is required")
	}
	if err := checkReplicaURL(*replica); err != nil {
		return e.usageError(f, "-replica: %v", err)
	}
	ids, err := sqliteproxy.ReplicaTenants(e.ctx, *replica)
	if err != nil {
		e.errorf("replicas: %s", errText(err))
		return exitFailed
	}
	e.printIDs(ids, *asJSON)
	return exitOK
}

// errNotInReplica: the replica holds nothing for the tenant.
var errNotInReplica = errors.New("not in the replica")

// restoreReplica: restore -replica URL [-at TIME] [-litestream PATH] ID.
func (e *env) restoreReplica(f *flags, id, replicaURL, atText, litestream string, force bool) (status int) {
	if !e.checkID(f, id) {
		return exitUsage
	}
	if err := checkReplicaURL(replicaURL); err != nil {
		return e.usageError(f, "-replica: %v", err)
	}
	var at time.Time
	if f.isSet("at") {
		var err error
		if at, err = time.Parse(time.RFC3339, atText); err != nil {
			return e.usageError(f, "-at %q is not a time in RFC 3339 (e.g. 2026-11-26T14:00:00Z)", atText)
		}
	}
	p, st, ok := e.open(f, "")
	if !ok {
		return st
	}
	defer e.closeProxy(p, &status)
	bin, st, ok := e.litestreamBinary(litestream)
	if !ok {
		return st
	}
	existed, err := p.TenantExists(e.ctx, id)
	if err == nil && !force {
		err = tenantNotInUse(p, id)
	}
	if err == nil {
		err = e.fetchAndRestore(p, id, replicaURL, at, bin)
	}
	if err != nil {
		e.tenantErr("restore", id, err)
		return exitFailed
	}
	from := "its replica"
	if !at.IsZero() {
		from += " as at " + at.Format(time.RFC3339Nano)
	}
	if existed {
		fmt.Fprintf(e.stdout, "restored tenant %s from %s\n", id, from)
	} else {
		fmt.Fprintf(e.stdout, "restored tenant %s from %s (new tenant)\n", id, from)
	}
	return exitOK
}

// litestreamBinary resolves the litestream binary: -litestream, or
// litestream on PATH.
func (e *env) litestreamBinary(flagValue string) (string, int, bool) {
	name := flagValue
	if name == "" {
		name = sqliteproxy.DefaultLitestreamPath
	}
	bin, err := exec.LookPath(name)
	switch {
	case err == nil:
		return bin, exitOK, true
	case flagValue != "":
		e.errorf("restore: -litestream %s: %v", flagValue, errors.Unwrap(err))
		return "", exitUsage, false
	default:
		e.errorf("restore: %s not found on PATH: install Litestream v0.5, or name its binary with -litestream PATH", name)
		return "", exitFailed, false
	}
}

// fetchAndRestore restores tenant id from its replica (as at at; zero:
// latest) through the library, which marks the restored copy to become the
// replica's head when the service next opens the tenant.
func (e *env) fetchAndRestore(p *sqliteproxy.Proxy, id, replicaURL string, at time.Time, bin string) error {
	err := p.RestoreTenantFromReplica(e.ctx, id, replicaURL, at, bin)
	if errors.Is(err, sqliteproxy.ErrTenantNotFound) {
		return errNotInReplica
	}
	return err
}

// replicaStatus adds to ts the tenant's replication position: where
// Litestream's files beside its file under dir are, and where its replica
// under replicaURL is.
func (e *env) replicaStatus(ts *tenantStatus, replicaURL, dir string) {
	c, err := sqliteproxy.ReplicaCopyOf(e.ctx, replicaURL, dir, ts.Tenant)
	if err != nil {
		ts.replicaErr = fmt.Errorf("replica: %s", tenantErrText(ts.Tenant, err))
		ts.ReplicaError = ts.replicaErr.Error()
		return
	}
	local, replica := c.Local, c.Replica
	ts.ReplicaLocalTXID, ts.ReplicaTXID = &local, &replica
	ts.neverStreamed, ts.restoredSuperseded = c.NeverStreamed, c.RestoredSuperseded
	ts.newerGeneration = c.NewerGeneration
	switch {
	case c.DeletePending:
		ts.ReplicaState = "delete_pending"
	case c.NewerGeneration != 0 && !c.Restored:
		// With Ownership a node that takes the tenant replaces this copy
		// (a restore here is decided by its own rules, below).
		ts.ReplicaState = "superseded"
		replica = c.NewerGenerationTXID
		ts.ReplicaTXID = &replica
	case c.RestoredSuperseded:
		ts.ReplicaState = "conflict"
	case c.Restored:
		ts.ReplicaState = "restored"
	case c.NeverStreamed && replica > 0, c.FromReplica && c.FromReplicaWritten && c.FromReplicaMovedOn:
		ts.ReplicaState = "conflict"
	case c.FromReplica && !c.FromReplicaMovedOn:
		ts.ReplicaState = "restored_from_replica"
	case local == 0 && replica == 0:
		ts.ReplicaState = "none"
	case local == replica:
		ts.ReplicaState = "in_sync"
	case local > replica:
		ts.ReplicaState = "behind"
	default:
		ts.ReplicaState = "ahead"
	}
}

// replicaText renders the replication position for the status table.
func (ts *tenantStatus) replicaText() string {
	if ts.ReplicaLocalTXID == nil || ts.ReplicaTXID == nil {
		return "?"
	}
	local, replica := *ts.ReplicaLocalTXID, *ts.ReplicaTXID
	switch ts.ReplicaState {
	case "none":
		return "not replicated"
	case "in_sync":
		return fmt.Sprintf("in sync (txid %d)", replica)
	case "delete_pending":
		if ts.noFile {
			return fmt.Sprintf("deleted here, its replica (txid %d) not erased yet: erased at the tenant's next access by the service, or by delete again; until then the tenant is not made again", replica)
		}
		return fmt.Sprintf("deleted here before this file was made, its replica (txid %d) not erased yet: erased before the service streams this file", replica)
	case "superseded":
		return fmt.Sprintf("superseded: generation %d of the replica is newer (txid %d; another node owned and wrote the tenant since), and a node that takes the tenant replaces this copy", ts.newerGeneration, replica)
	case "behind":
		return fmt.Sprintf("behind by %d", local-replica)
	case "restored":
		return "restored here (becomes the replica's head when the service opens it)"
	case "restored_from_replica":
		return fmt.Sprintf("restored from the replica (txid %d), not streamed yet", *ts.ReplicaTXID)
	case "conflict":
		if ts.restoredSuperseded {
			return fmt.Sprintf("restored here, not streamed, and the replica was written since (txid %d): refused until one is chosen", replica)
		}
		if !ts.neverStreamed {
			return "restored from the replica and written here, not streamed, and the replica moved on: refused until one is chosen (with Ownership, replaced by the newer generation)"
		}
		return fmt.Sprintf("never streamed, the replica holds another copy (txid %d): refused until one is chosen", replica)
	default:
		return fmt.Sprintf("ahead by %d (written elsewhere)", replica-local)
	}
}
