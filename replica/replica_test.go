package replica_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sqliteproxy/sqliteproxy"
	"github.com/sqliteproxy/sqliteproxy/replica"
)

// Litestream's S3 client cannot load AWS_CA_BUNDLE: Compact says so, and
// what to do, instead of passing Litestream's error on.
func TestCompact_AWSCABundle(t *testing.T) {
	t.Setenv("AWS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
	var c replica.Compactor
	err := c.CompactReplica(context.Background(), "s3://bucket/tenants/acme?endpoint=http://127.0.0.1:1")
	if err == nil || !strings.Contains(err.Error(), "unset it") {
		t.Fatalf("CompactReplica with AWS_CA_BUNDLE set: %v, want an error that says to unset it", err)
	}
}

func TestCompact_BadURL(t *testing.T) {
	var c replica.Compactor
	for _, u := range []string{"", "nope://x/y", "/no/scheme"} {
		if err := c.CompactReplica(context.Background(), u); err == nil {
			t.Errorf("CompactReplica(%q): no error", u)
		}
	}
}

// An empty file replica has nothing to compact: no error, no files.
func TestCompact_EmptyFileReplica(t *testing.T) {
	var c replica.Compactor
	before, after, err := c.Compact(context.Background(), "file://"+t.TempDir()+"/acme")
	if err != nil || before != 0 || after != 0 {
		t.Fatalf("Compact of an empty replica: %d, %d, %v; want 0, 0, nil", before, after, err)
	}
}

// An empty replica: the restorer says the tenant is not there, and writes
// nothing.
func TestRestorer_EmptyReplica(t *testing.T) {
	var r replica.Restorer
	dst := filepath.Join(t.TempDir(), "acme.db")
	err := r.RestoreReplica(context.Background(), "file://"+t.TempDir()+"/acme", dst, time.Time{})
	if !errors.Is(err, sqliteproxy.ErrTenantNotFound) {
		t.Fatalf("RestoreReplica of an empty replica: %v, want ErrTenantNotFound", err)
	}
	if _, err := os.Stat(dst); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a file was written: %v", err)
	}
}
