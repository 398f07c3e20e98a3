package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/sqliteproxy/sqliteproxy/cluster"
	"github.com/sqliteproxy/sqliteproxy/cluster/etcdtest"
)

func clusterNode(t *testing.T, srv *etcdtest.Server, id string) *cluster.Cluster {
	t.Helper()
	c, err := cluster.New(cluster.Config{Endpoints: srv.Endpoints(), NodeID: id, AdvertiseURL: "http://" + id + ".invalid", TTL: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// nodes, owners and move against a real etcd: two nodes, a tenant moved
// from one to the other (the old owner releases it when its lease ends, as
// the driver does).
func TestClusterCommands(t *testing.T) {
	srv := etcdtest.Start(t)
	etcd := strings.Join(srv.Endpoints(), ",")
	a, _ := clusterNode(t, srv, "a"), clusterNode(t, srv, "b")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	la, err := a.Acquire(ctx, "acme")
	if err != nil {
		t.Fatal(err)
	}

	r := cli(t, nil, "nodes", "-etcd", etcd).want(t, exitOK)
	if r.stdout != "NODE  URL\na     http://a.invalid\nb     http://b.invalid\n" {
		t.Errorf("nodes:\n%s", r.stdout)
	}
	r = cli(t, nil, "owners", "-etcd", etcd, "-json").want(t, exitOK)
	var owners []struct {
		Tenant, Node string
		Generation   int64
	}
	if err := json.Unmarshal([]byte(r.stdout), &owners); err != nil || len(owners) != 1 || owners[0].Tenant != "acme" || owners[0].Node != "a" || owners[0].Generation != la.Generation() {
		t.Errorf("owners -json: %s (%v)", r.stdout, err)
	}

	go func() { // the driver's part: close the tenant, release it with its position
		select {
		case <-la.Lost():
			la.Release(ctx, 1)
		case <-ctx.Done():
		}
	}()
	r = cli(t, nil, "move", "-etcd", etcd, "-to", "b", "acme").want(t, exitOK)
	if !strings.HasPrefix(r.stdout, "acme: moved to b in ") {
		t.Errorf("move: %q", r.stdout)
	}
	r = cli(t, nil, "owners", "-etcd", etcd).want(t, exitOK)
	if !strings.Contains(r.stdout, "acme    b") {
		t.Errorf("owners after the move:\n%s", r.stdout)
	}
}

func TestClusterCommandsUsage(t *testing.T) {
	cli(t, nil, "nodes").want(t, exitUsage)                                       // no -etcd
	cli(t, nil, "owners", "-etcd", "").want(t, exitUsage)                         // empty -etcd
	cli(t, nil, "move", "-etcd", "http://127.0.0.1:1", "acme").want(t, exitUsage) // no -to
	cli(t, nil, "move", "-etcd", "http://127.0.0.1:1", "-to", "b", "Bad-ID").want(t, exitUsage)
	cli(t, nil, "move", "-etcd", "http://127.0.0.1:1", "-to", "b").want(t, exitUsage) // no ID
}

// An etcd that does not answer is named: the error said only "context
// deadline exceeded".
func TestClusterCommandsUnreachableEtcd(t *testing.T) {
	t.Parallel()
	r := cli(t, nil, "nodes", "-etcd", "http://127.0.0.1:1").want(t, exitFailed)
	if !strings.Contains(r.stderr, "no answer from etcd at http://127.0.0.1:1") {
		t.Errorf("stderr does not name the endpoint:\n%s", r.stderr)
	}
}
