package sqliteproxy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"database/sql/driver"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mattn/go-sqlite3"
)

// Templates. A new tenant is a copy of a template file that holds the
// configured migrations already, built by the driver itself the first time
// this proxy creates a tenant (the migrations are fixed for its lifetime)
// in a private directory of its own, removed at Close: creating a tenant
// then costs a file copy and one ledger update, however many migrations
// there are, instead of one transaction per migration. The copy's ledger
// is the one a step-by-step migration writes, applied_at set to the copy's
// creation, and telemetry reports the copy's migrations as the tenant's.
//
// The template's bytes are also held in memory (templateImage), with the
// offset of each ledger row's applied_at: a new tenant's bytes are a copy
// with the creation's stamp written at those offsets (applied_at is
// fixed-width text, which SQLite stores as it is), written and synced
// once. The offsets are found and proven once per template, by SQLite
// itself reading a probe copy. Stamping a copy with SQLite instead (on
// disk, or in a deserialized in-memory database) cost a schema parse, a
// transaction and a serialization of the whole file per creation: 0.3 ms
// of CPU for fifty tables and their indexes. When the image cannot be
// made (a template larger than maxMemTemplate, one whose stamp also occurs
// outside its ledger, SQLite built without sqlite3_deserialize) the file
// is copied and stamped on disk as before.

// templates builds and finds this proxy's template.
type templates struct {
	mu       sync.Mutex
	building chan struct{}  // closed when the build in progress ends; nil when none is
	built    chan struct{}  // the last build's building channel, and its error:
	buildErr error          // the waiters of a failed build get its error
	dir      string         // private directory of the template, "" until made
	lock     *os.File       // dir, flock'd while this proxy keeps it (sweepTemplateDirs)
	path     string         // the built template, "" until built
	ident    fileIdent      // path's file as built and checked: another is not copied
	img      *templateImage // the template at path in memory; nil until loaded
	// noImage is a template that could not be held in memory: its
	// copies are made on disk, without trying again for each.
	noImage string
	imaged  atomic.Int64 // tenants made from img (tests see the path taken)
	closed  bool         // removed at Close: no directory is made again
}

// templateImage is a template file in memory.
type templateImage struct {
	path  string
	b     []byte    // the file's bytes (in WAL mode, as on disk)
	slots []int     // where each ledger row's applied_at is (stampLen bytes)
	bufs  sync.Pool // *[]byte of len(b): copies being written, reused
}

// close removes the template and its directory.
func (tp *templates) close() {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	for tp.building != nil { // stopped by the router's stop: it ends soon
		ch := tp.building
		tp.mu.Unlock()
		<-ch
		tp.mu.Lock()
	}
	tp.img, tp.closed = nil, true
	tp.dropDir()
}

// dropDir removes the template's directory and forgets it; called with mu held.
func (tp *templates) dropDir() {
	if tp.dir != "" {
		os.RemoveAll(tp.dir)
		tp.dir, tp.path = "", ""
	}
	if tp.lock != nil {
		tp.lock.Close()
		tp.lock = nil
	}
}

// stampLayout formats applied_at in a template and its copies: RFC 3339 in
// UTC with nine fractional digits, always 30 bytes, so that a copy of the
// template is stamped by writing over its ledger's stamps in place
// (templateImage); time.RFC3339Nano parses it.
const stampLayout = "2006-01-02T15:04:05.000000000Z07:00"

func stamp(t time.Time) string { return t.UTC().Format(stampLayout) }

// stampLen is the length of every stamp (in UTC the zone is "Z").
const stampLen = len("2006-01-02T15:04:05.000000000Z")

// maxMemTemplate bounds the template held in memory (it stays for the
// proxy's lifetime); a larger one (migrations that load data) is copied on
// disk for each new tenant.
const maxMemTemplate = 16 << 20

// memTemplateOff, set by tests, makes every creation take the on-disk path.
// Process-wide: tests that set it do not run in parallel.
var memTemplateOff atomic.Bool

// templateKey names the migration set: a hash of the migrations' checksums
// in order.
func (m *migrator) templateKey() string {
	h := sha256.New()
	for _, mg := range m.list {
		fmt.Fprintf(h, "%s\n", mg.sum)
	}
	return hex.EncodeToString(h.Sum(nil))[:24]
}

