package sqliteproxy

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"path/filepath"
	"strings"
	"unicode/utf8"
)

// This file holds the tenant ID: how it travels in a context, the rule it
// must follow, and the one mapping from an ID to a file.

type orgIDKey struct{}

// WithOrgID returns a copy of ctx that routes every statement run with it to
// the tenant id. The ID is checked when a statement uses it, not here:
// an invalid ID makes that statement fail with ErrInvalidTenant.
func WithOrgID(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, orgIDKey{}, id)
}

// OrgID returns the tenant stored in ctx by WithOrgID.
func OrgID(ctx context.Context) (string, bool) {
	id, ok := ctx.Value(orgIDKey{}).(string)
	return id, ok
}

// MaxTenantIDLen is the longest tenant ID accepted.
const MaxTenantIDLen = 64

// ValidTenantID reports whether id may name a tenant, and why not.
//
// The rule is a strict allowlist: 1 to 64 characters, each a lower-case
// ASCII letter, a digit, '_' or '-', the first a letter or a digit. IDs are
// not case-folded: "ACME" is rejected rather than mapped onto "acme", so two
// spellings can never reach the same file on a case-insensitive disk, and
// none can reach another tenant's file. The rule excludes path separators,
// "..", dots of any kind (so no ID collides with SQLite's "-wal", "-shm" and
// "-journal" side files or with the driver's dot-prefixed temporary files),
// URI metacharacters (%, ?, #, :), NUL, spaces, shell metacharacters, a
// leading '-' (it reads as a flag to CLI tools), non-ASCII look-alikes and
// the device names Windows reserves (con, nul, com1, ...).
func ValidTenantID(id string) error {
	if err := checkTenantID(id); err != nil {
		return opError(opCheckTenantID, "", err)
	}
	return nil
}

func checkTenantID(id string) error {
	if id == "" {
		return fmt.Errorf("%w: empty", ErrInvalidTenant)
	}
	if len(id) > MaxTenantIDLen {
		return fmt.Errorf("%w: longer than %d bytes", ErrInvalidTenant, MaxTenantIDLen)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case (c == '-' || c == '_') && i > 0:
		case c == '-' || c == '_':
			return fmt.Errorf("%w: %s starts with %q: an ID starts with a letter or a digit", ErrInvalidTenant, quoteShort(id), c)
		case c >= 'A' && c <= 'Z':
			return fmt.Errorf("%w: %s: byte %d is upper case: IDs are lower case (strings.ToLower), [a-z0-9_-]", ErrInvalidTenant, quoteShort(id), i)
		default:
			r, _ := utf8.DecodeRuneInString(id[i:])
			return fmt.Errorf("%w: %s: byte %d (%q) is not one of [a-z0-9_-]", ErrInvalidTenant, quoteShort(id), i, r)
		}
	}
	if windowsReserved(id) {
		return fmt.Errorf("%w: %q is a reserved device name", ErrInvalidTenant, id)
	}
	return nil
}

func windowsReserved(id string) bool {
	switch id {
	case "con", "prn", "aux", "nul":
		return true
	}
	if len(id) == 4 && (strings.HasPrefix(id, "com") || strings.HasPrefix(id, "lpt")) && id[3] >= '1' && id[3] <= '9' {
		return true
	}
	return false
}

// tenantFileSuffix is appended to a tenant ID to name its database file.
const tenantFileSuffix = ".db"

// tenantPath is the database file of tenant id under dir in layout l: the
// one place that maps an ID to a path (see Layout). A tenant's side and
// temporary files are named after this path, in the same folder. id must
// be valid (checkTenantID).
func tenantPath(dir string, l Layout, id string) string {
	if l == LayoutBuckets {
		return filepath.Join(dir, bucketOf(id), id+tenantFileSuffix)
	}
	return filepath.Join(dir, id+tenantFileSuffix)
}

// TenantPath returns the path of the database file of tenant id under the
// proxy's Dir (in its Layout), whether or not it exists, or
// ErrInvalidTenant. Tools that work on the files (backups, copies, the
// CLI) should use it rather than building the path themselves.
func (p *Proxy) TenantPath(id string) (string, error) {
	if err := checkTenantID(id); err != nil {
		return "", opError(opTenantPath, id, err)
	}
	return tenantPath(p.c.cfg.Dir, p.c.cfg.Layout, id), nil
}

// fileURI is the file: URI of path, escaped, without a query.
func fileURI(path string) string {
	return (&url.URL{Scheme: "file", OmitHost: true, Path: filepath.ToSlash(path)}).String()
}

// tenantIDFromFile returns the tenant ID a directory entry names, if any.
func tenantIDFromFile(name string) (string, bool) {
	id, ok := strings.CutSuffix(name, tenantFileSuffix)
	if !ok || checkTenantID(id) != nil {
		return "", false
	}
	return id, true
}

// Temporary files the driver keeps beside tenant files start with a dot,
// which no tenant ID may, so Tenants never lists them and no tenant can
// reach them. A tenant's are in its file's folder (filepath.Dir of
// tenantPath), so that linking or renaming them into place stays within
// one directory.
const (
	creatingPrefix  = ".creating-"
	deletingPrefix  = ".deleting-"
	restoringPrefix = ".restoring-"
)

func tempName(dir, prefix, id string) string {
	var b [8]byte
	rand.Read(b[:])
	return filepath.Join(dir, prefix+id+"-"+hex.EncodeToString(b[:])+tenantFileSuffix)
}

// isTempName reports whether name is one of tempName's with one of
// prefixes (<prefix><id>-<16 hex digits>.db), or a side file SQLite makes
// beside one (-wal, -shm, -journal), or a restore's files beside one
// (.replica, .tmp). A prefix alone does not tell: a
// tenant whose ID starts with "creating-" keeps Litestream's files and its
// markers as ".creating-x.db-litestream", "-restored" and "-gen".
func isTempName(name string, prefixes ...string) bool {
	for _, side := range sqliteSuffixes {
		if base, ok := strings.CutSuffix(name, side); ok {
			name = base
			break
		}
	}
	// A replica fetched beside a restore's file (<temp>.replica), and the
	// file litestream restore writes before its rename (<...>.tmp), left by
	// a restore killed midway.
	name, _ = strings.CutSuffix(name, ".tmp")
	name, _ = strings.CutSuffix(name, replicaStageSuffix)
	for _, prefix := range prefixes {
		if _, ok := tempID(name, prefix); ok {
			return true
		}
	}
	return false
}

// tempID returns the tenant ID of name if it is one of tempName's with
// prefix (<prefix><id>-<16 hex digits>.db; no side file).
func tempID(name, prefix string) (string, bool) {
	base, ok := strings.CutSuffix(name, tenantFileSuffix)
	if !ok || len(base) < 17 || base[len(base)-17] != '-' {
		return "", false
	}
	if _, err := hex.DecodeString(base[len(base)-16:]); err != nil {
		return "", false
	}
	id, ok := strings.CutPrefix(base[:len(base)-17], prefix)
	return id, ok && id != ""
}
