package sqliteproxy

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/mattn/go-sqlite3"
	"github.com/sqliteproxy/sqliteproxy/internal/dirs"
	"github.com/sqliteproxy/sqliteproxy/internal/s3lite"
)

// replicator streams tenant files to object storage through a Litestream
// process and restores them with the litestream binary. It runs no
// replication of its own: Litestream (v0.5) does that, as its own process,
// driven over its control socket. Running it in this process is not safe:
// it opens every replicated file with its own copy of SQLite, and two
// copies of SQLite in one process do not share POSIX lock state (one
// closing its descriptor drops the other's locks).
//
// A tenant is registered while it is open here and unregistered when it is
// closed (evicted, deleted, restored, or at Close): Litestream costs ~0.5 MB,
// ~5 descriptors and ~5 goroutines per registered database, and fails with
// some thousands of them. The tenant's own connections are closed before it
// is unregistered, so that Litestream's connection is the file's last: it
// keeps the WAL (Litestream sets PERSIST_WAL), and the next registration
// goes on incrementally instead of uploading a snapshot of the whole file.
type replicator struct {
	base     string          // Config.ReplicaURL
	socket   string          // Config.LitestreamSocket
	bin      string          // Config.LitestreamPath
	restorer ReplicaRestorer // Config.ReplicaRestorer: restores in process; nil: with bin
	ctl      *http.Client
	stop     <-chan struct{} // the router's: closed by Close

	mu        sync.Mutex           // guards behind
	behind    map[*tenant]struct{} // closed tenants whose last changes are not all in the replica
	resyncing atomic.Bool          // a resync goroutine runs
	failedAt  atomic.Int64         // UnixNano of the last failed sync, 0 after a success

	// calls orders the syncs of a tenant file before its unregistration
	// (lockCalls). Litestream v0.5.18 does not: a /sync that found the
	// database just before an /unregister removed it waits for the close,
	// then opens the database again (its first sync sets it up when it is
	// not) and keeps that connection, with a read transaction on the file,
	// for as long as the process lives, unregistered. A restore or delete
	// of the tenant then found it "open in another process" for good.
	callsMu sync.Mutex
	calls   map[string]*callLock // by tenant file; only while a call about it is made or waits
}

// callLock is the lock of replicator.calls for one tenant file, and how
// many hold it or wait for it.
type callLock struct {
	sync.RWMutex
	n int
}

// lockCalls takes the lock that orders the Litestream calls about the
// tenant file at p, shared for a /sync, exclusively (write) for an
// /unregister, and returns its release. One per file: the calls about
// other tenants never wait for it (with stripes shared by tenants, an
// eviction waited for another tenant's SyncTenant, up to its 30 s).
func (rp *replicator) lockCalls(p string, write bool) (unlock func()) {
	rp.callsMu.Lock()
	if rp.calls == nil {
		rp.calls = map[string]*callLock{}
	}
	l := rp.calls[p]
	if l == nil {
		l = &callLock{}
		rp.calls[p] = l
	}
	l.n++
	rp.callsMu.Unlock()
	if write {
		l.Lock()
	} else {
		l.RLock()
	}
	return func() {
		if write {
			l.Unlock()
		} else {
			l.RUnlock()
		}
		rp.callsMu.Lock()
		if l.n--; l.n == 0 {
			delete(rp.calls, p)
		}
		rp.callsMu.Unlock()
	}
}

// replicaTimeout bounds a sync that has no deadline of its own.
const replicaTimeout = 30 * time.Second

// releaseTimeout bounds the final sync of a tenant being closed (Litestream
// syncs it as it unregisters it). What it could not upload stays in
// Litestream's files beside the database and is uploaded by a later resync,
// so an object store that is down does not hold up evictions for long.
const releaseTimeout = 5 * time.Second

// resyncEvery is how often closed tenants whose final sync failed are
// synced again.
const resyncEvery = 5 * time.Second

func newReplicator(cfg *Config) *replicator {
	if cfg.ReplicaURL == "" {
		return nil
	}
	socket := cfg.LitestreamSocket
	return &replicator{
		base:     cfg.ReplicaURL,
		restorer: cfg.ReplicaRestorer,
		behind:   map[*tenant]struct{}{},
		socket:   socket,
		bin:      cfg.LitestreamPath,
		ctl: &http.Client{Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", socket)
			},
			MaxIdleConnsPerHost: 8,
			IdleConnTimeout:     time.Minute,
		}},
	}
}

// tenantReplicaURL returns the replica URL of tenant id: base with id
// appended to its path (before any query, which carries the endpoint and
// other options of an S3 URL).
func tenantReplicaURL(base, id string) (string, error) {
	u, err := url.Parse(base)
	if err != nil {
		return "", err
	}
	switch u.Scheme {
	case "file", "s3", "gs", "abs", "sftp", "webdav", "webdavs", "oss", "nats":
	case "":
		return "", fmt.Errorf("%q has no scheme (file://, s3://, ...)", base)
	default:
		return "", fmt.Errorf("%q: scheme %q is not one Litestream v0.5 knows", base, u.Scheme)
	}
	if u.Opaque != "" {
		// file:replica or s3:bucket/x: url.URL keeps the rest as one opaque
		// string and would give every tenant that same URL, one replica
		// for all (a new tenant restored another's rows).
		return "", fmt.Errorf("%q: write the URL with // (file:///absolute/path, s3://bucket/prefix)", base)
	}
	if u.Scheme == "file" && u.Host != "" {
		return "", fmt.Errorf("%q: a file URL takes an absolute path (file:///path)", base)
	}
	if u.Scheme != "file" && u.Host == "" {
		return "", fmt.Errorf("%q names no bucket or host (%s://bucket/prefix)", base, u.Scheme)
	}
	if u.Scheme == "s3" {
		if err := plainS3Bucket(u); err != nil {
			return "", fmt.Errorf("%q: %w", base, err)
		}
	}
	u.Path = path.Join("/", u.Path, id)
	u.RawPath = ""
	if u.Scheme == "file" && u.EscapedPath() != u.Path {
		// Litestream (v0.5.18, ParseReplicaURLWithQuery) takes a file
		// URL's path in its escaped form, as it is written, and the driver
		// (erasure, listings, positions, checks) the path it names: with
		// file:///srv/rep(x) Litestream wrote to /srv/rep%28x%29 while
		// DeleteTenant erased /srv/rep(x), found nothing there and said it
		// was done; another node then restored the deleted rows.
		return "", fmt.Errorf("%q: a file URL whose path has characters a URL escapes (%s) is read by Litestream as that escaped text and by the driver as the path it names: two folders; use a path of letters, digits and -._~/", base, u.EscapedPath())
	}
	u.OmitHost = false // file:/abs/path is written file:///abs/path
	return u.String(), nil
}

// plainS3Bucket refuses an s3:// URL whose host is not the bucket alone
// (bucket.host:port, bucket.s3.region.amazonaws.com, a provider's host) or
// that names neither endpoint nor region. Litestream reads such hosts by
// provider and looks an AWS bucket's region up; the driver's own S3 client
// (internal/s3lite: DeleteTenant's erasure, replica positions, listings)
// took the host for the bucket and us-east-1 for the region, and its
// requests went elsewhere (erasure failed, the stale-copy check was
// skipped). One form both read alike: s3://bucket/prefix?endpoint=...&region=...
func plainS3Bucket(u *url.URL) error {
	h := strings.ToLower(u.Host)
	q := u.Query()
	switch {
	case strings.Contains(h, ":"):
		return fmt.Errorf("the host %q is read as bucket.host:port by Litestream: write s3://bucket/prefix?endpoint=http://host:port", u.Host)
	case strings.HasSuffix(h, ".amazonaws.com"), strings.HasSuffix(h, ".digitaloceanspaces.com"), strings.HasSuffix(h, ".backblazeb2.com"),
		strings.HasSuffix(h, ".filebase.com"), strings.HasSuffix(h, ".scw.cloud"), strings.HasSuffix(h, ".neon.tech"):
		return fmt.Errorf("the host %q is a provider's: write the bucket alone as the host, with endpoint= (for AWS, region=)", u.Host)
	case q.Get("endpoint") != "" && !strings.HasPrefix(q.Get("endpoint"), "http://") && !strings.HasPrefix(q.Get("endpoint"), "https://"):
		return fmt.Errorf("the endpoint %q has no scheme: write http:// or https:// (Litestream guesses http for local hosts, the driver's client https)", q.Get("endpoint"))
	case q.Get("endpoint") == "" && q.Get("region") == "":
		return errors.New("name the bucket's region (region=...) or the store's endpoint (endpoint=...): the driver does not look the region up as Litestream does")
	}
	return nil
}

// url returns the replica URL under key: a tenant ID, or <id>/g<gen> (see
// tenant.replicaKey).
func (rp *replicator) url(key string) string {
	u, _ := tenantReplicaURL(rp.base, key) // checked by Config.resolved
	return u
}

// checkFolder refuses, in a file:// replica, a folder on the way to key (a
// tenant's, <id>; a generation's, <id>/g<N>) that is not a folder of its
// own: a symbolic link there took one tenant's restore to another's
// replica, and compaction and erasure through it into the data directory or
// another tenant's replica (adv48). A folder that does not exist yet is
// fine (a new tenant's).
func (rp *replicator) checkFolder(key string) error {
	u, err := url.Parse(rp.base)
	if err != nil || u.Scheme != "file" {
		return nil
	}
	p := u.Path
	for el := range strings.SplitSeq(key, "/") {
		p = filepath.Join(p, el)
		fi, err := os.Lstat(p)
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		if !fi.IsDir() {
			return fmt.Errorf("replica folder %s is not a directory (a symbolic link, say): each tenant's replica is a folder of its own under %s", p, u.Path)
		}
	}
	return nil
}

// ctlError is an error answered by Litestream's control socket.
type ctlError struct {
	Status  int
	Message string `json:"error"`
	Details any    `json:"details"`
}

func (e *ctlError) Error() string {
	msg := fmt.Sprintf("litestream: %s [HTTP %d]", e.Message, e.Status)
	if e.Details != nil {
		msg = fmt.Sprintf("litestream: %s (%v) [HTTP %d]", e.Message, e.Details, e.Status)
	}
	if strings.Contains(msg, "custom RootCAs") {
		// Said of every S3 request by Litestream v0.5.18 when its process
		// has AWS_CA_BUNDLE set, with nothing that names the cause.
		msg += " (Litestream v0.5.18's S3 client fails so when AWS_CA_BUNDLE is set in its environment: unset it there)"
	}
	return msg
}

// ctlTimeout bounds a control request whose context has no deadline: a
// Litestream that accepts connections but never answers (stopped, hung)
// held such callers forever (a first access registering a tenant, a sync).
// Above replicaTimeout, which a sync asks Litestream to wait for.
var ctlTimeout = replicaTimeout + 5*time.Second

