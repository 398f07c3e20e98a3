package sqliteproxy

import (
	"context"
	"crypto/sha256"
	"database/sql/driver"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mattn/go-sqlite3"
	"go.opentelemetry.io/otel/attribute"
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
// The template is also held in a private in-memory database, its schema
// parsed once: a new tenant's bytes are serialized from it right after
// its ledger is stamped there, and written and synced once. Opening each
// copy with SQLite to stamp it instead parsed its whole schema (0.9 ms of
// CPU for fifty tables and their indexes, half of a creation on tmpfs),
// created and removed its -wal and -shm and synced three more times. When
// the in-memory copy is not available (SQLite built without
// sqlite3_serialize) the file is copied and stamped on disk as before.

// templates builds and finds this proxy's template.
type templates struct {
	mu   sync.Mutex
	dir  string // private directory of the template, "" until made
	path string // the built template, "" until built
	// mem holds the template at memPath in memory; nil until loaded.
	mem     *sqlite3.SQLiteConn
	memPath string
}

// close removes the template and its directory.
func (tp *templates) close() {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	if tp.mem != nil {
		tp.mem.Close()
		tp.mem, tp.memPath = nil, ""
	}
	if tp.dir != "" {
		os.RemoveAll(tp.dir)
		tp.dir, tp.path = "", ""
	}
}

// stampLayout formats applied_at in a template and its copies: RFC 3339 in
// UTC with nine fractional digits, always 30 bytes, so that stamping the
// in-memory template rewrites its ledger rows in place (a deserialized
// database cannot grow); time.RFC3339Nano parses it.
const stampLayout = "2006-01-02T15:04:05.000000000Z07:00"

func stamp(t time.Time) string { return t.UTC().Format(stampLayout) }

// maxMemTemplate bounds the template held in memory (it stays for the
// proxy's lifetime); a larger one (migrations that load data) is copied on
// disk for each new tenant.
const maxMemTemplate = 16 << 20

// memTemplateOff, set by tests, makes every creation take the on-disk path.
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
func (r *router) template(ctx context.Context) (string, error) {
	r.tmpl.mu.Lock()
	defer r.tmpl.mu.Unlock()
	if r.tmpl.path != "" {
		if _, err := os.Stat(r.tmpl.path); err == nil {
			return r.tmpl.path, nil
		}
	}
	if r.tmpl.dir == "" {
		dir, err := os.MkdirTemp("", "sqliteproxy-template-")
		if err != nil {
			return "", err
		}
		r.tmpl.dir = dir
	}
	path := filepath.Join(r.tmpl.dir, "template-"+r.mig.templateKey()+".tmpl")
	if err := r.buildTemplate(ctx, path); err != nil {
		return "", err
	}
	r.tmpl.path = path
	return path, nil
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
	_, err = (&migrator{list: r.mig.list, tel: off}).migrate(ctx, c, "template", nil, true)
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
// template file is. It fails when the template cannot be held in memory;
// the caller then copies the file (copyTemplate).
func (r *router) stampedTemplate(ctx context.Context, path string, now time.Time) ([]byte, error) {
	if memTemplateOff.Load() {
		return nil, errors.New("in-memory template off")
	}
	r.tmpl.mu.Lock()
	defer r.tmpl.mu.Unlock()
	if r.tmpl.mem == nil || r.tmpl.memPath != path {
		if r.tmpl.mem != nil {
			r.tmpl.mem.Close()
			r.tmpl.mem, r.tmpl.memPath = nil, ""
		}
		c, err := loadMemTemplate(path)
		if err != nil {
			return nil, err
		}
		r.tmpl.mem, r.tmpl.memPath = c, path
	}
	c := r.tmpl.mem
	if err := stampLedger(ctx, c, now); err != nil {
		return nil, err
	}
	if n, err := r.mig.applied(ctx, c); err != nil || n != len(r.mig.list) {
		return nil, errors.Join(err, fmt.Errorf("in-memory template has %d of %d migrations", n, len(r.mig.list)))
	}
	b, err := c.Serialize("main")
	if err != nil {
		return nil, err
	}
	if len(b) < 100 {
		return nil, fmt.Errorf("in-memory template serialized to %d bytes", len(b))
	}
	b[18], b[19] = 2, 2 // WAL, as PRAGMA journal_mode=WAL leaves the header (see loadMemTemplate)
	return b, nil
}

// loadMemTemplate opens a private in-memory database holding the file at
// path. sqlite3_deserialize cannot use a WAL-mode image: its header's file
// format versions (bytes 18 and 19) are set to rollback (1) first, as
// SQLite's documentation of sqlite3_deserialize advises.
func loadMemTemplate(path string) (*sqlite3.SQLiteConn, error) {
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
	if len(b) < 100 || b[18] != 2 || b[19] != 2 {
		return nil, fmt.Errorf("template %s: not a WAL-mode database", path)
	}
	b[18], b[19] = 1, 1
	dc, err := plainDriver.Open(":memory:")
	if err != nil {
		return nil, err
	}
	c := dc.(*sqlite3.SQLiteConn)
	if err := c.Deserialize(b, "main"); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// stampLedger sets every applied_at of the ledger on c to t.
func stampLedger(ctx context.Context, c *sqlite3.SQLiteConn, t time.Time) error {
	_, err := c.ExecContext(ctx, `UPDATE `+ledgerTable+` SET applied_at = ?`, []driver.NamedValue{{Ordinal: 1, Value: stamp(t)}})
	return err
}

// reportCopiedMigrations reports the migrations of a tenant made from the
// template as its own, applied at start.
func (r *router) reportCopiedMigrations(ctx context.Context, tt *tenantTel, start time.Time) {
	for _, mg := range r.mig.list {
		_, end := r.tel.span(ctx, spanMigrate, tt, attribute.String(attrMigration, mg.name))
		end(nil)
		r.tel.migrated(ctx, tt, mg.name, start, nil)
	}
}

// copyTemplate writes a new tenant file at dst from the template at src
// and stamps its ledger with the time of this creation.
func (r *router) copyTemplate(ctx context.Context, src, dst string, tt *tenantTel) error {
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
	if err == nil {
		r.reportCopiedMigrations(ctx, tt, start)
	}
	return err
}
