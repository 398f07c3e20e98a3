//go:build linux

package replication_test

import (
	"github.com/sqliteproxy/sqliteproxy/cluster"
	"github.com/sqliteproxy/sqliteproxy/cluster/etcdtest"
)

// clusterNode is one in-process node: a proxy with its own data directory
// and Litestream process, sharing the rig's replica and an etcd.
type clusterNode struct {
	id string
	c  *cluster.Cluster
}

var _ = etcdtest.Start