// call sends one request to the control socket and decodes the answer into out.
func (rp *replicator) call(ctx context.Context, method, p string, in, out any) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, ctlTimeout)
		defer cancel()
	}
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://litestream"+p, body)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := rp.ctl.Do(req)
	if err != nil {
		return fmt.Errorf("litestream control socket %s: %w", rp.socket, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		e := &ctlError{Status: resp.StatusCode}
		if json.Unmarshal(b, e) != nil || e.Message == "" {
			e.Message = strings.TrimSpace(string(b))
		}
		return e
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(b, out)
}

// register starts streaming the tenant file at p to its replica under key
// (see tenant.replicaKey).
//
// Litestream answers "already_registered" for a path it streams already,
// and keeps streaming it as it was: for a registration this process does
// not hold (a process killed without unregistering, a registration whose
// unregister failed) that may be a file since replaced (the data directory
// wiped and the tenant restored: every later sync failed with "cannot
// verify wal state" while writes succeeded) or another replica URL (an
// older generation). Such a registration is ended and made again.
func (rp *replicator) register(ctx context.Context, p, key string) error {
	if err := rp.checkFolder(key); err != nil {
		return err
	}
	body := map[string]string{"path": p, "replica_url": rp.url(key)}
	var out struct {
		Status string `json:"status"`
	}
	err := rp.call(ctx, http.MethodPost, "/register", body, &out)
	if err == nil && out.Status == "already_registered" {
		if _, uerr := rp.unregisterStray(ctx, p, 1); uerr != nil {
			return fmt.Errorf("register with litestream: end a registration this process does not hold: %w", uerr)
		}
		err = rp.call(ctx, http.MethodPost, "/register", body, &out)
		if err == nil && out.Status != "registered" {
			err = fmt.Errorf("litestream answered %q to a new registration", out.Status)
		}
	}
	if err != nil {
		return fmt.Errorf("register with litestream: %w", err)
	}
	return nil
}

// syncResult is Litestream's answer to POST /sync.
type syncResult struct {
	TXID           uint64 `json:"txid"`
	ReplicatedTXID uint64 `json:"replicated_txid"`
}

// sync returns once everything committed to the file at p before the call
// is in the replica, and the replica's position (TXID). Litestream's /sync with wait turns the WAL into LTX
// files up to its end and uploads every one of them before it answers. It
// reads the database's position after the upload, though: a commit that
// another caller made meanwhile, turned into a file by a concurrent sync,
// shows as a position the replica has not reached, although everything of
// before the call is there. So the first answer's position is the target,
// and a replica behind it gets a few more syncs to reach it.
func (rp *replicator) sync(ctx context.Context, p string) (uint64, error) {
	timeout := replicaTimeout
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
	}
	secs := max(1, int((timeout+time.Second-1)/time.Second))
	var out syncResult
	var target uint64
	var err error
	defer rp.lockCalls(p, false)()
	for try := range 4 {
		err = rp.call(ctx, http.MethodPost, "/sync", map[string]any{"path": p, "wait": true, "timeout": secs}, &out)
		if err != nil {
			break
		}
		if try == 0 {
			target = out.TXID
		}
		if out.ReplicatedTXID >= target {
			break
		}
		err = fmt.Errorf("replica at txid %d, database at %d", out.ReplicatedTXID, target)
	}
	if err != nil {
		rp.failedAt.Store(time.Now().UnixNano())
		return 0, fmt.Errorf("sync with litestream: %w", err)
	}
	rp.failedAt.Store(0)
	return out.ReplicatedTXID, nil
}

// release syncs the tenant file at p (within releaseTimeout), stops
// streaming it and returns the replica's position; the tenant's connections are closed already (see
// replicator). The sync is explicit: Litestream's own final sync at
// unregister reports nothing when the database never got going (its setup
// failed while the object store was down), and the tenant would pass for
// synced. A failed sync still unregisters: what was not uploaded stays in
// the database and Litestream's files beside it, and resync uploads it.
func (rp *replicator) release(p string) (pos uint64, err error) {
	var serr error
	if f := rp.failedAt.Load(); f != 0 && time.Since(time.Unix(0, f)) < resyncEvery {
		// A sync failed moments ago (the object store is down): do not
		// hold up the eviction for another timeout; resync will upload it.
		serr = errors.New("sync with litestream skipped: a sync failed less than 5s ago")
	} else {
		ctx, cancel := context.WithTimeout(context.Background(), releaseTimeout)
		pos, serr = rp.sync(ctx, p)
		cancel()
	}
	wait := releaseTimeout
	if serr != nil {
		wait = time.Second // its final sync would fail the same way
	}
	// The call's time starts once a sync of p in flight is done (the lock):
	// started before, it could run out waiting, and the /unregister was
	// never sent (Litestream went on streaming an evicted tenant).
	unlock := rp.lockCalls(p, true)
	ctx, cancel := context.WithTimeout(context.Background(), wait+time.Second)
	uerr := rp.call(ctx, http.MethodPost, "/unregister", map[string]any{"path": p, "timeout": int(wait / time.Second)}, nil)
	cancel()
	unlock()
	if uerr != nil {
		uerr = fmt.Errorf("unregister with litestream: %w", uerr)
	}
	return pos, errors.Join(serr, uerr)
}

// dropStray ends a registration with Litestream of the tenant file at p that
// this process does not hold (the caller has drained the tenant, which
// unregistered it), and reports whether there was one. Litestream keeps the
// file open while it streams it, and a delete or restore then found it
// "open in another process": a registration whose answer never came back
// (the call timed out while Litestream went on with it) is one this process
// does not know it made (soak20 met it once, on a RestoreTenantAt). Ended,
// Litestream closes the file before it answers.
func (rp *replicator) dropStray(ctx context.Context, p string) bool {
	had, _ := rp.unregisterStray(ctx, p, int(releaseTimeout/time.Second))
	return had
}

// unregisterStray ends Litestream's registration of p, one this process
// does not hold, within timeout seconds, and reports whether Litestream had
// it. A final sync that fails (the file it holds is gone) leaves Litestream's
// store all the same, before the error (a 500): that counts as ended.
func (rp *replicator) unregisterStray(ctx context.Context, p string, timeout int) (had bool, err error) {
	var out struct {
		Status string `json:"status"`
	}
	unlock := rp.lockCalls(p, true)
	err = rp.call(ctx, http.MethodPost, "/unregister", map[string]any{"path": p, "timeout": timeout}, &out)
	unlock()
	if ce := (*ctlError)(nil); errors.As(err, &ce) && ce.Status == http.StatusInternalServerError {
		return true, nil
	}
	return err == nil && out.Status == "unregistered", err
}

// errNoReplica: the replica holds nothing for the tenant.
var errNoReplica = errors.New("no replica")

// restore writes the replica under key (a tenant's, see
// tenant.replicaKey), as it was at at (zero: its latest state), into the
// new file dst, or fails with errNoReplica. The
// litestream binary writes a temporary file, syncs it and renames it.
func (rp *replicator) restore(ctx context.Context, key, dst string, at time.Time) error {
	// A restore of a large tenant may take long, so no bound of its own;
	// but Close ends it, and it does not outlive this process (an object
	// store that never answers kept it running after both had returned;
	// in-process, Close returned while it went on writing, and its file
	// took the tenant's name after Close).
	ctx, cancel := untilClosed(ctx, rp.stop)
	defer cancel()
	if err := rp.checkFolder(key); err != nil {
		return err
	}
	if rp.restorer != nil {
		err := rp.restorer.RestoreReplica(ctx, rp.url(key), dst, at)
		if errors.Is(err, ErrTenantNotFound) {
			return errNoReplica
		}
		if err != nil && ctx.Err() != nil {
			return fmt.Errorf("restore: %w", context.Cause(ctx))
		}
		return err
	}
	args := []string{"restore", "-o", dst, "-if-replica-exists"}
	if !at.IsZero() {
		args = append(args, "-timestamp", at.UTC().Format(time.RFC3339Nano))
	}
	args = append(args, rp.url(key))
	cmd := exec.CommandContext(ctx, rp.bin, args...)
	cmd.Env = litestreamEnv()
	dieWithParent(cmd)
	out, err := cmd.CombinedOutput()
	if err != nil {
		// Killed, litestream leaves the file it writes before its rename:
		// a tenant's rows, in the data directory.
		removeWithSideFiles(dst + ".tmp")
	}
	if err != nil && ctx.Err() != nil {
		// Killed for its context, or Close (ErrClosed): say so, for errors.Is.
		return fmt.Errorf("litestream restore: %w", context.Cause(ctx))
	}
	if errors.Is(err, exec.ErrNotFound) || errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("litestream restore: %w (restores from the replica run the litestream binary: install it on this node, or name it with Config.LitestreamPath, DSN litestream_path; or set Config.ReplicaRestorer)", err)
	}
	if err != nil {
		msg := strings.TrimSpace(string(out))
		if i := strings.LastIndex(msg, "\n"); i >= 0 {
			msg = msg[i+1:]
		}
		if !at.IsZero() && strings.HasSuffix(msg, "no backups found") {
			// With -timestamp, -if-replica-exists does not apply: an empty
			// replica is this error, as it is without a time.
			return errNoReplica
		}
		return fmt.Errorf("litestream restore: %w: %s", err, msg)
	}
	if _, err := os.Stat(dst); errors.Is(err, os.ErrNotExist) {
		return errNoReplica // -if-replica-exists: nothing to restore
	} else if err != nil {
		return err
	}
	return nil
}

// litestreamEnv is the environment of litestream commands: this process's,
// without AWS_CA_BUNDLE, which makes Litestream v0.5.18's S3 client fail
// every request ("unable to add custom RootCAs HTTPClient").
func litestreamEnv() []string {
	env := os.Environ()
	out := env[:0:0]
	for _, kv := range env {
		if !strings.HasPrefix(kv, "AWS_CA_BUNDLE=") {
			out = append(out, kv)
		}
	}
	return out
}

// metaDir is the directory Litestream keeps beside the database file at p.
func metaDir(p string) string {
	return sideName(p, "-litestream")
}

// register starts streaming t, whose writer the caller holds, unless it is
// streamed already.
func (r *router) register(ctx context.Context, t *tenant) error {
	if r.repl == nil || t.registered.Load() {
		return nil
	}
	r.markWritten(t)
	if err := r.repl.register(ctx, t.path, t.replicaKey()); err != nil {
		return opError(opOpenTenant, t.id, err)
	}
	t.regs.Add(1)
	t.registered.Store(true)
	// The restored marker (restoredOnPurpose) and fromReplicaMarker stay
	// until Litestream has a position of the file: it makes its first file
	// of a database a second after the registration, or, while the object
	// store is down, not at all.
	if g := t.gen.Load(); g != 0 {
		if err := writeGenMarker(t.path, g); err != nil {
			return opError(opOpenTenant, t.id, err)
		}
	}
	return nil
}

// notRegistered reports whether err is Litestream's answer for a database
// it does not stream (404: "database not found").
func notRegistered(err error) bool {
	var ce *ctlError
	return errors.As(err, &ce) && ce.Status == http.StatusNotFound
}

// reregister registers t again if this process still streams it but
// Litestream does not: its registrations live in memory only, and a
// restarted Litestream knows none of them (it resumes from its files
// beside the database, nothing lost). Under the writer semaphore, as
// register and unregister: a tenant unregistered meanwhile is left alone,
// and so is one registered again since the caller read seen from t.regs
// (before the call Litestream answered with 404): callers that met the
// same restart at once register once. (Each later one found this
// process's fresh registration "already_registered", ended it and made
// another, and a sync between the two failed.)
func (r *router) reregister(ctx context.Context, t *tenant, seen uint32) error {
	if err := t.lockWriter(ctx); err != nil {
		return err
	}
	defer t.releaseWriter()
	if !t.registered.Load() || t.regs.Load() != seen {
		return nil
	}
	if err := r.dirChanged(); err != nil {
		return err // t.path is another directory's file now: Litestream would stream it
	}
	if err := r.repl.register(ctx, t.path, t.replicaKey()); err != nil {
		return err
	}
	t.regs.Add(1)
	return nil
}

// unregister syncs t and stops streaming it; the caller holds t's writer
// semaphore and has closed t's connections. A failed sync is remembered
// (SyncTenant retries it): Litestream keeps what it did not upload in its
// files beside the database, for the next registration.
func (r *router) unregister(t *tenant) {
	if r.repl == nil || !t.registered.Load() {
		return
	}
	start := time.Now()
	pos, err := r.repl.release(t.path)
	r.tel.synced(context.Background(), t.tel, start, err)
	lost := t.lease != nil && isDone(t.lease.Lost())
	if err == nil && (t.state.Load() != tenantDraining || lost) {
		// Not for a delete or a restore (drain), which act as the owner
		// next: given up in between, another node took the tenant (one
		// that kept reading it), and the operation failed with "owned by"
		// it (adv22). Unless a move ended the lease already: it waits for
		// this release (adv24).
		if t.lease != nil && !lost {
			r.compactOwned(t)
		}
		r.releaseLease(t, pos)
	} else if err == nil && t.lease != nil {
		t.keptPos = &pos // a move that ends it before the drain goes on releases it at pos
	} else if err != nil && t.lease != nil && isDone(t.lease.Lost()) {
		// Ended by a move (or lost) with writes the replica lacks: released
		// only once they are uploaded (finishRelease). A move waited for
		// that release for ever: nothing released the lease, and this
		// node could not take the tenant again to sync it (it is moving).
		t.unreleased = t.lease
	}
	t.registered.Store(false)
	t.unsynced.Store(err != nil)
	// Beside the file t's connections opened (realPath): a Dir symlink
	// pointed elsewhere since New made t.path another directory's file,
	// whose markers these calls changed (adv42).
	if real := t.realPath(); err != nil {
		touchFile(unsyncedMarker(real)) // for the next process too
	} else {
		// In the replica, and Litestream has a position of it: the marks
		// of a restored copy have done their work.
		removeIfExists(unsyncedMarker(real))
		removeIfExists(restoredMarker(real))
		removeIfExists(fromReplicaMarker(real))
	}
	r.repl.mu.Lock()
	if err != nil {
		r.repl.behind[t] = struct{}{}
	} else {
		delete(r.repl.behind, t)
	}
	r.repl.mu.Unlock()
	if err == nil && r.cfg.Ownership == nil {
		r.queueCompaction(t) // with Ownership: compactOwned, before the release
	}
}

