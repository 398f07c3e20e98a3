package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sqliteproxy/sqliteproxy"
	"github.com/sqliteproxy/sqliteproxy/cluster"
)

// etcdFlag is the -etcd flag of the cluster commands.
func etcdFlag(f *flags) *string {
	return f.String("etcd", "", "comma-separated etcd `endpoints` of the cluster, e.g. http://127.0.0.1:2379 (required)")
}

// admin connects to the cluster's etcd named by -etcd.
func (e *env) admin(f *flags, endpoints string) (*cluster.Admin, int, bool) {
	if !f.isSet("etcd") || strings.TrimSpace(endpoints) == "" {
		return nil, e.usageError(f, "-etcd ENDPOINTS is required"), false
	}
	a, err := cluster.NewAdmin(strings.Split(endpoints, ","))
	if err != nil {
		e.errorf("%s: %v", f.Name(), err)
		return nil, exitFailed, false
	}
	return a, exitOK, true
}

// etcdHint names the endpoints when err is a deadline: an etcd that does
// not answer (a wrong -etcd, etcd down) failed with "context deadline
// exceeded" alone.
func etcdHint(err error, endpoints string) string {
	if errors.Is(err, context.DeadlineExceeded) {
		return " (no answer from etcd at " + endpoints + ")"
	}
	return ""
}

// nodes: the live nodes of a cluster.
func (e *env) nodes(args []string) int {
	f := e.newFlagsNoDir("nodes")
	endpoints := etcdFlag(f)
	asJSON := f.Bool("json", false, "print a JSON array of {id, url}")
	if _, st, ok := e.parse(f, args, 0, 0); !ok {
		return st
	}
	a, st, ok := e.admin(f, *endpoints)
	if !ok {
		return st
	}
	defer a.Close()
	nodes, err := a.Nodes(e.ctx)
	if err != nil {
		e.errorf("nodes: %v%s", err, etcdHint(err, *endpoints))
		return exitFailed
	}
	if *asJSON {
		out := make([]map[string]string, 0, len(nodes))
		for _, n := range nodes {
			out = append(out, map[string]string{"id": n.ID, "url": n.URL})
		}
		b, _ := json.Marshal(out)
		fmt.Fprintf(e.stdout, "%s\n", b)
		return exitOK
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tURL")
	for _, n := range nodes {
		fmt.Fprintf(tw, "%s\t%s\n", n.ID, n.URL)
	}
	tw.Flush()
	return exitOK
}

// owners: which node owns which tenant.
func (e *env) owners(args []string) int {
	f := e.newFlagsNoDir("owners")
	endpoints := etcdFlag(f)
	asJSON := f.Bool("json", false, "print a JSON array of {tenant, node, generation}")
	if _, st, ok := e.parse(f, args, 0, 0); !ok {
		return st
	}
	a, st, ok := e.admin(f, *endpoints)
	if !ok {
		return st
	}
	defer a.Close()
	owners, err := a.Owners(e.ctx)
	if err != nil {
		e.errorf("owners: %v%s", err, etcdHint(err, *endpoints))
		return exitFailed
	}
	if *asJSON {
		type owner struct {
			Tenant     string `json:"tenant"`
			Node       string `json:"node"`
			Generation int64  `json:"generation"`
		}
		out := make([]owner, 0, len(owners))
		for _, o := range owners {
			out = append(out, owner{o.Tenant, o.Node, o.Generation})
		}
		b, _ := json.Marshal(out)
		fmt.Fprintf(e.stdout, "%s\n", b)
		return exitOK
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TENANT\tNODE\tGENERATION")
	for _, o := range owners {
		fmt.Fprintf(tw, "%s\t%s\t%d\n", o.Tenant, o.Node, o.Generation)
	}
	tw.Flush()
	return exitOK
}

// move: hand a tenant over to another node, gracefully.
func (e *env) move(args []string) int {
	f := e.newFlagsNoDir("move")
	endpoints := etcdFlag(f)
	to := f.String("to", "", "the `node` to move the tenant to (required)")
	timeout := f.Duration("timeout", time.Minute, "give up after this long")
	pos, st, ok := e.parse(f, args, 1, 1)
	if !ok {
		return st
	}
	id := pos[0]
	if err := sqliteproxy.ValidTenantID(id); err != nil {
		return e.usageError(f, "%s", errText(err))
	}
	if !f.isSet("to") || *to == "" {
		return e.usageError(f, "-to NODE is required")
	}
	a, st, ok := e.admin(f, *endpoints)
	if !ok {
		return st
	}
	defer a.Close()
	ctx, cancel := context.WithTimeout(e.ctx, *timeout)
	defer cancel()
	start := time.Now()
	if err := a.Move(ctx, id, *to); err != nil {
		e.errorf("move: %v", err)
		return exitFailed
	}
	fmt.Fprintf(e.stdout, "%s: moved to %s in %v\n", id, *to, time.Since(start).Round(time.Millisecond))
	return exitOK
}
