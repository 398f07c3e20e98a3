//go:build linux

package replication_test

import (
	"context"
	"strings"
	"testing"

	"github.com/sqliteproxy/sqliteproxy/sqliteproxytest"
)

// CheckReplication against a real Litestream and a real S3-compatible
// server: nil while both answer; a missing bucket, wrong credentials and
// a store that is down are each named (S3's error said by its code, not as
// raw XML), where New checks nothing and each first access failed instead
// (walk24).
func TestCheckReplication_RealStore(t *testing.T) {
	g := newRig(t, "s3")
	ctx := context.Background()
	p := sqliteproxytest.New(t, g.config(t, 10))
	if err := p.CheckReplication(ctx); err != nil {
		t.Fatalf("CheckReplication with Litestream and the store up: %v", err)
	}
	cfg := g.config(t, 10)
	cfg.ReplicaURL = strings.Replace(g.replica, "s3://"+g.s3.Bucket+"/", "s3://no-such-bucket/", 1)
	if cfg.ReplicaURL == g.replica {
		t.Fatalf("replica URL %s does not name bucket %s", g.replica, g.s3.Bucket)
	}
	missing := sqliteproxytest.New(t, cfg)
	if err := missing.CheckReplication(ctx); err == nil || !strings.Contains(err.Error(), "NoSuchBucket") || strings.Contains(err.Error(), "<?xml") {
		t.Errorf("CheckReplication of a missing bucket: %v", err)
	}
	t.Setenv("AWS_SECRET_ACCESS_KEY", "wrong")
	if err := p.CheckReplication(ctx); err == nil || strings.Contains(err.Error(), "<?xml") {
		t.Errorf("CheckReplication with a wrong secret key: %v", err)
	}
	t.Setenv("AWS_SECRET_ACCESS_KEY", g.s3.SecretKey)
	g.s3.Stop()
	if err := p.CheckReplication(ctx); err == nil {
		t.Error("CheckReplication with the store down: nil")
	}
	g.s3.Restart()
	if err := p.CheckReplication(ctx); err != nil {
		t.Errorf("CheckReplication with the store back: %v", err)
	}
	g.ls.Kill()
	if err := p.CheckReplication(ctx); err == nil || !strings.Contains(err.Error(), "control socket") {
		t.Errorf("CheckReplication with Litestream killed: %v", err)
	}
}