// resync makes replication catch up after a failure (the object store was
// down, say), in the background: Litestream retries an upload only when the
// database changes again, and a tenant closed while its final sync failed
// is not streamed at all. For each open tenant, it asks Litestream where
// the database and its replica are and syncs the ones that lag; closed
// tenants whose final sync failed are opened and synced.
func (r *router) resync() {
	if r.repl == nil || !r.repl.resyncing.CompareAndSwap(false, true) {
		return
	}
	behind := r.repl.behindTenants()
	open := r.budget.lru()
	go func() {
		defer r.repl.resyncing.Store(false)
		for _, t := range open {
			if r.isClosed.Load() {
				return
			}
			if t.registered.Load() {
				r.catchUp(t)
			}
		}
		if len(behind) > 0 && !r.repl.storeAnswers(behind[0]) {
			return
		}
		for _, t := range behind {
			if r.isClosed.Load() {
				return
			}
			ctx, cancel := context.WithTimeout(context.Background(), replicaTimeout)
			r.syncClosed(ctx, t)
			cancel()
		}
	}()
}

// storeAnswers reports whether the object store may take the syncs of
// closed tenants (resync): after a sync failed moments ago, only if a
// listing of t's replica succeeds now. Each of those syncs opens a tenant
// and registers it with Litestream, which cannot set it up while the store
// is down: the tenants closed during an outage were opened again every
// resyncEvery, each sync taking seconds to fail, and their evictions (which
// wait for their syncs) with it.
func (rp *replicator) storeAnswers(t *tenant) bool {
	f := rp.failedAt.Load()
	if f == 0 || time.Since(time.Unix(0, f)) > 2*resyncEvery {
		return true
	}
	ctx, cancel := context.WithTimeout(context.Background(), releaseTimeout)
	defer cancel()
	_, err := rp.replicaPos(ctx, t.replicaKey())
	if err != nil && !errors.Is(err, errUnsupported) {
		// Still down: asked again at the next round, not taken for up
		// once the failed sync is 10 s old (adv23: every closed tenant
		// was opened again every ~17 s of a long outage).
		rp.failedAt.Store(time.Now().UnixNano())
		return false
	}
	return true
}

// behindTenants lists the closed tenants whose final sync failed.
func (rp *replicator) behindTenants() []*tenant {
	rp.mu.Lock()
	defer rp.mu.Unlock()
	return slices.Collect(maps.Keys(rp.behind))
}

// syncClosed syncs t, a closed tenant whose final sync failed: opened (and
// so registered) and synced; one deleted meanwhile has nothing to sync.
func (r *router) syncClosed(ctx context.Context, t *tenant) {
	if !t.pin() {
		r.repl.mu.Lock()
		delete(r.repl.behind, t)
		r.repl.mu.Unlock()
		return
	}
	defer t.unpin()
	if r.finishRelease(ctx, t) {
		return
	}
	r.syncTenant(ctx, t)
}

// finishRelease uploads what the replica lacks of t, closed when a move
// ended its lease while its final sync failed (unreleased), and releases
// that lease with its final position: the move's target then restores all
// of it. It reports whether t had such a lease. t is registered with
// Litestream for the upload only, never opened: this node may not write it.
func (r *router) finishRelease(ctx context.Context, t *tenant) bool {
	if err := t.lockWriter(ctx); err != nil {
		return false
	}
	defer t.unlockWriter()
	lease := t.unreleased
	if lease == nil || t.lease != nil || t.registered.Load() {
		return false // none, or taken again since (own drops it): synced as usual
	}
	if r.dirChanged() != nil {
		// t.path is another directory's file now (Dir, a symlink, pointed
		// elsewhere): uploaded, it became this tenant's replica, released
		// at its position (adv44). The lease stays unreleased.
		return true
	}
	if err := r.repl.register(ctx, t.path, t.replicaKey()); err != nil {
		return true
	}
	pos, err := r.repl.release(t.path)
	if err != nil {
		return true // still down: the next resync tries again
	}
	rctx, cancel := context.WithTimeout(context.Background(), releaseTimeout)
	defer cancel()
	if err := lease.Release(rctx, pos); err != nil {
		return true
	}
	t.unreleased = nil
	t.unsynced.Store(false)
	removeIfExists(unsyncedMarker(t.path))
	r.repl.mu.Lock()
	delete(r.repl.behind, t)
	r.repl.mu.Unlock()
	r.released(t.id, lease) // with its final position, as releaseLease does
	r.tel.ownership(t.tel, "released")
	return true
}

// syncBehind tries once more, as Close begins, the closed tenants whose
// final sync failed (the resync retries them every resyncEvery; at Close
// there is no later): each is opened, which registers it, and synced, and
// Close's eviction then syncs it as it unregisters it. Bounded by
// replicaTimeout in all; what still fails, Close reports.
func (r *router) syncBehind() {
	behind := r.repl.behindTenants()
	if len(behind) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), replicaTimeout)
	defer cancel()
	for _, t := range behind {
		if ctx.Err() != nil {
			return
		}
		r.syncClosed(ctx, t)
	}
}

// catchUp syncs open tenant t to its replica if the replica is behind,
// and keeps t's ReplicaLag.
func (r *router) catchUp(t *tenant) {
	ctx, cancel := context.WithTimeout(context.Background(), releaseTimeout)
	defer cancel()
	var out syncResult
	seen := t.regs.Load()
	unlock := r.repl.lockCalls(t.path, false)
	err := r.repl.call(ctx, http.MethodPost, "/sync", map[string]any{"path": t.path, "timeout": 1}, &out)
	unlock()
	if err != nil {
		t.lagSince.CompareAndSwap(0, time.Now().UnixNano()) // cannot vouch for the replica
		if !notRegistered(err) || r.reregister(ctx, t, seen) != nil {
			return
		}
		// Streamed again: sync what it missed.
	} else if out.ReplicatedTXID >= out.TXID {
		t.lagSince.Store(0)
		return
	}
	t.lagSince.CompareAndSwap(0, time.Now().UnixNano())
	start := time.Now()
	_, err = r.repl.sync(ctx, t.path)
	r.tel.synced(ctx, t.tel, start, err)
	if err == nil {
		t.lagSince.Store(0)
	}
}

// reconcile makes t's local file agree with its replica before t is
// registered (the caller holds t's writer semaphore; t is not open here)
// and reports whether t exists. A tenant missing here but present in the
// replica is restored. A local copy that is behind its replica (the tenant
// was written elsewhere since this copy was last streamed) is replaced by
// the replica: registered as it is, Litestream would publish the stale copy
// as the replica's new head. A copy restored on purpose (RestoreTenant,
// RestoreTenantAt) is kept: it is meant to become the head.
//
// It runs within t's open gate g (shared): a restore or delete in another
// process (the CLI's) replaces the file under it, and a decision taken on
// what reconcile read before that (a position, a marker) undid the restore
// or removed its marker. A download from the replica leaves the gate
// (restoreReplica) and fails with errFilesChanged if t's files changed
// meanwhile.
func (r *router) reconcile(ctx context.Context, t *tenant, exists bool, g *heldGate) (bool, error) {
	// Close ends every call to the object store below (an operation Close
	// waits for): a listing on a store that never answers held Close.
	ctx, cancel := untilClosed(ctx, r.stop)
	defer cancel()
	ok, err := r.reconcileUntilClosed(ctx, t, exists, g)
	if err != nil && !errors.Is(err, ErrClosed) && errors.Is(context.Cause(ctx), ErrClosed) {
		err = opError(opOpenTenant, t.id, fmt.Errorf("%w (%v)", ErrClosed, err))
	}
	return ok, err
}

// reconcileGated runs reconcile within t's open gate, again (a few times)
// when t's files changed while it downloaded the replica. exists says
// whether t's file was found (by openWriterOnce, which checked it); after
// a change it is looked at again in the same way.
func (r *router) reconcileGated(ctx context.Context, t *tenant, exists bool) (bool, error) {
	for tries := 1; ; tries++ {
		g := &heldGate{r: r, id: t.id}
		if err := g.enter(ctx); err != nil {
			return exists, opError(opOpenTenant, t.id, err)
		}
		ok, err := r.reconcile(ctx, t, exists, g)
		g.leave()
		if !errors.Is(err, errFilesChanged) {
			return ok, err
		}
		if tries == 3 {
			return ok, opError(opOpenTenant, t.id, fmt.Errorf("%w, %d times: retry", errFilesChanged, tries))
		}
		fi, err := t.statUnlinked()
		if err != nil {
			return fi != nil, err
		}
		exists = fi != nil
	}
}

// errFilesChanged: a tenant's file or its markers changed (a restore or
// delete by another process) while reconcile downloaded its replica, which
// the decision to download rested on.
var errFilesChanged = errors.New("the tenant's files were replaced or removed by another process (a restore or delete) while its replica was downloaded")

// heldGate is a tenant's open gate (enterGate, shared), which reconcile
// leaves while it downloads.
type heldGate struct {
	r    *router
	id   string
	exit func() // leaves it; nil while not held
}

func (g *heldGate) enter(ctx context.Context) error {
	exit, err := enterGate(ctx, g.r.stop, g.r.cfg.BusyTimeout, g.r.presence, g.id, false)
	if err == nil {
		g.exit = exit
	}
	return err
}

// leave leaves the gate if held.
func (g *heldGate) leave() {
	if g.exit != nil {
		g.exit()
		g.exit = nil
	}
}

// filesState is what reconcile's decisions rest on in the files of the
// tenant whose file is at p: the file's and each marker's identity (absent,
// or device and inode, size and modification time) and Litestream's
// position beside it.
type filesState struct {
	files [8]fileIdent
	pos   uint64
	err   string
}

type fileIdent struct {
	key       string // fileKey; an error's text; "" for absent
	size, mod int64
}

// identOf is the identity of the file fi describes.
func identOf(fi os.FileInfo) fileIdent {
	return fileIdent{key: "file " + fileKey(fi), size: fi.Size(), mod: fi.ModTime().UnixNano()}
}

func filesOf(p string) (s filesState) {
	// The -wal too: a commit by another process (a proxy without
	// replication) lands there, not in the file (adv31).
	for i, name := range [...]string{p, p + "-wal", p + "-journal", restoredMarker(p), fromReplicaMarker(p), genMarker(p), deletedMarker(p), unsyncedMarker(p)} {
		fi, err := os.Lstat(name)
		switch {
		case err == nil:
			s.files[i] = identOf(fi)
		case !errors.Is(err, fs.ErrNotExist):
			s.files[i] = fileIdent{key: err.Error()}
		}
	}
	var err error
	if s.pos, err = localPos(p); err != nil {
		s.err = err.Error()
	}
	return s
}

