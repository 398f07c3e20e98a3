package cluster_test

import (
	"context"
	"fmt"
	"log"
	"net/http"

	"github.com/sqliteproxy/sqliteproxy"
	"github.com/sqliteproxy/sqliteproxy/cluster"
)

// A node joins the cluster, gives the driver its ownership of tenants and
// forwards requests for tenants owned elsewhere. (Not run: it needs etcd.)
func Example() {
	c, err := cluster.New(cluster.Config{
		Endpoints:    []string{"http://etcd-1:2379", "http://etcd-2:2379", "http://etcd-3:2379"},
		NodeID:       "node-a",
		AdvertiseURL: "http://10.0.0.5:8080",
	})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close() // after the driver's Close: it releases with positions

	// Set as sqliteproxy.Config.Ownership: the driver opens a tenant only
	// while this node holds it.
	var ownership sqliteproxy.Ownership = c
	_ = ownership

	app := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Queries with r.Context() run on this node's copy of the tenant.
	})
	tenants := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			ctx := sqliteproxy.WithOrgID(r.Context(), r.Header.Get("X-Org-ID"))
			next.ServeHTTP(w, r.WithContext(ctx))
		})
	}
	// Forward goes inside the tenant middleware: it needs the tenant.
	log.Fatal(http.ListenAndServe(":8080", tenants(c.Forward(app))))
}

// Who owns what, e.g. for an admin command.
func ExampleCluster_Owners() {
	var c *cluster.Cluster // from cluster.New
	ctx := context.Background()
	if c == nil {
		return
	}
	nodes, _ := c.Nodes(ctx)
	for _, n := range nodes {
		fmt.Println("node", n.ID, n.URL)
	}
	owners, _ := c.Owners(ctx)
	for _, o := range owners {
		fmt.Println(o.Tenant, "on", o.Node, "generation", o.Generation)
	}
}
