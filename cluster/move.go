package cluster

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/sqliteproxy/sqliteproxy"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Moves. A graceful move of a tenant to a node is a key moves/<tenant> =
// <target>, written by the mover (Admin.Move) on a lease of its own, so a
// mover that dies leaves nothing behind. While it exists:
//   - no node but the target may take the tenant (Acquire answers an
//     *sqliteproxy.OwnerError naming the target);
//   - the owner ends its lease's Lost channel, so the driver closes the
//     tenant, syncs it to its replica and releases it with its final
//     position;
//   - the target takes the tenant as soon as nobody owns it, before any
//     request asks for it; its driver restores at least the released
//     position on first access.
// The mover deletes the key once the target owns the tenant.

// movingTo is the error of Acquire for a tenant being moved to node tgt.
func (c *Cluster) movingTo(ctx context.Context, id, tgt string) error {
	return &sqliteproxy.OwnerError{Tenant: id, Owner: tgt, OwnerURL: c.nodeURL(ctx, tgt)}
}

// react acts on watched changes: moves to or away from this node, and the
// release of a tenant a move is waiting for.
func (c *Cluster) react(events []*clientv3.Event) {
	for _, ev := range events {
		key := string(ev.Kv.Key)
		switch {
		case ev.Type == mvccpb.PUT && strings.HasPrefix(key, movesPrefix):
			c.onMove(strings.TrimPrefix(key, movesPrefix), string(ev.Kv.Value))
		case ev.Type == mvccpb.DELETE && strings.HasPrefix(key, ownersPrefix):
			id := strings.TrimPrefix(key, ownersPrefix)
			if tgt, ok := c.cache.move(id); ok && tgt == c.cfg.NodeID {
				c.takeMoved(id)
			}
		}
	}
}

// onMove starts this node's part of moving tenant id to tgt.
func (c *Cluster) onMove(id, tgt string) {
	if tgt == c.cfg.NodeID {
		c.takeMoved(id)
		return
	}
	c.mu.Lock()
	l := c.held[id]
	used := l != nil && l.used
	if l != nil {
		delete(c.held, id) // Acquire here now answers the move's target
	}
	c.mu.Unlock()
	if l == nil {
		return
	}
	if used {
		l.kill() // the driver closes the tenant and releases it with its position
		return
	}
	c.releaseUnused(l)
}

// releaseUnused releases, in the background, a lease taken for a move
// that went elsewhere, never opened here: nothing was written in its
// generation (ReleaseUnwritten).
func (c *Cluster) releaseUnused(l *tenantLease) {
	go func() {
		ctx, cancel := context.WithTimeout(c.ctx, opTimeout)
		defer cancel()
		_ = l.ReleaseUnwritten(ctx)
	}()
}