// reconcileUntilClosed is reconcile with ctx ended by Close.
func (r *router) reconcileUntilClosed(ctx context.Context, t *tenant, exists bool, g *heldGate) (bool, error) {
	if err := r.eraseDeleted(ctx, t, exists); err != nil {
		return exists, err
	}
	if gen := t.gen.Load(); gen > 0 && deletedFloor(t.lease) >= gen {
		// This lease recorded its own generation deleted (a delete whose
		// erasure failed), and the tenant is opened under it all the same:
		// its marker was removed (the delete undone on purpose, to restore
		// the tenant from its replica). What it writes now goes into this
		// generation, which the next owner skipped and erased (adv38).
		if err := recordDelete(ctx, t, gen-1); err != nil {
			return exists, opError(opOpenTenant, t.id, fmt.Errorf("its delete could not be undone in the cluster's record: %w", err))
		}
	}
	if gen := t.gen.Load(); gen != 0 && (!exists || readGenMarker(t.path) != gen) {
		return r.reconcileGen(ctx, t, exists, g) // ownership.go
	}
	if !exists {
		pos, err := r.repl.replicaPos(ctx, t.replicaKey())
		if err != nil && !errors.Is(err, errUnsupported) {
			return false, opError(opRestoreReplica, t.id, err)
		}
		return r.restoreReplica(ctx, t, false, t.replicaKey(), pos, g)
	}
	local, err := localPos(t.path)
	if err != nil {
		return true, opError(opOpenTenant, t.id, err)
	}
	if reconcileRead != nil {
		reconcileRead(t.id)
	}
	if ok, b, err := restoredOnPurpose(t.path, local); err != nil {
		return true, opError(opOpenTenant, t.id, err)
	} else if ok {
		// Kept, and its marker until Litestream has a position of it;
		// unless another node wrote the replica since (restoreBound).
		if b == nil {
			return true, nil
		}
		remote, err := r.repl.replicaPos(ctx, t.replicaKey())
		if err != nil || remote <= b.pos {
			return true, nil // the store down: looked at again at the next open
		}
		return true, opError(opOpenTenant, t.id, replicaConflict(t.path, remote,
			fmt.Sprintf("was restored on purpose here when the replica was at transaction %d, and not streamed yet; the replica was written since", b.pos)))
	}
	fr, err := readFromReplica(t.path, local, true)
	if err != nil {
		return true, opError(opOpenTenant, t.id, err)
	}
	unknown := local == 0 && !fr.ok && readGenMarker(t.path) == 0
	key := t.replicaKey()
	remote, err := r.repl.replicaPos(ctx, key)
	if errors.Is(err, errUnsupported) || (err != nil && !unknown) {
		// Not listable (another kind of replica), or the object store is
		// down: writes go on with the local copy, which is this node's own.
		return true, nil
	}
	if err != nil {
		return true, opError(opOpenTenant, t.id, fmt.Errorf("%s was never streamed, and whether the replica holds another copy of the tenant cannot be told: %w", t.path, err))
	}
	switch {
	case remote <= local:
		return true, nil
	case unknown:
		return true, opError(opOpenTenant, t.id, replicaConflict(t.path, remote, "was never streamed"))
	case fr.ok && fr.key == key && remote == fr.pos:
		// Restored from the replica's head, which has not moved since:
		// the file holds all of it, and what was written here since
		// (before Litestream's first file of it, or by a proxy without
		// replication). Replaced, those acknowledged rows were lost.
		return true, nil
	case fr.ok && fr.written:
		return true, opError(opOpenTenant, t.id, replicaConflict(t.path, remote,
			fmt.Sprintf("was restored from the replica at transaction %d and written here since without being streamed, and the replica has moved on", fr.pos)))
	}
	if _, err := r.restoreReplica(ctx, t, true, key, remote, g); err != nil {
		return true, err
	}
	return true, nil
}

// lockUnusedFile takes the locks that tell whether a process uses the
// tenant file at p and keep one from starting, or fails with errShmInUse:
// the -shm's (every connection in WAL mode holds it; lockUnusedShm) and the
// database file's own (lockUnusedDatabase: a connection in
// locking_mode=EXCLUSIVE keeps its WAL index in memory and holds no -shm,
// and its row, acknowledged, was in the -wal the replacement removed,
// adv32). A registration with Litestream this process does not hold (a
// call whose answer was lost) is ended first (dropStray). release gives
// both back.
func (r *router) lockUnusedFile(ctx context.Context, p string) (release func(), err error) {
	for try := 0; ; try++ {
		shm, err := lockUnusedShm(p + "-shm")
		if err == nil {
			db, derr := lockUnusedDatabase(p, true)
			if derr == nil {
				return func() { db(); shm() }, nil
			}
			shm()
			err = derr
		}
		if !errors.Is(err, errShmInUse) || try > 0 || !r.repl.dropStray(ctx, p) {
			return nil, err
		}
	}
}

// reconcileRead, set by tests, runs once reconcile has read the local
// position of an existing tenant file, before it acts on it.
var reconcileRead func(id string)

// restoreReplica restores t from its replica under key, at position pos
// (at least: read before the restore), into place (replacing the local file
// when replace) and reports whether the replica had it. The copy is checked
// (quick_check) before it takes t's name; its migrations are applied when it
// is opened. The download and check run outside t's open gate g (held by
// the caller): another tenant sharing its slot, or a restore or delete of
// t by another process, waited for them; the copy takes t's name only if
// t's files are as they were (errFilesChanged).
func (r *router) restoreReplica(ctx context.Context, t *tenant, replace bool, key string, pos uint64, g *heldGate) (restored bool, err error) {
	start := time.Now()
	defer func() {
		outcome := outcomeRestored
		switch {
		case err != nil:
			outcome = outcomeFailed
		case !restored:
			outcome = outcomeNotFound
		case replace:
			outcome = outcomeReplaced
		}
		r.tel.restoredFromReplica(ctx, t.tel, outcome, start)
	}()
	if err := r.makeTenantDir(t); err != nil {
		return false, opError(opRestoreReplica, t.id, err)
	}
	tmp := tempName(filepath.Dir(t.path), restoringPrefix, t.id)
	defer removeWithSideFiles(tmp)
	before := filesOf(t.path)
	g.leave()
	err = r.repl.restore(ctx, key, tmp, time.Time{})
	if err == nil {
		err = checkFile(ctx, tmp)
	}
	if gerr := g.enter(ctx); gerr != nil {
		return false, opError(opRestoreReplica, t.id, gerr)
	}
	if filesOf(t.path) != before {
		return false, errFilesChanged
	}
	if errors.Is(err, errNoReplica) {
		return false, nil
	}
	if err == nil {
		err = os.Chmod(tmp, 0o600)
	}
	if err == nil {
		// Not into another data directory (Dir, a symlink, pointed
		// elsewhere since New): the open is refused there after it.
		err = r.dirChanged()
	}
	if err == nil {
		// Until Litestream has a position of it, the copy is known for the
		// replica's (fromReplica): a kill before then does not make it
		// another history, nor lose what was written to it meanwhile.
		err = markFromReplica(t.path, tmp, key, pos)
	}
	if err == nil && replace {
		// Not under another process that has it open (a proxy without
		// replication, a sqlite3 shell): its commits since, in the -wal
		// removed here, were lost (adv31). Held until the rename, the locks
		// also keep such a process from opening it meanwhile.
		var release func()
		if release, err = r.lockUnusedFile(ctx, t.path); errors.Is(err, errShmInUse) {
			err = fmt.Errorf("%s is open in another process (a proxy without replication? a sqlite3 shell?), and behind its replica, which would replace it under that process: stop it first", t.path)
		} else if err == nil {
			defer release()
		}
	}
	if err == nil && replace {
		// The old file's side files go (a -shm left behind, which
		// Litestream's process still had open, failed the next open with
		// "disk I/O error"), then its Litestream files, after the rename:
		// killed before it, the old file keeps its position (it is behind,
		// and replaced again), not "never streamed".
		err = removeSideFiles(t.path)
		if err == nil {
			err = os.Rename(tmp, t.path)
		}
		if err == nil {
			// Litestream's files for the older copy would not match this one.
			err = os.RemoveAll(metaDir(t.path))
		}
	} else if err == nil {
		// Side files of a file deleted there would be replayed into the
		// copy from the replica, and its Litestream files would not match.
		if err = removeOrphanSideFiles(t.path); err == nil {
			err = os.RemoveAll(metaDir(t.path))
		}
		if err == nil {
			err = os.Link(tmp, t.path)
		}
		if errors.Is(err, os.ErrExist) {
			return true, nil // made meanwhile by another process
		}
	}
	if err == nil {
		err = syncDir(filepath.Dir(t.path))
	}
	if err != nil {
		return false, opError(opRestoreReplica, t.id, err)
	}
	t.ready.Store(false)
	return true, nil
}

// CheckReplication reports whether replication can work now: Litestream
// answers on its control socket (Config.LitestreamSocket, GET /info), and the
// object store of Config.ReplicaURL answers a listing with the credentials
// of the environment (one request: a missing bucket, wrong credentials or
// endpoint fail it; a file:// replica's folder, or its parent, must be a
// directory). Call it at start-up to fail early: New checks neither, since
// Litestream may start after the service and the store may be down a while
// (writes go on here and are uploaded later), and each first access of a
// tenant would fail instead. A ctx without deadline is bounded (5 s). It
// fails when replication is off.
func (p *Proxy) CheckReplication(ctx context.Context) error {
	const op = opCheckRepl
	r := p.c.r
	if r.repl == nil {
		return opError(op, "", errNoReplication)
	}
	ctx, cancel := untilClosed(ctx, r.stop)
	defer cancel()
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, releaseTimeout)
		defer cancel()
	}
	var info struct {
		Version string `json:"version"`
		PID     int    `json:"pid"`
	}
	err := r.repl.call(ctx, http.MethodGet, "/info", nil, &info)
	if err == nil && info.PID == 0 {
		err = errors.New("its answer to GET /info names no process")
	}
	if err != nil {
		return opError(op, "", fmt.Errorf("Litestream does not answer on its control socket %s (Config.LitestreamSocket): is `litestream replicate` running with it, socket enabled? (%w)", r.repl.socket, err))
	}
	if err := r.repl.probe(ctx); err != nil {
		return opError(op, "", fmt.Errorf("the replica store %s (Config.ReplicaURL) does not answer: %w", r.repl.base, err))
	}
	return nil
}

// probe asks the replica store one question that fails when it cannot be
// used (CheckReplication).
func (rp *replicator) probe(ctx context.Context) error {
	u, err := url.Parse(rp.base)
	if err != nil {
		return err
	}
	switch u.Scheme {
	case "file":
		dir := u.Path
		fi, err := os.Stat(dir)
		if errors.Is(err, fs.ErrNotExist) {
			dir = filepath.Dir(dir) // Litestream makes the folder, not its parent
			fi, err = os.Stat(dir)
		}
		if err == nil && !fi.IsDir() {
			err = fmt.Errorf("%s is not a directory", dir)
		}
		return err
	case "s3":
		c, prefix, err := s3lite.FromReplicaURL(rp.base)
		if err != nil {
			return err
		}
		return c.Probe(ctx, prefix+"/")
	}
	return nil // not a kind this driver lists: Litestream's first upload tells
}

// errNoReplication: an operation on replicas with Config.ReplicaURL unset.
var errNoReplication = errors.New("replication is off (Config.ReplicaURL is empty)")

// SyncTenant returns once everything the tenant committed before the call
// is in its replica: the barrier before acknowledging a write that must
// survive the loss of this machine. A tenant that is not open here was
// synced when it was closed; if that sync failed, or its file holds
// commits Litestream never uploaded (a process that died with it open; a
// file never streamed, from before replication was on), SyncTenant opens the
// tenant to sync it again. It fails with ErrTenantNotFound for a tenant
// that has no file here (even if its replica exists: nothing here to
// sync), when replication is off, and with
// Config.Ownership it fails with ErrNotOwner once this node's last lease on
// the tenant was lost (open here or not, until the node owns it again):
// what it wrote may not be in the generation another node now serves. A
// lease given up with its final position (eviction, a move) is not lost.
func (p *Proxy) SyncTenant(ctx context.Context, id string) error {
	const op = opSyncTenant
	r := p.c.r
	if r.repl == nil {
		return opError(op, id, errNoReplication)
	}
	t, err := p.tenantFor(op, id)
	if err != nil {
		return err
	}
	defer t.unpin()
	return r.syncTenant(ctx, t)
}