// template returns the path of the template for the configured migrations,
// building it if there is none (or it is not healthy).
//
// A goroutine of its own builds it (startTemplateBuild); every caller waits
// for that build, or its own context, and then looks again: a build takes
// as long as the migrations, and creations of other tenants waited on the
// mutex past their deadlines.
func (r *router) template(ctx context.Context) (string, error) {
	r.tmpl.mu.Lock()
	defer r.tmpl.mu.Unlock()
	for {
		if r.tmpl.closed {
			// A creation still in flight at Close: it migrates step by step
			// rather than leave a directory nobody removes.
			return "", ErrClosed
		}
		if r.tmpl.path != "" {
			fi, err := os.Lstat(r.tmpl.path)
			if err == nil && identOf(fi) == r.tmpl.ident {
				return r.tmpl.path, nil
			}
			if err == nil {
				// Not the file built and checked (replaced, written to):
				// its rows would be every new tenant's (adv29).
				os.Remove(r.tmpl.path)
				r.tmpl.img = nil
			}
			r.tmpl.path = ""
		}
		if r.tmpl.building == nil {
			if err := r.startTemplateBuild(ctx); err != nil {
				return "", err
			}
		}
		ch := r.tmpl.building
		r.tmpl.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			r.tmpl.mu.Lock()
			return "", ctx.Err()
		}
		r.tmpl.mu.Lock()
		if r.tmpl.path == "" && r.tmpl.built == ch && r.tmpl.buildErr != nil {
			return "", r.tmpl.buildErr // this build's failure, for everyone who waited on it
		}
	}
}

// startTemplateBuild builds the template in a goroutine of its own; called
// with mu held. The build is everyone's: it does not end with the context of
// the creation that started it (that ended it, and when every creation's
// deadline was shorter than a build, no template was ever made and every
// creation failed), only with Close.
func (r *router) startTemplateBuild(ctx context.Context) error {
	if r.tmpl.dir != "" {
		if _, err := os.Stat(r.tmpl.dir); err != nil { // removed from under it
			r.tmpl.dropDir()
		}
	}
	if r.tmpl.dir == "" {
		sweepTemplateDirs()
		dir, err := os.MkdirTemp("", templateDirPrefix)
		if err != nil {
			return err
		}
		lock, err := os.Open(dir)
		if err == nil && lockHeld(lock) {
			lock.Close()
			err = errors.New("cannot lock its own new directory")
		}
		if err != nil {
			os.RemoveAll(dir)
			return fmt.Errorf("template directory: %w", err)
		}
		r.tmpl.dir, r.tmpl.lock = dir, lock
	}
	path := filepath.Join(r.tmpl.dir, "template-"+r.mig.templateKey()+".tmpl")
	building := make(chan struct{})
	r.tmpl.building = building
	bctx, cancel := untilClosed(context.WithoutCancel(ctx), r.stop) // ctx's values (spans), not its end
	go func() {
		err := r.buildTemplate(bctx, path)
		cancel()
		r.tmpl.mu.Lock()
		defer r.tmpl.mu.Unlock()
		if err == nil && r.tmpl.closed {
			err = ErrClosed // closed meanwhile: its directory is gone
		}
		var fi os.FileInfo
		if err == nil {
			fi, err = os.Lstat(path)
		}
		if err == nil {
			r.tmpl.path, r.tmpl.ident = path, identOf(fi)
		}
		r.tmpl.building, r.tmpl.built, r.tmpl.buildErr = nil, building, err
		close(building)
	}()
	return nil
}

// templateDirPrefix begins the name of a template's private directory
// (in os.TempDir), which its process holds flock'd while it lives.
const templateDirPrefix = "sqliteproxy-template-"

// templateDirAge is how old an unlocked template directory must be to be
// removed: one just made is locked a moment later.
const templateDirAge = 10 * time.Minute

// sweepTemplateDirs removes the template directories of processes that
// ended without Close (killed, or exited without it): each left its
// template behind in the system's temporary directory, and a template can
// be large. A directory is its process's as long as that process holds
// its flock, whatever PID namespace either process is in (process IDs
// told the wrong story across containers sharing /tmp).
func sweepTemplateDirs() {
	ents, err := os.ReadDir(os.TempDir())
	if err != nil {
		return
	}
	old := time.Now().Add(-templateDirAge)
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), templateDirPrefix) || !e.IsDir() {
			continue
		}
		p := filepath.Join(os.TempDir(), e.Name())
		if fi, err := e.Info(); err != nil || !fi.ModTime().Before(old) {
			continue
		}
		f, err := os.Open(p)
		if err != nil {
			continue
		}
		if !lockHeld(f) {
			os.RemoveAll(p)
		}
		f.Close()
	}
}