// takeMoved takes tenant id, being moved here, in the background.
func (c *Cluster) takeMoved(id string) {
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		ctx, cancel := context.WithTimeout(c.ctx, opTimeout)
		defer cancel()
		for {
			_, err := c.acquireShared(ctx, id)
			var oe *sqliteproxy.OwnerError
			if err == nil || !errors.As(err, &oe) {
				return
			}
			// An *OwnerError: the owner held it when this attempt, or the
			// one it joined, read etcd. Its release reacts with another
			// takeMoved, but one that joined an attempt begun before the
			// release gets that attempt's error: so while the move still
			// targets this node, look again unless the cache (updated
			// before react) says the owner still holds it.
			if tgt, ok := c.cache.move(id); !ok || tgt != c.cfg.NodeID {
				return
			}
			if _, held := c.cache.owner(id); held {
				return // its release reacts again
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
}

// Admin reads and changes a cluster without being one of its nodes (the
// ops CLI): it lists nodes and owners and moves tenants.
type Admin struct {
	cli *clientv3.Client
}

// NewAdmin connects to etcd.
func NewAdmin(endpoints []string) (*Admin, error) {
	if len(endpoints) == 0 {
		return nil, errors.New("cluster: no etcd endpoints")
	}
	cli, err := newClient(endpoints)
	if err != nil {
		return nil, fmt.Errorf("cluster: connect to etcd: %w", err)
	}
	return &Admin{cli: cli}, nil
}

// Close disconnects from etcd.
func (a *Admin) Close() error { return a.cli.Close() }

// Nodes lists the live nodes, sorted by ID.
func (a *Admin) Nodes(ctx context.Context) ([]Node, error) { return listNodes(ctx, a.cli) }

// Owners lists the owned tenants, sorted by tenant.
func (a *Admin) Owners(ctx context.Context) ([]Owner, error) { return listOwners(ctx, a.cli) }

// ErrMoveTargetGone is returned by Admin.Move when the target node leaves
// the cluster (its lease ended: it died, or closed) before it took the
// tenant. The move is called off, so the tenant is free for any node again.
var ErrMoveTargetGone = errors.New("cluster: move target is not a live node")

// Move hands tenant id over to the live node target and returns once
// target owns it (or ctx ends): the owner syncs the tenant to its replica
// and releases it with its final position, and target takes it and
// restores at least that position on first access. A tenant nobody owns is
// simply taken by target. Moving a tenant to its owner does nothing.
//
// While the move is pending no other node may take the tenant, so Move
// calls it off as soon as target leaves the cluster (its node key goes
// when its lease ends, at most its TTL after it died) and fails with
// ErrMoveTargetGone: the tenant is then free for any node. When ctx ends
// first, the move is called off too.
func (a *Admin) Move(ctx context.Context, id, target string) error {
	if err := sqliteproxy.ValidTenantID(id); err != nil {
		return err
	}
	moveKey, ownerKey, nodeKey := movesPrefix+id, ownersPrefix+id, nodesPrefix+target
	// The move key lives on a lease of this mover, kept alive while it
	// waits: if the mover dies, the key goes and the tenant is free again.
	lease, err := a.cli.Grant(ctx, int64(DefaultTTL/time.Second))
	if err != nil {
		return fmt.Errorf("cluster: move %q: %w", id, err)
	}
	kctx, stop := context.WithCancel(context.Background())
	defer func() {
		stop()
		rctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		defer cancel()
		// Only its own move key: a Move refused because another move of
		// the tenant was in progress deleted that move's key, and any node
		// could take the tenant during it. (Revoke deletes it too; this
		// frees the tenant even if the Revoke fails.)
		_, _ = a.cli.Txn(rctx).If(clientv3.Compare(clientv3.LeaseValue(moveKey), "=", lease.ID)).
			Then(clientv3.OpDelete(moveKey)).Commit()
		_, _ = a.cli.Revoke(rctx, lease.ID)
	}()
	if _, err := a.cli.KeepAlive(kctx, lease.ID); err != nil {
		return fmt.Errorf("cluster: move %q: %w", id, err)
	}
	// Only to a registered node, checked in the same transaction.
	r, err := a.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(moveKey), "=", 0),
			clientv3.Compare(clientv3.CreateRevision(nodeKey), ">", 0)).
		Then(clientv3.OpPut(moveKey, target, clientv3.WithLease(lease.ID))).
		Else(clientv3.OpGet(nodeKey, clientv3.WithCountOnly())).
		Commit()
	if err != nil {
		return fmt.Errorf("cluster: move %q: %w", id, err)
	}
	if !r.Succeeded {
		if r.Responses[0].GetResponseRange().Count == 0 {
			return fmt.Errorf("cluster: move %q: node %q: %w", id, target, ErrMoveTargetGone)
		}
		return fmt.Errorf("cluster: move %q: another move of it is in progress", id)
	}
	// The watches are hints; the Txn decides.
	wo := a.cli.Watch(kctx, ownerKey, clientv3.WithRev(r.Header.Revision))
	wn := a.cli.Watch(kctx, nodeKey, clientv3.WithRev(r.Header.Revision))
	for {
		g, err := a.cli.Txn(ctx).Then(clientv3.OpGet(ownerKey), clientv3.OpGet(nodeKey, clientv3.WithCountOnly())).Commit()
		if err != nil {
			return fmt.Errorf("cluster: move %q: %w", id, err)
		}
		if kvs := g.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 && string(kvs[0].Value) == target {
			return nil
		}
		if g.Responses[1].GetResponseRange().Count == 0 {
			// It died (or closed) before taking the tenant. Waiting on
			// would keep every other node from taking it until ctx ends.
			return fmt.Errorf("cluster: move %q called off: node %q left the cluster before taking it: %w", id, target, ErrMoveTargetGone)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster: move %q to %q: %w", id, target, ctx.Err())
		case _, ok := <-wo:
			if !ok {
				wo = nil // failed (compacted, say): the timer goes on
			}
		case _, ok := <-wn:
			if !ok {
				wn = nil
			}
		case <-time.After(time.Second):
		}
	}
}