func (r *router) syncTenant(ctx context.Context, t *tenant) error {
	for {
		if t.registered.Load() {
			start := time.Now()
			seen := t.regs.Load()
			_, err := r.repl.sync(ctx, t.path)
			r.tel.synced(ctx, t.tel, start, err)
			if err == nil {
				t.lagSince.Store(0)
			}
			if notRegistered(err) {
				// Unregistered meanwhile (and synced by that), or
				// Litestream restarted and forgot it: register it again.
				if err := r.reregister(ctx, t, seen); err != nil {
					return opError(opSyncTenant, t.id, err)
				}
				continue
			}
			if err != nil {
				return opError(opSyncTenant, t.id, err)
			}
			if err := removeIfExists(unsyncedMarker(t.path)); err != nil {
				return opError(opSyncTenant, t.id, err)
			}
			return r.stillOwned(t)
		}
		if err := r.stillOwned(t); err != nil {
			// Closed because its lease was lost: whatever its last sync
			// did, it may not be in the generation another node serves.
			return err
		}
		if _, err := os.Lstat(unsyncedMarker(t.path)); !t.unsynced.Load() && err != nil {
			if err := t.mustExist(opSyncTenant); err != nil {
				return err // a typo'd ID is not "synced"
			}
			// Synced when it was closed, unless its -wal holds commits
			// past what Litestream last uploaded of it (a process that
			// died with the tenant open), or Litestream never streamed it
			// (replication turned on for a directory that had tenants; a
			// file the CLI made): then it is opened and synced. Either
			// said nil with the replica short of them (walk24).
			if synced, err := r.syncedAtClose(ctx, t); err != nil {
				return opError(opSyncTenant, t.id, err)
			} else if synced {
				return nil
			}
		}
		// Its final sync failed (in this process, or in one before it), or
		// it holds what was never uploaded: open it (which registers it),
		// sync, and leave it to eviction to close it again.
		if _, err := t.acquireWriter(ctx); err != nil {
			return err
		}
		t.releaseWriter()
		t.unsynced.Store(false)
	}
}

// syncedAtClose reports whether the tenant file at p, not open here and not
// marked unsynced, holds nothing Litestream has not uploaded: Litestream
// has a position of the file, the -wal holds no commit past it, and the
// replica the file streams to is at that position at least (Litestream
// writes its files beside the database before it uploads them: a process
// killed with the store down left some never uploaded, adv28). The store
// down, it cannot tell, and says so.
func (r *router) syncedAtClose(ctx context.Context, t *tenant) (bool, error) {
	local, err := localPos(t.path)
	if err != nil || local == 0 {
		return false, err
	}
	if pending, err := walPending(t.path, local); err != nil || pending {
		return false, err
	}
	gen := t.gen.Load()
	if gen == 0 && r.cfg.Ownership != nil {
		gen = readGenMarker(t.path)
	}
	remote, err := r.repl.replicaPos(ctx, replicaKey(t.id, gen))
	if errors.Is(err, errUnsupported) {
		return true, nil // not listable: as Litestream's own files say
	}
	if err != nil {
		return false, fmt.Errorf("whether the replica holds all of it cannot be told: %w", err)
	}
	return remote >= local, nil
}

// RestoreTenantAt replaces the tenant's database with its replica as it was
// at the time at: exactly the transactions whose changes Litestream had
// uploaded before at (it uploads every second, and SyncTenant forces it).
// Like RestoreTenant it drains the tenant and swaps the file atomically;
// the restored state becomes the replica's new head. A time before the
// replica's first upload fails; one after its last (or the zero time)
// restores its latest.
// Without Config.ReplicaRestorer (litestream restore), a time within the
// second of the last upload fails too: litestream gives the files' times
// in whole seconds and cannot place it; replica.Restorer reads them
// exactly.
func (p *Proxy) RestoreTenantAt(ctx context.Context, id string, at time.Time) error {
	const op = opRestoreTenantAt
	r := p.c.r
	if r.repl == nil {
		return opError(op, id, errNoReplication)
	}
	if err := checkTenantID(id); err != nil {
		return opError(op, id, err)
	}
	return p.restoreFromReplica(ctx, op, id, r.repl, at)
}

// RestoreTenantFromReplica is RestoreTenantAt from the replica under
// replicaURL (a Config.ReplicaURL) with the litestream binary
// litestreamPath (empty: on PATH), for a proxy that does not stream (the
// ops CLI, with the service stopped): the restored copy is marked to
// become the replica's head when a streaming proxy next opens the tenant,
// instead of being taken for a stale copy and replaced by the replica's
// latest state.
func (p *Proxy) RestoreTenantFromReplica(ctx context.Context, id, replicaURL string, at time.Time, litestreamPath string) error {
	const op = opRestoreTenantAt
	rp, err := standaloneReplicator(op, id, replicaURL, litestreamPath)
	if err != nil {
		return err
	}
	if err := replicaApartFromDir(replicaURL, p.c.r.cfg.Dir); err != nil {
		// Nothing was written, but the data directory's folders (buckets)
		// were read as replicas, and "not in the replica" said nothing of
		// the mistake (adv48).
		return opError(op, id, err)
	}
	rp.stop = p.c.r.stop // Close ends the fetch
	return p.restoreFromReplica(ctx, op, id, rp, at)
}

// standaloneReplicator is a replicator for tenant id's replica under
// replicaURL that restores with litestreamPath (empty: litestream on PATH)
// and talks to no Litestream process.
func standaloneReplicator(op, id, replicaURL, litestreamPath string) (*replicator, error) {
	if err := checkTenantID(id); err != nil {
		return nil, opError(op, id, err)
	}
	if _, err := tenantReplicaURL(replicaURL, id); err != nil {
		return nil, opError(op, id, err)
	}
	if litestreamPath == "" {
		litestreamPath = DefaultLitestreamPath
	}
	return &replicator{base: replicaURL, bin: litestreamPath}, nil
}

func (p *Proxy) restoreFromReplica(ctx context.Context, op, id string, rp *replicator, at time.Time) error {
	gen := int64(-1) // the generation the copy came from
	return p.restoreChecked(ctx, op, id, true, func(tmp string) error {
		stage := tmp + replicaStageSuffix
		defer removeWithSideFiles(stage)
		g, err := rp.fetch(ctx, id, at, stage)
		if err != nil {
			return err
		}
		gen = g
		return copyVerified(ctx, stage, tmp, p.c.r.cfg.BusyTimeout)
	}, func(t *tenant) error {
		// Read before the lease was taken: a generation a delete recorded
		// in the cluster is not the tenant any more, whatever it holds
		// (a former owner's late upload; a pending delete's replica not
		// erased yet), and the restore made the deleted rows the head
		// (adv39).
		if floor := deletedFloor(t.lease); gen >= 0 && gen <= floor {
			return fmt.Errorf("the replica's newest generation (%d) was deleted (a DeleteTenant recorded in the cluster): restore the tenant from a backup", gen)
		}
		return nil
	})
}

// replicaStageSuffix names the file a restore from a replica fetches into,
// beside the restore's own temporary file.
const replicaStageSuffix = ".replica"

// FetchReplica writes tenant id's replica under replicaURL (a
// Config.ReplicaURL), as it was at the time at (zero: its latest state),
// into the new file dst, with the litestream binary litestreamPath (empty:
// litestream on PATH). It fails with ErrTenantNotFound when the replica
// holds nothing for id, and for a time before its first upload. The file is
// not checked: RestoreTenant(ctx, id, dst) checks it and swaps it in.
func FetchReplica(ctx context.Context, replicaURL, id string, at time.Time, dst, litestreamPath string) error {
	const op = "fetch replica"
	rp, err := standaloneReplicator(op, id, replicaURL, litestreamPath)
	if err != nil {
		return err
	}
	if _, err := rp.fetch(ctx, id, at, dst); err != nil {
		return opError(op, id, err)
	}
	return nil
}

// fetch restores tenant id's replica as it was at at (zero: latest) into
// dst. A replica written by a cluster (Config.Ownership) holds one
// generation per lease; fetch reads the newest one that holds data, so a
// point in time before it began is not reached.
func (rp *replicator) fetch(ctx context.Context, id string, at time.Time, dst string) (gen int64, err error) {
	key, gen, _, err := rp.newestGeneration(ctx, id, -1, math.MaxInt64)
	if errors.Is(err, errUnsupported) || (err == nil && key == "") {
		key, gen, err = id, 0, nil
	}
	if err != nil {
		return 0, err
	}
	defer func() {
		if err != nil {
			gen = 0
		}
	}()
	err = rp.restore(ctx, key, dst, at)
	if err != nil && strings.Contains(err.Error(), "timestamp does not exist") {
		// Before the first upload or after the last: Litestream says the
		// same of both. After the last, the latest state is the state at
		// that time.
		// litestream ltx gives the files' times in whole seconds: a time
		// within the second of the last upload may be before it (and
		// Litestream's own check reads the store's times, whole seconds on
		// S3), so the latest state is the state at at only a second later.
		last, lerr := rp.lastUpload(ctx, key)
		switch {
		case lerr == nil && !last.IsZero() && !at.Before(last.Add(time.Second)):
			err = rp.restore(ctx, key, dst, time.Time{})
		case lerr == nil && !last.IsZero() && !at.Before(last) && rp.restorer != nil:
			err = fmt.Errorf("%s is within the second of the replica's last upload (%s), where its files' times (whole seconds on S3) cannot place it: restore at another time (%w)",
				at.UTC().Format(time.RFC3339Nano), last.UTC().Format(time.RFC3339), err)
		case lerr == nil && !last.IsZero() && !at.Before(last):
			err = fmt.Errorf("%s is within the second of the replica's last upload (%s), which litestream restore cannot place it against "+
				"(its times are whole seconds): restore at another time, or set Config.ReplicaRestorer to replica.Restorer, which reads them exactly (%w)",
				at.UTC().Format(time.RFC3339Nano), last.UTC().Format(time.RFC3339), err)
		case lerr == nil && !last.IsZero():
			err = fmt.Errorf("the replica holds no state as early as %s (%w)", at.UTC().Format(time.RFC3339Nano), err)
		}
	}
	if errors.Is(err, errNoReplica) {
		return 0, ErrTenantNotFound
	}
	return gen, err
}

// lastUpload returns the time of the newest file in the replica under key.
func (rp *replicator) lastUpload(ctx context.Context, key string) (time.Time, error) {
	cmd := exec.CommandContext(ctx, rp.bin, "ltx", "-json", "-level", "all", rp.url(key))
	cmd.Env = litestreamEnv()
	out, err := cmd.Output()
	if err != nil {
		return time.Time{}, fmt.Errorf("litestream ltx: %w", err)
	}
	var files []struct {
		Timestamp time.Time `json:"timestamp"`
	}
	if err := json.Unmarshal(out, &files); err != nil {
		return time.Time{}, fmt.Errorf("litestream ltx: %w", err)
	}
	var last time.Time
	for _, f := range files {
		if f.Timestamp.After(last) {
			last = f.Timestamp
		}
	}
	return last, nil
}

// deleteReplica erases tenant id's replica and reports whether there was
// one: file:// and s3:// replicas (see internal/s3lite); others are an error
// that says so.
func (rp *replicator) deleteReplica(ctx context.Context, id string) (bool, error) {
	return rp.deleteKey(ctx, id)
}

