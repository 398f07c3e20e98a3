package sqliteproxy

import (
	"context"
	"errors"
	"fmt"
)

// ErrNotOwner: the tenant is owned by another node of the cluster (see
// Config.Ownership). The error is an *OwnerError that names the owner.
// Nothing ran.
var ErrNotOwner = errors.New("sqliteproxy: tenant is owned by another node")

// OwnerError says where a tenant owned by another node lives. It matches
// ErrNotOwner with errors.Is; get it with errors.As.
type OwnerError struct {
	Tenant   string // the tenant ID
	Owner    string // the owner's node ID
	OwnerURL string // the owner's advertised URL (where to forward requests)
}

func (e *OwnerError) Error() string {
	return fmt.Sprintf("sqliteproxy: tenant %q is owned by node %q (%s)", e.Tenant, e.Owner, e.OwnerURL)
}

// Is makes errors.Is(err, ErrNotOwner) true.
func (e *OwnerError) Is(target error) bool { return target == ErrNotOwner }

// Ownership decides which node of a cluster may open a tenant: set as
// Config.Ownership, a tenant is opened here only while this node holds its
// lease, and a statement for a tenant another node owns fails with an
// *OwnerError. Package github.com/sqliteproxy/sqliteproxy/cluster
// implements it with etcd leases.
type Ownership interface {
	// Acquire takes tenant id for this node, or returns the lease this node
	// holds already. It fails with an *OwnerError when another node owns
	// the tenant.
	Acquire(ctx context.Context, id string) (TenantLease, error)
}

// TenantLease is this node's ownership of one tenant.
type TenantLease interface {
	// Generation is the fencing token: the revision at which this node took
	// the tenant. With replication the tenant streams to
	// <ReplicaURL>/<id>/g<Generation>, so a node that lost its lease
	// without knowing yet can only write a generation nobody restores from.
	Generation() int64
	// Previous is the generation the tenant was written in before this one
	// (0: none) and the replicated position (Litestream TXID) its last
	// owner released it with (0: unknown, e.g. the owner died).
	Previous() (gen int64, pos uint64)
	// Lost is closed when the lease may no longer be relied on (it was not
	// renewed in time, with a margin before it can expire): the node stops
	// writing the tenant and closes it.
	Lost() <-chan struct{}
	// Release gives the tenant up, recording its final replicated position.
	Release(ctx context.Context, pos uint64) error
}
