package main

import (
	"context"
	"database/sql/driver"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/mattn/go-sqlite3"
)

// Direct access to tenant files, for what must not go through the proxy:
// check runs PRAGMA integrity_check on its own connection to the file.
// Through the proxy, MigrateCheck mode would refuse every tenant whose
// ledger does not match the tool's -migrations (all of them, when none are
// given), and a tenant opened that way could not be checked without being
// migrated.
//
// The connection is opened read-write (mode=rw: never creates the file)
// with PRAGMA query_only, rather than mode=ro: a read-only connection to a
// WAL database creates the -wal and -shm files and, unable to take the
// write lock on close, leaves them behind, whereas a read-write one removes
// them again when it is the last to close. It is an ordinary WAL client, so
// running it while the service uses the tenant is safe.
var fileDriver = &sqlite3.SQLiteDriver{}

func fileURI(path string) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", err
	}
	return (&url.URL{Scheme: "file", OmitHost: true, Path: filepath.ToSlash(abs)}).String(), nil
}

// openTenantFile opens an existing tenant file for reading.
func openTenantFile(path string) (*sqlite3.SQLiteConn, error) {
	fi, err := os.Lstat(path)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	uri, err := fileURI(path)
	if err != nil {
		return nil, err
	}
	c, err := fileDriver.Open(uri + "?mode=rw&_query_only=1&_busy_timeout=5000")
	if err != nil {
		return nil, err
	}
	return c.(*sqlite3.SQLiteConn), nil
}

// checkFile runs PRAGMA integrity_check on the database at path.
func checkFile(ctx context.Context, path string) error {
	c, err := openTenantFile(path)
	if err != nil {
		return err
	}
	defer c.Close()
	return integrityCheck(ctx, c)
}

// integrityCheck runs PRAGMA integrity_check and wants the single row "ok".
func integrityCheck(ctx context.Context, c *sqlite3.SQLiteConn) error {
	rows, err := c.QueryContext(ctx, "PRAGMA integrity_check", nil)
	if err != nil {
		return err
	}
	defer rows.Close()
	dest := make([]driver.Value, 1)
	var problems []string
	for {
		if err := rows.Next(dest); err == io.EOF {
			break
		} else if err != nil {
			return err
		}
		switch v := dest[0].(type) {
		case string:
			problems = append(problems, v)
		case []byte:
			problems = append(problems, string(v))
		default:
			problems = append(problems, fmt.Sprint(v))
		}
	}
	if len(problems) == 1 && problems[0] == "ok" {
		return nil
	}
	shown := problems[:min(len(problems), 3)]
	more := ""
	if len(problems) > len(shown) {
		more = fmt.Sprintf("; and %d more", len(problems)-len(shown))
	}
	return fmt.Errorf("integrity_check found %d problem(s): %s%s", len(problems), strings.Join(shown, "; "), more)
}