// eraseLate erases the replica of t, which DeleteTenant has just deleted
// and erased, again after eraseSettle, and again for as long as that finds
// something (eraseRounds at most). Litestream may still be writing it:
// Store.UnregisterDB (v0.5.18) does not wait for a compaction its store
// started on the database, which then uploads a level-1 file after the
// erase; the deleted rows came back at the next access
// (TestProxy_DeleteDuringRestoreOnOpen, once under load: the compaction
// Litestream starts when it finds a restored database behind its replica).
// Best effort: it stops when ctx ends, the proxy closes or an erase fails,
// and once another process has made the tenant again (its file there, or
// the delete's marker gone: that process's open erased the replica
// itself), whose replica it must not touch.
func (r *router) eraseLate(ctx context.Context, t *tenant) {
	for range eraseRounds {
		if r.pause(ctx, eraseSettle) != nil {
			return
		}
		if _, err := os.Lstat(t.path); !errors.Is(err, fs.ErrNotExist) {
			return
		}
		if _, err := os.Lstat(deletedMarker(t.path)); err != nil {
			return
		}
		if again, err := r.repl.deleteReplica(ctx, t.id); err != nil || !again {
			return
		}
	}
}

// eraseSettle is how long eraseLate waits before each erase, eraseRounds
// how many times at most.
const (
	eraseSettle = time.Second
	eraseRounds = 5
)

// deleteKey erases the replica at key (a tenant's, <id>, with every
// generation in it; or one generation's, <id>/g<N>), and reports whether
// there was anything to erase.
func (rp *replicator) deleteKey(ctx context.Context, key string) (bool, error) {
	if err := rp.checkFolder(key); err != nil {
		return false, err
	}
	raw := rp.url(key)
	u, err := url.Parse(raw)
	if err != nil {
		return false, err
	}
	switch u.Scheme {
	case "file":
		if _, err := os.Stat(u.Path); errors.Is(err, os.ErrNotExist) {
			return false, nil
		} else if err != nil {
			return false, err
		}
		return true, os.RemoveAll(u.Path)
	case "s3":
		c, prefix, err := s3lite.FromReplicaURL(raw)
		if err != nil {
			return false, err
		}
		n, err := c.DeletePrefix(ctx, prefix)
		return n > 0, err
	}
	return false, fmt.Errorf("erasing a %s:// replica is not supported: erase %s by other means", u.Scheme, raw)
}

// replicaApartFromDir refuses a file:// replica root that is dir, lies
// inside it or holds it: deleting tenant "data"'s replica of file:///srv
// with Dir /srv/data removed the whole data directory, and Litestream wrote
// its trees among the tenant files.
func replicaApartFromDir(base, dir string) error {
	u, err := url.Parse(base)
	if err != nil || u.Scheme != "file" {
		return err
	}
	root := filepath.Clean(u.Path)
	lexical := func(a, b string) bool { // a is b or under it
		return a == b || strings.HasPrefix(a, strings.TrimSuffix(b, string(filepath.Separator))+string(filepath.Separator))
	}
	overlap := lexical(root, dir) || lexical(dir, root)
	for _, pair := range [][2]string{{root, dir}, {dir, root}} {
		if overlap {
			break
		}
		if overlap, err = dirs.Inside(pair[0], pair[1]); err != nil {
			return err
		}
	}
	if overlap {
		return fmt.Errorf("%q and the data directory %q overlap: a tenant's replica would be a folder of the data directory (or the other way round), and erasing it would erase tenants: keep replicas apart from it", base, dir)
	}
	return nil
}

// errUnsupported: the replica's kind cannot be listed by the driver.
var errUnsupported = errors.New("not supported for this kind of replica")

// readDirIfExists is os.ReadDir with a missing directory read as empty.
func readDirIfExists(dir string) ([]os.DirEntry, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	return ents, err
}

// localPos returns the position Litestream recorded beside the file at p:
// the highest TXID of its local level-0 files (0: none; Litestream always
// keeps the newest one).
func localPos(p string) (uint64, error) {
	ents, err := readDirIfExists(path.Join(metaDir(p), "ltx", "0"))
	if err != nil {
		return 0, err
	}
	var pos uint64
	for _, e := range ents {
		pos = max(pos, ltxMaxTXID(e.Name()))
	}
	return pos, nil
}

// ltxMaxTXID returns the max TXID in an LTX file name
// (<min 16 hex>-<max 16 hex>.ltx), 0 if the name is not one.
func ltxMaxTXID(name string) uint64 {
	base, ok := strings.CutSuffix(path.Base(name), ".ltx")
	_, hi, found := strings.Cut(base, "-")
	if !ok || !found || len(hi) != 16 {
		return 0
	}
	n, err := strconv.ParseUint(hi, 16, 64)
	if err != nil {
		return 0
	}
	return n
}

// replicaPos returns the highest TXID in tenant id's replica, all levels
// (0: empty).
func (rp *replicator) replicaPos(ctx context.Context, key string) (uint64, error) {
	files, err := rp.ltxFiles(ctx, key)
	var pos uint64
	for _, f := range files {
		pos = max(pos, f.maxTXID)
	}
	return pos, err
}

// uncompacted counts the level-0 files of tenant id's replica that no file
// of a higher level covers yet.
func (rp *replicator) uncompacted(ctx context.Context, key string) (int, error) {
	files, err := rp.ltxFiles(ctx, key)
	if err != nil {
		return 0, err
	}
	var compacted uint64
	for _, f := range files {
		if f.level > 0 {
			compacted = max(compacted, f.maxTXID)
		}
	}
	n := 0
	for _, f := range files {
		if f.level == 0 && f.maxTXID > compacted {
			n++
		}
	}
	return n, nil
}

// ltxFile is an LTX file of a replica: its level and highest TXID.
type ltxFile struct {
	level   int
	maxTXID uint64
}

// ltxFiles lists the LTX files of tenant id's replica, every level: one
// directory walk for file:// (<path>/ltx/<level>/), one listing for s3://
// (<prefix>/<level as %04x>/).
func (rp *replicator) ltxFiles(ctx context.Context, key string) ([]ltxFile, error) {
	raw := rp.url(key)
	u, err := url.Parse(raw)
	if err != nil {
		return nil, err
	}
	var files []ltxFile
	add := func(level, name string, base int) {
		n, err := strconv.ParseUint(level, base, 16)
		if tx := ltxMaxTXID(name); err == nil && tx > 0 {
			files = append(files, ltxFile{level: int(n), maxTXID: tx})
		}
	}
	switch u.Scheme {
	case "file":
		levels, err := readDirIfExists(path.Join(u.Path, "ltx"))
		if err != nil {
			return nil, err
		}
		for _, l := range levels {
			ents, err := os.ReadDir(path.Join(u.Path, "ltx", l.Name()))
			if err != nil {
				return nil, err
			}
			for _, e := range ents {
				add(l.Name(), e.Name(), 10)
			}
		}
		return files, nil
	case "s3":
		objs, _, err := listS3(ctx, raw, "")
		if err != nil {
			return nil, err
		}
		for _, o := range objs {
			dir, name := path.Split(o.Key)
			add(path.Base(dir), name, 16)
		}
		return files, nil
	}
	return nil, errUnsupported
}

// listS3 lists the objects under the s3:// replica URL raw (with
// delimiter, the common prefixes too).
func listS3(ctx context.Context, raw, delimiter string) ([]s3lite.Object, []string, error) {
	c, prefix, err := s3lite.FromReplicaURL(raw)
	if err != nil {
		return nil, nil, err
	}
	return c.List(ctx, prefix+"/", delimiter)
}

// compactAfter is how many level-0 files not yet compacted a closed
// tenant's replica may hold before it is compacted (Config.ReplicaCompactor).
const compactAfter = 8

// compactTimeout bounds one compaction.
const compactTimeout = time.Minute

// queueCompaction asks the compaction goroutine to look at t, just closed.
// A full queue drops it: t is queued again when it is closed next. A
// queued tenant is pinned, so that it stays the object of its ID.
func (r *router) queueCompaction(t *tenant) {
	if r.compactQ == nil || !t.pin() {
		return
	}
	select {
	case r.compactQ <- t:
	default:
		t.unpin()
	}
}

// compactLoop compacts the replicas of closed tenants that need it, one at
// a time, until the router closes.
func (r *router) compactLoop() {
	defer r.reaperWG.Done()
	ctx, cancel := r.untilStop()
	defer cancel()
	for {
		select {
		case <-r.stop:
			return
		case t := <-r.compactQ:
			r.compact(ctx, t)
			t.unpin()
		}
	}
}

// compact compacts t's replica if it holds compactAfter or more level-0
// files not yet compacted and t is closed. It holds t's writer semaphore
// meanwhile, so t is not opened (and streamed again) before it is done.
func (r *router) compact(ctx context.Context, t *tenant) {
	n, err := r.repl.uncompacted(ctx, t.replicaKey())
	if err != nil || n < compactAfter {
		return
	}
	if !t.wsem.TryAcquire() {
		return // in use: queued again when it is closed
	}
	defer t.wsem.Release()
	if t.state.Load() != tenantActive || t.registered.Load() {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, compactTimeout)
	defer cancel()
	r.compactNow(ctx, t)
}

// compactNow compacts t's replica with Config.ReplicaCompactor, timed.
func (r *router) compactNow(ctx context.Context, t *tenant) {
	start := time.Now()
	err := r.repl.checkFolder(t.replicaKey())
	if err == nil {
		err = r.cfg.ReplicaCompactor.CompactReplica(ctx, r.repl.url(t.replicaKey()))
	}
	r.tel.compacted(ctx, t.tel, start, err)
}

// compactOwned compacts t's replica, as compact does, while this node still
// holds t's lease (Config.Ownership), before it releases it; the caller
// holds t's writer semaphore and has unregistered t. Compacted after the
// release, another node could take the tenant and delete it meanwhile: the
// compaction then wrote its files into the erased generation, deleted rows
// and all, which the next owner restored (soak34).
func (r *router) compactOwned(t *tenant) {
	if r.cfg.ReplicaCompactor == nil || leaseStale(t) {
		return
	}
	ctx, cancel := r.untilStop()
	defer cancel()
	ctx, cancel = context.WithTimeout(ctx, compactOwnedTimeout)
	defer cancel()
	if n, err := r.repl.uncompacted(ctx, t.replicaKey()); err == nil && n >= compactAfter {
		r.compactNow(ctx, t)
	}
}

// compactOwnedTimeout bounds compactOwned, which holds the tenant's writer
// and lease: well within a lease's TTL.
const compactOwnedTimeout = 5 * time.Second

// unsyncedMarker names the file that marks the tenant file at p as closed
// after a failed final sync: its last commits may be in the file only. The
// close that followed checkpointed them into the database and removed the
// WAL (Litestream, down, held no connection to keep it), where Litestream,
// registered again, does not look: it uploads them only once the tenant
// changes again, and a sync before that reported success without them.
// So an open with the mark writes a change that changes nothing (touchWAL),
// and a sync that succeeds after it removes the mark; replica positions
// count the mark as a transaction behind.
func unsyncedMarker(p string) string {
	return sideName(p, "-unsynced")
}

// touchWAL writes page 1 again as it is (user_version set to itself) on
// the writer c: a WAL frame that makes Litestream look at the database,
// find it changed outside its view, and upload it.
func touchWAL(ctx context.Context, c *sqlite3.SQLiteConn) error {
	v, err := queryInt64(ctx, c, "PRAGMA user_version")
	if err != nil {
		return err
	}
	_, err = c.ExecContext(ctx, "PRAGMA user_version = "+strconv.FormatInt(v, 10), nil)
	return err
}

// deletedMarker names the file that marks the tenant whose file was at p as
// deleted here while its replica is not erased yet (DeleteTenant with the
// object store down): an open restored it from the replica at its next
// access, deleted rows and all. While it is there, an open of the tenant
// erases the replica first, or fails; a DeleteTenant erases it too.
func deletedMarker(p string) string {
	return sideName(p, "-deleted")
}

