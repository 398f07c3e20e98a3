//go:build linux

package replication_test

import (
	"bufio"
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sqliteproxy/sqliteproxy/replica"
	"github.com/sqliteproxy/sqliteproxy/replication/harness"
	"github.com/sqliteproxy/sqliteproxy/sqliteproxytest"
)

// Litestream's S3 client builds an HTTP transport of its own for every
// Compact and RestoreReplica and keeps its connections to the store for
// 90 s: in a service whose tenants churn, sockets and goroutines grew with
// the churn (soak20). Each call now closes its idle connections when done:
// twenty calls leave this process with no more connections to the store
// than before them.
func TestReplica_CallsLeaveNoConnections(t *testing.T) {
	g := newRig(t, "s3")
	p := sqliteproxytest.New(t, g.config(t, 4))
	ctx := context.Background()
	for i := range 3 {
		insert(t, p, "acme", fmt.Sprintf("row-%d", i))
	}
	if err := p.SyncTenant(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(g.s3.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	port, err := strconv.Atoi(u.Port())
	if err != nil {
		t.Fatal(err)
	}
	tenantURL, err := harness.JoinReplicaURL(g.replica, "acme")
	if err != nil {
		t.Fatal(err)
	}
	before := connsTo(t, port)
	c, r := replica.Compactor{}, replica.Restorer{}
	for i := range 10 {
		if _, _, err := c.Compact(ctx, tenantURL); err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(t.TempDir(), fmt.Sprintf("r%d.db", i))
		if err := r.RestoreReplica(ctx, tenantURL, dst, time.Time{}); err != nil {
			t.Fatal(err)
		}
	}
	if after := connsTo(t, port); after > before+1 {
		t.Fatalf("connections of this process to the store: %d before 20 calls, %d after", before, after)
	}
}

// connsTo counts this process's established TCP connections to port on
// the loopback.
func connsTo(t *testing.T, port int) int {
	t.Helper()
	ours := map[string]bool{}
	for _, target := range harness.FDTargets(os.Getpid()) {
		if inode, ok := strings.CutPrefix(target, "socket:["); ok {
			ours[strings.TrimSuffix(inode, "]")] = true
		}
	}
	n := 0
	for _, table := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		f, err := os.Open(table)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fs := strings.Fields(sc.Text())
			if len(fs) < 10 || fs[3] != "01" { // ESTABLISHED
				continue
			}
			_, rport, _ := strings.Cut(fs[2], ":")
			if p, err := strconv.ParseInt(rport, 16, 32); err == nil && int(p) == port && ours[fs[9]] {
				n++
			}
		}
		f.Close()
	}
	return n
}
