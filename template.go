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

// templates builds and finds this proxy's template.
type templates struct {
	mu   sync.Mutex
	dir  string // private directory of the template, "" until made
	path string // the built template, "" until built
}

// close removes the template and its directory.
func (tp *templates) close() {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	if tp.dir != "" {
		os.RemoveAll(tp.dir)
		tp.dir, tp.path = "", ""
	}
}

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
	now := start.UTC().Format(time.RFC3339Nano)
	_, err = c.ExecContext(ctx, `UPDATE `+ledgerTable+` SET applied_at = ?`, []driver.NamedValue{{Ordinal: 1, Value: now}})
	if err == nil {
		_, err = r.mig.applied(ctx, c) // the ledger, as step by step would have left it
	}
	if cerr := c.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		for _, mg := range r.mig.list {
			_, end := r.tel.span(ctx, spanMigrate, tt, attribute.String(attrMigration, mg.name))
			end(nil)
			r.tel.migrated(ctx, tt, mg.name, start, nil)
		}
	}
	return err
}