// PendingDeletes returns the tenants of the data directory dir that were
// deleted here while their replica could not be erased (DeleteTenant with
// the object store down), in the order of Proxy.AllTenants. Until the
// replica is erased (by DeleteTenant again, or by a proxy with replication
// at the tenant's next access) the tenant is not made again here.
func PendingDeletes(ctx context.Context, dir string) ([]string, error) {
	st, err := readDirState(dir)
	if err != nil {
		return nil, opError(opListTenants, "", err)
	}
	var ids []string
	for id, err := range listEntries(ctx, dir, st.layout, deletedEntry) {
		if err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	return ids, nil
}

// deletedEntry returns the tenant ID whose deletedMarker e is.
func deletedEntry(e os.DirEntry) (string, bool) {
	name, ok := strings.CutPrefix(e.Name(), ".")
	if name, ok2 := strings.CutSuffix(name, "-deleted"); ok && ok2 && e.Type().IsRegular() {
		return tenantIDFromFile(name)
	}
	return "", false
}

// erasable reports whether deleteReplica can erase replicas of this kind.
func (rp *replicator) erasable() bool {
	u, err := url.Parse(rp.url("x"))
	return err == nil && (u.Scheme == "file" || u.Scheme == "s3")
}

// markDeleted writes t's deletedMarker, naming the generation of the copy
// deleted (0 without Ownership), synced. Power lost while it is written
// can leave it empty: an open then refuses the tenant (parseDeleted), as it
// does with no store, rather than take it for generation 0. Out of space
// (a delete is how space is freed), an empty marker is kept the same way.
func markDeleted(t *tenant) error {
	m := deletedMarker(t.path)
	err := writeSideFile(m, []byte("gen "+strconv.FormatInt(t.gen.Load(), 10)), true)
	if err == nil || !diskFull(err) {
		return err
	}
	// Full: an empty marker, which refuses the tenant when read, in place
	// of the old one (its inode is the one the new one takes). None at all
	// fails the delete: the next access restored the deleted rows (adv33).
	if rerr := os.Remove(m); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
		return err
	}
	if terr := touchFile(m); terr != nil {
		return errors.Join(err, terr)
	}
	if _, serr := os.Lstat(m); serr != nil {
		return errors.Join(err, serr)
	}
	syncDir(filepath.Dir(m))
	return nil
}

// parseDeleted reads a deletedMarker: the generation it names; ok is false
// for anything else.
func parseDeleted(b []byte) (gen int64, ok bool) {
	f := strings.Fields(string(b))
	if len(f) != 2 || f[0] != "gen" {
		return 0, false
	}
	gen, err := strconv.ParseInt(f[1], 10, 64)
	return gen, err == nil && gen >= 0
}

// eraseDeleted erases the replica of t, deleted here by a DeleteTenant that
// could not erase it (deletedMarker), before t is opened or made again:
// restored from it, the deleted tenant came back. A file found beside the
// marker is kept, and becomes the replica's head: made since by a proxy
// without replication (the CLI's create or restore), which the replica
// replaced, deleted rows and all; or left by a delete killed before it
// removed it (the delete did not happen, and the file is the tenant).
//
// The marker is this node's: with Ownership another node may have taken the
// tenant meanwhile, restored it from the replica and written it, in a
// generation newer than the one deleted. Erasing then lost that node's
// acknowledged writes: the marker goes, and the replica stays (the delete
// said it had failed). A marker written without Ownership (generation 0)
// erases whatever the replica holds.
func (r *router) eraseDeleted(ctx context.Context, t *tenant, exists bool) error {
	m := deletedMarker(t.path)
	b, err := readSideFile(m)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	} else if err != nil {
		return opError(opOpenTenant, t.id, err)
	}
	gen, ok := parseDeleted(b)
	if !ok {
		return opError(opOpenTenant, t.id, fmt.Errorf("deleted here, and its replica is not erased yet, but %s does not say which generation was deleted: run DeleteTenant again", m))
	}
	// Close ends it, as it ends a restore from the replica.
	ctx, cancel := untilClosed(ctx, r.stop)
	defer cancel()
	erase := true
	if gen != 0 && r.cfg.Ownership != nil {
		_, newest, _, err := r.repl.newestGeneration(ctx, t.id, -1, math.MaxInt64)
		if err != nil {
			return opError(opOpenTenant, t.id, fmt.Errorf("deleted here, and whether its replica was written since cannot be told: it is erased before the tenant is made again (%w)", err))
		}
		erase = newest <= gen
	}
	if erase {
		if _, err := r.repl.deleteReplica(ctx, t.id); err != nil {
			return opError(opOpenTenant, t.id, fmt.Errorf("deleted here, and its replica is not erased yet: it is erased before the tenant is made again (%w)", err))
		}
		if g := t.gen.Load(); g > 0 {
			// The delete marked every generation up to this lease's (the
			// older ones if it was recorded by an older lease): now that
			// they are erased, the tenant is made anew in this one.
			if err := recordDelete(ctx, t, g-1); err != nil {
				return opError(opOpenTenant, t.id, fmt.Errorf("deleted here, and its replica erased, but the delete could not be recorded (%w)", err))
			}
		}
		if exists {
			// Litestream's files beside it describe the erased replica.
			if err := errors.Join(os.RemoveAll(metaDir(t.path)), removeIfExists(fromReplicaMarker(t.path))); err != nil {
				return opError(opOpenTenant, t.id, err)
			}
		}
	}
	return opErrorOrNil(opOpenTenant, t.id, errors.Join(removeIfExists(m), syncDir(filepath.Dir(m))))
}

// refuseDeleted refuses a restore of t while a DeleteTenant's erasure of its
// replica is pending (deletedMarker): from the replica, it brought the
// deleted tenant back; from a file, the next open dropped the marker and the
// deleted rows stayed in the replica's history.
func refuseDeleted(op string, t *tenant) error {
	m := deletedMarker(t.path)
	if _, err := os.Lstat(m); errors.Is(err, os.ErrNotExist) {
		return nil
	} else if err != nil {
		return opError(op, t.id, err)
	}
	if t.r.cfg.Ownership != nil {
		// The delete is recorded in the cluster: no owner restores the
		// deleted generations any more (adv39).
		return opError(op, t.id, errors.New("deleted here, and its replica is not erased yet: run DeleteTenant again to erase it, then restore from a backup (the delete is recorded in the cluster: the replica's deleted generations are not restored from)"))
	}
	return opError(op, t.id, fmt.Errorf("deleted here, and its replica is not erased yet: run DeleteTenant again to erase it, then restore (to restore the deleted tenant from its replica instead, remove %s first)", m))
}

// restoredMarker names the file that marks the tenant file at p as restored
// on purpose (RestoreTenant, RestoreTenantAt): the next registration keeps
// it, however far behind the replica it is, and so makes it the head. It
// outlives this process: a tenant restored by the CLI while the service is
// stopped is kept too.
func restoredMarker(p string) string {
	return sideName(p, "-restored")
}

// markRestored marks the file at tmp, about to be renamed to the tenant
// file p, as restored on purpose: the marker holds tmp's fileKey, so that
// a restore killed before its rename leaves a marker that names a file
// other than p's and does not count (restoredOnPurpose).
//
// A restore in a proxy with replication also records b, what this node
// knew of the replica then: its generation (with Ownership) and the
// position Litestream had recorded beside the old file. Until Litestream
// has a position of the restored file (restoredOnPurpose), a replica
// written since by another node (a newer generation, or without
// Ownership a position past b's) supersedes the restore: it was written
// after it, acknowledged there. A restore without replication (the CLI's)
// knows nothing of the replica and is kept however far behind it is.
func markRestored(p, tmp string, b *restoreBound) error {
	fi, err := os.Stat(tmp)
	if err != nil {
		return err
	}
	return writeSideFile(restoredMarker(p), restoredText(fi, b), false)
}

// restoredText is what the restored marker of the file fi holds: its
// fileKey, and the bound b if any (read by markerNames).
func restoredText(fi os.FileInfo, b *restoreBound) []byte {
	if b == nil {
		return []byte(fileKey(fi))
	}
	return fmt.Appendf(nil, "%s\n%d %d", fileKey(fi), b.gen, b.pos)
}

// restoreBound is what a restore in a proxy with replication knew of the
// tenant's replica (markRestored).
type restoreBound struct {
	gen int64  // the generation this node owned (0: no Ownership)
	pos uint64 // the replica's position, or Litestream's beside the old file
}

// rewriteRestoredGen records gen in the restored marker of the tenant file
// p, which names p's file and has a bound: this node owns the tenant in gen
// now, nobody having owned it since the restore (reconcileGen).
func rewriteRestoredGen(p string, gen int64) error {
	ok, b, _, err := markerNames(restoredMarker(p), p)
	if err != nil || !ok || b == nil {
		return err
	}
	fi, err := os.Stat(p)
	if err != nil {
		return err
	}
	return writeSideFile(restoredMarker(p), restoredText(fi, &restoreBound{gen: gen, pos: b.pos}), true)
}

// marksFile reports whether the marker m names the file at p. A marker
// that names another file (left by a kill before its copy took p's name)
// is removed.
func marksFile(m, p string) (bool, *restoreBound, error) {
	ok, b, stale, err := markerNames(m, p)
	if stale {
		return false, nil, removeIfExists(m)
	}
	return ok, b, err
}

// markerNames reports whether the restored marker m names the file at p
// (ok; with the bound it records, if any), or exists and names another
// (stale); an empty marker names any file.
func markerNames(m, p string) (ok bool, b *restoreBound, stale bool, err error) {
	data, err := readSideFile(m)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil, false, nil
	} else if err != nil {
		return false, nil, false, err
	}
	if len(data) == 0 {
		return true, nil, false, nil
	}
	key, bound, hasBound := strings.Cut(string(data), "\n")
	if hasBound {
		var rb restoreBound
		if _, err := fmt.Sscanf(bound, "%d %d", &rb.gen, &rb.pos); err != nil {
			return false, nil, true, nil // cut short (power lost as it was written): a restore not to trust
		}
		b = &rb
	}
	if fi, err := os.Stat(p); err == nil && fileKey(fi) == key {
		return true, b, false, nil
	} else if err != nil && !errors.Is(err, os.ErrNotExist) {
		return false, nil, false, err
	}
	return false, nil, true, nil
}

// fromReplicaMarker names the file that marks the tenant file at p as
// restored by the proxy from its replica (restoreReplica), until
// Litestream has a position of it: Litestream writes its first file of a
// database a second or so after the registration, and a copy restored
// while Litestream was down is not registered at all (a proxy without
// replication may then write it). Read by readFromReplica.
func fromReplicaMarker(p string) string {
	return sideName(p, "-fromreplica")
}

// fromReplica is what fromReplicaMarker says of a tenant file.
type fromReplica struct {
	ok      bool   // the marker names the file (its fileKey)
	key     string // the replica it was restored from
	pos     uint64 // that replica's position before the restore (the copy's is at least that)
	written bool   // written since (size or modification time changed, or a WAL with frames)
}

// markFromReplica writes the fromReplicaMarker of the tenant file p for
// tmp, the copy restored from the replica under key at pos, about to take
// p's name (a link or a rename keeps its fileKey and modification time).
func markFromReplica(p, tmp, key string, pos uint64) error {
	fi, err := os.Stat(tmp)
	if err != nil {
		return err
	}
	return writeSideFile(fromReplicaMarker(p), fmt.Appendf(nil, "%s\n%d %d\n%d %s\n", fileKey(fi), fi.Size(), fi.ModTime().UnixNano(), pos, key), false)
}

// readFromReplica reads the fromReplicaMarker of the tenant file p, whose
// Litestream position is local. With a position, Litestream's files say
// where the copy stands, and the marker is dropped (with clean; so is one
// that names another file or cannot be read: left by a kill before its
// copy took p's name).
func readFromReplica(p string, local uint64, clean bool) (fromReplica, error) {
	m := fromReplicaMarker(p)
	drop := func() (fromReplica, error) {
		if clean {
			return fromReplica{}, removeIfExists(m)
		}
		return fromReplica{}, nil
	}
	b, err := readSideFile(m)
	if errors.Is(err, os.ErrNotExist) {
		return fromReplica{}, nil
	} else if err != nil {
		return fromReplica{}, err
	}
	if local > 0 {
		return drop()
	}
	fi, err := os.Stat(p)
	if errors.Is(err, os.ErrNotExist) {
		return drop()
	} else if err != nil {
		return fromReplica{}, err
	}
	lines := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	if len(lines) != 3 || lines[0] != fileKey(fi) {
		return drop()
	}
	var size, mtime int64
	if _, err := fmt.Sscanf(lines[1], "%d %d", &size, &mtime); err != nil {
		return drop()
	}
	posText, key, ok := strings.Cut(lines[2], " ")
	pos, err := strconv.ParseUint(posText, 10, 64)
	if !ok || err != nil || key == "" {
		return drop()
	}
	fr := fromReplica{ok: true, key: key, pos: pos}
	fr.written = fi.Size() != size || fi.ModTime().UnixNano() != mtime
	if wfi, err := os.Lstat(p + "-wal"); err == nil && wfi.Size() > walHeaderSize {
		fr.written = true
	}
	return fr, nil
}