// dropTemplate forgets the template at path and removes it, so that the
// next creation builds it again.
func (r *router) dropTemplate(path string) {
	tp := &r.tmpl
	tp.mu.Lock()
	defer tp.mu.Unlock()
	if tp.path == path {
		os.Remove(path)
		tp.path = ""
	}
	if tp.img != nil && tp.img.path == path {
		tp.img = nil
	}
}

// checkTemplate fails unless the file at path is a healthy database whose
// ledger holds exactly the configured migrations.
func (r *router) checkTemplate(ctx context.Context, path string) error {
	if err := checkFile(ctx, path); err != nil {
		return err
	}
	c, err := plainDriver.Open(fileURI(path) + "?mode=ro&immutable=1")
	if err != nil {
		return err
	}
	defer c.Close()
	rows, err := ledger(ctx, c.(*sqlite3.SQLiteConn))
	if err != nil {
		return err
	}
	if n, err := r.mig.check(rows); err != nil || n != len(r.mig.list) {
		return errors.Join(err, fmt.Errorf("template has %d of %d migrations", n, len(r.mig.list)))
	}
	return nil
}

// buildTemplate migrates a new file aside, checks it and renames it to path.
func (r *router) buildTemplate(ctx context.Context, path string) error {
	tmp := tempName(filepath.Dir(path), creatingPrefix, "template")
	defer removeWithSideFiles(tmp)
	if err := createEmpty(tmp); err != nil {
		return err
	}
	c, err := r.conns.openPath(tmp, r.conns.writerParams)
	if err != nil {
		return err
	}
	// Without telemetry: the migrations are reported as each tenant's when
	// it is copied.
	off, _ := newTelemetry(&Config{}, nil)
	_, err = (&migrator{list: r.mig.list, tel: off}).migrate(ctx, c, "template", nil, true, nil)
	if err == nil {
		err = stampLedger(ctx, c, time.Now())
	}
	if _, cerr := c.ExecContext(context.Background(), "PRAGMA wal_checkpoint(TRUNCATE)", nil); err == nil {
		err = cerr
	}
	if cerr := c.Close(); err == nil {
		err = cerr // the last connection: the WAL is checkpointed and removed
	}
	if err == nil {
		err = r.checkTemplate(ctx, tmp)
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	return err
}

// createEmpty creates the empty file p (mode 0600 whatever the umask),
// failing if it exists.
func createEmpty(p string) error {
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	err = f.Chmod(0o600)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// stampedTemplate returns the bytes of a new tenant file: the template at
// path (see template) with its ledger stamped with now, in WAL mode as the
// template file is. Give them back with done once written. It fails when
// the template cannot be held in memory; the caller then copies the file
// (copyTemplate).
func (r *router) stampedTemplate(ctx context.Context, path string, now time.Time) (b []byte, done func(), err error) {
	img, err := r.image(ctx, path)
	if err != nil {
		return nil, nil, err
	}
	buf, _ := img.bufs.Get().(*[]byte)
	if buf == nil {
		buf = new([]byte)
		*buf = make([]byte, len(img.b))
	}
	img.stampInto(*buf, now) // outside tmpl.mu: creations copy at once
	r.tmpl.imaged.Add(1)
	return *buf, func() { img.bufs.Put(buf) }, nil
}

// image returns the template at path in memory, loading it the first time.
func (r *router) image(ctx context.Context, path string) (*templateImage, error) {
	if memTemplateOff.Load() {
		return nil, errors.New("in-memory template off")
	}
	tp := &r.tmpl
	tp.mu.Lock()
	defer tp.mu.Unlock()
	if tp.img != nil && tp.img.path == path {
		return tp.img, nil
	}
	tp.img = nil
	if tp.noImage == path {
		return nil, errors.New("template not held in memory")
	}
	img, err := r.loadImage(ctx, path)
	if err != nil {
		if ctx.Err() == nil && !outOfFiles(err) { // not for a creation given up, nor for want of descriptors
			tp.noImage = path
		}
		return nil, err
	}
	tp.img = img
	return img, nil
}

// stampInto writes the template's bytes into dst, stamped with t.
func (img *templateImage) stampInto(dst []byte, t time.Time) {
	copy(dst, img.b)
	st := stamp(t)
	for _, at := range img.slots {
		copy(dst[at:], st)
	}
}

// loadImage reads the template at path into memory and finds its stamps:
// the template's ledger is stamped with one time (buildTemplate), which
// occurs once per ledger row in its bytes, at the offsets sought. They are
// proven before use: a copy stamped with another time is read back by
// SQLite, which must find every row stamped with it, the configured
// migrations, and a sound file.
func (r *router) loadImage(ctx context.Context, path string) (*templateImage, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if fi.Size() > maxMemTemplate {
		return nil, fmt.Errorf("template %s: %d bytes, more than the %d held in memory", path, fi.Size(), maxMemTemplate)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if fi, err := os.Lstat(path); err != nil || identOf(fi) != r.tmpl.ident {
		return nil, errors.Join(err, fmt.Errorf("template %s: not the file built and checked", path))
	}
	if len(b) < 100 || b[18] != 2 || b[19] != 2 {
		return nil, fmt.Errorf("template %s: not a WAL-mode database", path)
	}
	rows, err := readImageLedger(ctx, b)
	if err != nil {
		return nil, err
	}
	if len(rows) != len(r.mig.list) || len(rows) == 0 {
		return nil, fmt.Errorf("template %s: %d ledger rows for %d migrations", path, len(rows), len(r.mig.list))
	}
	built := rows[0].appliedAt
	img := &templateImage{path: path, b: b}
	for off := 0; ; {
		i := bytes.Index(b[off:], []byte(built))
		if i < 0 {
			break
		}
		img.slots = append(img.slots, off+i)
		off += i + len(built)
	}
	if len(built) != stampLen || len(img.slots) != len(rows) {
		return nil, fmt.Errorf("template %s: its stamp %q occurs %d times for %d ledger rows", path, built, len(img.slots), len(rows))
	}
	probeAt := time.Now().Add(time.Hour)
	probe := make([]byte, len(b))
	img.stampInto(probe, probeAt)
	got, err := readImageLedger(ctx, probe)
	if err == nil {
		_, err = r.mig.check(got)
	}
	if err != nil {
		return nil, fmt.Errorf("template %s: stamped copy: %w", path, err)
	}
	for _, row := range got {
		if row.appliedAt != stamp(probeAt) {
			return nil, fmt.Errorf("template %s: stamped copy has applied_at %q, want %q", path, row.appliedAt, stamp(probeAt))
		}
	}
	return img, nil
}

// readImageLedger reads the ledger of the database file image b (WAL mode)
// in a private in-memory database, after a quick_check. sqlite3_deserialize
// cannot use a WAL-mode image: its header's file format versions (bytes 18
// and 19) are set to rollback (1) in a copy first, as SQLite's
// documentation of sqlite3_deserialize advises.
func readImageLedger(ctx context.Context, b []byte) ([]ledgerRow, error) {
	img := bytes.Clone(b)
	img[18], img[19] = 1, 1
	dc, err := plainDriver.Open(":memory:")
	if err != nil {
		return nil, err
	}
	c := dc.(*sqlite3.SQLiteConn)
	defer c.Close()
	if err := c.Deserialize(img, "main"); err != nil {
		return nil, err
	}
	if err := checkIntegrity(ctx, c, "quick_check"); err != nil {
		return nil, err
	}
	return ledger(ctx, c)
}

// stampLedger sets every applied_at of the ledger on c to t.
func stampLedger(ctx context.Context, c *sqlite3.SQLiteConn, t time.Time) error {
	return withLedger(c, func() error {
		_, err := c.ExecContext(ctx, `UPDATE main.`+ledgerTable+` SET applied_at = ?`, []driver.NamedValue{{Ordinal: 1, Value: stamp(t)}})
		return err
	})
}

// copiedMigrations returns the migrations of a tenant made from the
// template, as its own, applied in d (each).
func (r *router) copiedMigrations(d time.Duration) []migStep {
	steps := make([]migStep, len(r.mig.list))
	for i, mg := range r.mig.list {
		steps[i] = migStep{name: mg.name, d: d, copied: true}
	}
	return steps
}

// copyTemplate writes a new tenant file at dst from the template at src
// and stamps its ledger with the time of this creation.
func (r *router) copyTemplate(ctx context.Context, src, dst string) error {
	if err := copyFile(src, dst, true); err != nil {
		return err
	}
	c, err := r.conns.openPath(dst, r.conns.writerParams)
	if err != nil {
		return err
	}
	start := time.Now()
	err = stampLedger(ctx, c, start)
	if err == nil {
		_, err = r.mig.applied(ctx, c) // the ledger, as step by step would have left it
	}
	if cerr := c.Close(); err == nil {
		err = cerr
	}
	return err
}