// restoredOnPurposeRO is restoredOnPurpose, leaving a stale marker where
// it is.
func restoredOnPurposeRO(p string, local uint64) (bool, *restoreBound, error) {
	if local > 0 {
		return false, nil, nil
	}
	ok, b, _, err := markerNames(restoredMarker(p), p)
	return ok, b, err
}

// ErrReplicaConflict: a tenant's file here was never streamed (served
// without replication, or made by the CLI), and its replica holds another
// copy of the tenant. Neither is known to be the newer, so the tenant is
// not opened: the error says how to keep either.
var ErrReplicaConflict = errors.New("sqliteproxy: the tenant's file here and its replica are different copies")

// replicaConflict is ErrReplicaConflict for the file at p, which what says
// ("was never streamed"), and a replica at position remote.
func replicaConflict(p string, remote uint64, what string) error {
	return fmt.Errorf("%w: %s %s, and the replica holds another copy of the tenant (at transaction %d); neither is known to be the newer, so neither replaces the other. To keep the file here (it becomes the replica's head), make %s an empty file (create it, or empty it); to take the replica's copy instead, move the file (and its -wal) away", ErrReplicaConflict, p, what, remote, restoredMarker(p))
}

// restoredOnPurpose reports whether the tenant file at p, with Litestream's
// position local beside it, is marked restored on purpose: by a marker that
// names p's file, or an empty one (written before markers named their file,
// or where files have no fileKey), while Litestream has no position of it
// (the restore removed Litestream's files; once Litestream has made one,
// its positions continue the replica's and say the rest). A marker that
// names another file was left by a restore that never renamed its copy to
// p: it is removed, and p is not restored on purpose (its copy may be
// stale, and would become the replica's head); so is one outlived by a
// position.
func restoredOnPurpose(p string, local uint64) (bool, *restoreBound, error) {
	if local > 0 {
		return false, nil, removeIfExists(restoredMarker(p))
	}
	return marksFile(restoredMarker(p), p)
}

// touchFile creates an empty file at p (mode 0600) if there is none;
// anything there (a link included) is left as it is, and nothing is
// written through it.
func touchFile(p string) error {
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return nil
	}
	if err != nil {
		return err
	}
	return f.Close()
}

// writeSideFile replaces p, a file the driver keeps beside a tenant's file
// (a marker), with one holding b: written under a temporary name of its own
// beside it (markerTemp) and renamed over it, so that nothing is written
// through whatever p was (a symbolic or hard link to a file outside the
// data directory, which was truncated and overwritten, adv30 and adv31; a
// FIFO, whose open blocked a restore past its context, adv32), another name
// of the old file (a cp -al snapshot of the directory) keeps what it held,
// and two writers of one marker each rename a whole file. durable syncs the
// file and its folder. On failure (a full file system included) p is left
// as it was.
func writeSideFile(p string, b []byte, durable bool) error {
	tmp := markerTemp(p)
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil && durable {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, p)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	if durable {
		return syncDir(filepath.Dir(p))
	}
	return nil
}

// markerTemp names a temporary file for a new version of the marker p:
// "<p>.tmp-<16 hex digits>" (isMarkerRewrite; swept once old).
func markerTemp(p string) string {
	var b [8]byte
	rand.Read(b[:])
	return p + ".tmp-" + hex.EncodeToString(b[:])
}

// readSideFile reads the side file p (a marker): not through a symbolic
// link, and refusing without blocking anything but a regular file (a FIFO
// named as a marker held the open for ever).
func readSideFile(p string) ([]byte, error) {
	f, err := openRegular(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, 1<<16))
}

// removeIfExists removes p, if it exists.
func removeIfExists(p string) error {
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// holdsFile reports whether the folder dir holds a file, at any depth.
func holdsFile(dir string) bool {
	found := errors.New("found")
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			return found
		}
		return nil
	})
	return err == found
}

// ReplicaTenants lists, sorted, the tenants that have a replica under
// replicaURL (a Config.ReplicaURL: file:// or s3://). For s3:// the
// credentials come from the environment, as Litestream reads them.
func ReplicaTenants(ctx context.Context, replicaURL string) ([]string, error) {
	const op = "list replica tenants"
	if _, err := tenantReplicaURL(replicaURL, "x"); err != nil {
		return nil, opError(op, "", err)
	}
	u, _ := url.Parse(replicaURL)
	var names []string
	switch u.Scheme {
	case "file":
		ents, err := readDirIfExists(u.Path)
		if err != nil {
			return nil, opError(op, "", err)
		}
		for _, e := range ents {
			// An empty folder (an erased replica's, one made by hand)
			// holds no replica: the store's listing has no such prefix.
			if e.IsDir() && holdsFile(filepath.Join(u.Path, e.Name())) {
				names = append(names, e.Name())
			}
		}
	case "s3":
		c, prefix, err := s3lite.FromReplicaURL(replicaURL)
		if err != nil {
			return nil, opError(op, "", err)
		}
		if prefix != "" {
			prefix += "/"
		}
		_, prefixes, err := c.List(ctx, prefix, "/")
		if err != nil {
			return nil, opError(op, "", err)
		}
		for _, p := range prefixes {
			names = append(names, strings.TrimSuffix(strings.TrimPrefix(p, prefix), "/"))
		}
	default:
		return nil, opError(op, "", fmt.Errorf("%s: %w", u.Scheme, errUnsupported))
	}
	ids := names[:0]
	for _, n := range names {
		if checkTenantID(n) == nil {
			ids = append(ids, n)
		}
	}
	slices.Sort(ids)
	return ids, nil
}

// ReplicaPositions returns where tenant id is in Litestream's files beside
// its database under dir and in its replica under replicaURL: the highest
// transaction ID (Litestream's, one per LTX file) of each, 0 for none.
// Commits in the tenant's WAL that Litestream has not turned into an LTX
// file yet (it was down, or killed with the service) count as one more
// local transaction: the one its next sync makes of them. replica < local:
// changes not uploaded yet; replica > local: the tenant was written
// elsewhere since this copy was streamed (it is replaced when next opened),
// unless the copy was restored on purpose or never streamed (ReplicaCopyOf
// tells).
func ReplicaPositions(ctx context.Context, replicaURL, dir, id string) (local, replica uint64, err error) {
	c, err := ReplicaCopyOf(ctx, replicaURL, dir, id)
	return c.Local, c.Replica, err
}

// ReplicaCopy says where a tenant's file in a data directory stands against
// its replica (ReplicaCopyOf).
type ReplicaCopy struct {
	// Local and Replica are the positions ReplicaPositions returns.
	Local, Replica uint64
	// Restored: the file was restored on purpose (RestoreTenant,
	// RestoreTenantAt, the CLI's restore) and is to become the replica's
	// head when a proxy with replication next opens it, however far behind
	// the replica it is.
	Restored bool
	// RestoredSuperseded: such a file was restored by a proxy with
	// replication, and another node wrote the replica since (without
	// Ownership: a proxy with replication refuses it, ErrReplicaConflict).
	RestoredSuperseded bool
	restoredBound      *uint64
	// NeverStreamed: the file has no position of Litestream's and was not
	// restored from the replica by the proxy (served without replication,
	// made by the CLI). If the replica holds the tenant (Replica > 0), a
	// proxy with replication refuses it with ErrReplicaConflict.
	NeverStreamed bool
	// FromReplica: the file was restored by the proxy from the replica,
	// then at FromReplicaTXID, and Litestream has no position of it yet. A
	// proxy with replication keeps it while the replica is still there.
	FromReplica     bool
	FromReplicaTXID uint64
	// FromReplicaWritten: such a file was written since its restore.
	// FromReplicaMovedOn: the replica it was restored from is no longer
	// at FromReplicaTXID. Both, a proxy with replication refuses it
	// (ErrReplicaConflict; with Ownership, the newer generation replaces it).
	FromReplicaWritten, FromReplicaMovedOn bool
	// DeletePending: the tenant was deleted here while its replica could
	// not be erased (PendingDeletes); a file here was made since, and the
	// replica is erased before it is streamed.
	DeletePending bool
	// NewerGeneration: the file is a cluster node's copy (Config.Ownership)
	// of generation Generation, and the replica holds a newer generation
	// with data, at NewerGenerationTXID: another node owned and wrote the
	// tenant since. A node that takes the tenant replaces this copy with
	// it; Local and Replica compare the copy with its own generation only.
	Generation, NewerGeneration int64
	NewerGenerationTXID         uint64
}

// ReplicaCopyOf returns where tenant id's file under dir stands against its
// replica under replicaURL. It changes nothing.
func ReplicaCopyOf(ctx context.Context, replicaURL, dir, id string) (ReplicaCopy, error) {
	const op = "replica positions"
	var c ReplicaCopy
	if err := checkTenantID(id); err != nil {
		return c, opError(op, id, err)
	}
	if _, err := tenantReplicaURL(replicaURL, id); err != nil {
		return c, opError(op, id, err)
	}
	if err := replicaApartFromDir(replicaURL, dir); err != nil {
		return c, opError(op, id, err)
	}
	st, err := readDirState(dir)
	if err == nil {
		err = st.interrupted(dir)
	}
	if err != nil {
		return c, opError(op, id, err)
	}
	path := tenantPath(dir, st.layout, id)
	if c.Local, err = localPos(path); err != nil {
		return c, opError(op, id, err)
	}
	if _, err := os.Lstat(deletedMarker(path)); err == nil {
		c.DeletePending = true
	} else if !errors.Is(err, fs.ErrNotExist) {
		return c, opError(op, id, err)
	}
	if _, err := os.Lstat(path); err == nil {
		var fr fromReplica
		var b *restoreBound
		if c.Restored, b, err = restoredOnPurposeRO(path, c.Local); err == nil && c.Restored && b != nil && b.gen == 0 {
			c.restoredBound = &b.pos
		} else if err == nil && !c.Restored {
			fr, err = readFromReplica(path, c.Local, false)
			c.FromReplica, c.FromReplicaTXID, c.FromReplicaWritten = fr.ok, fr.pos, fr.written
			c.NeverStreamed = c.Local == 0 && !fr.ok && readGenMarker(path) == 0
			if fr.ok {
				// The replica it came from (a cluster node's new
				// generation streams to another).
				var now uint64
				if now, err = (&replicator{base: replicaURL}).replicaPos(ctx, fr.key); err == nil {
					c.FromReplicaMovedOn = now != fr.pos
				}
			}
		}
		if err != nil {
			return c, opError(op, id, err)
		}
	}
	pending, err := walPending(path, c.Local)
	if err != nil {
		return c, opError(op, id, err)
	}
	if _, err := os.Lstat(unsyncedMarker(path)); pending || err == nil {
		c.Local++
	}
	rp := &replicator{base: replicaURL}
	// A cluster node's copy streams to a generation (the one it recorded).
	c.Generation = readGenMarker(path)
	key := replicaKey(id, c.Generation)
	if c.Replica, err = rp.replicaPos(ctx, key); err != nil {
		return c, opError(op, id, err)
	}
	if c.Generation != 0 {
		// Each generation counts its transactions from its own start:
		// another node's newer one is not comparable, only newer.
		_, g, pos, err := rp.newestGeneration(ctx, id, -1, math.MaxInt64)
		if err != nil {
			return c, opError(op, id, err)
		}
		if g > c.Generation {
			c.NewerGeneration, c.NewerGenerationTXID = g, pos
		}
	}
	c.RestoredSuperseded = c.restoredBound != nil && c.Replica > *c.restoredBound
	return c, nil
}
