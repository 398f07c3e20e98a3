package cluster

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// ownerCache mirrors owners/ and nodes/ so that Forward and Owner answer
// without an etcd round trip. It is filled by one Get and kept current by
// a watch from the revision after it.
type ownerCache struct {
	mu     sync.RWMutex
	synced bool
	owners map[string]string // tenant -> node
	nodes  map[string]string // node -> URL
	moves  map[string]string // tenant -> target node of a pending move
}

func (oc *ownerCache) move(id string) (string, bool) {
	oc.mu.RLock()
	defer oc.mu.RUnlock()
	t, ok := oc.moves[id]
	return t, ok
}

func (oc *ownerCache) owner(id string) (string, bool) {
	oc.mu.RLock()
	defer oc.mu.RUnlock()
	n, ok := oc.owners[id]
	return n, ok
}

func (oc *ownerCache) nodeURL(node string) (string, bool) {
	oc.mu.RLock()
	defer oc.mu.RUnlock()
	u, ok := oc.nodes[node]
	return u, ok
}

func (oc *ownerCache) reset(owners, nodes, moves map[string]string) {
	oc.mu.Lock()
	oc.owners, oc.nodes, oc.moves, oc.synced = owners, nodes, moves, true
	oc.mu.Unlock()
}

func (oc *ownerCache) unsync() {
	oc.mu.Lock()
	oc.owners, oc.nodes, oc.moves, oc.synced = nil, nil, nil, false
	oc.mu.Unlock()
}

func (oc *ownerCache) apply(events []*clientv3.Event) {
	oc.mu.Lock()
	defer oc.mu.Unlock()
	for _, ev := range events {
		key := string(ev.Kv.Key)
		for _, kind := range []struct {
			prefix string
			m      map[string]string
		}{{ownersPrefix, oc.owners}, {nodesPrefix, oc.nodes}, {movesPrefix, oc.moves}} {
			id, ok := strings.CutPrefix(key, kind.prefix)
			switch {
			case !ok:
				continue
			case ev.Type != mvccpb.PUT:
				delete(kind.m, id)
			case kind.prefix == nodesPrefix:
				kind.m[id] = parseNodeURL(ev.Kv.Value)
			default:
				kind.m[id] = string(ev.Kv.Value)
			}
			break
		}
	}
}

func parseNodeURL(b []byte) string {
	var v nodeValue
	_ = json.Unmarshal(b, &v)
	return v.URL
}

// watch keeps the cache: load, watch until the watch fails (compaction,
// cancellation), load again.
func (c *Cluster) watch() {
	defer c.wg.Done()
	defer c.cache.unsync()
	for c.ctx.Err() == nil {
		rev, err := c.load()
		if err != nil {
			select {
			case <-c.ctx.Done():
				return
			case <-time.After(500 * time.Millisecond):
			}
			continue
		}
		wctx, cancel := context.WithCancel(c.ctx)
		for resp := range c.cli.Watch(wctx, KeyPrefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1)) {
			if resp.Err() != nil {
				break
			}
			c.cache.apply(resp.Events)
			c.react(resp.Events)
		}
		cancel()
		c.cache.unsync()
	}
}

// load reads owners/ and nodes/ at one revision.
func (c *Cluster) load() (int64, error) {
	ctx, cancel := context.WithTimeout(c.ctx, opTimeout)
	defer cancel()
	r, err := c.cli.Txn(ctx).Then(
		clientv3.OpGet(ownersPrefix, clientv3.WithPrefix()),
		clientv3.OpGet(nodesPrefix, clientv3.WithPrefix()),
		clientv3.OpGet(movesPrefix, clientv3.WithPrefix()),
	).Commit()
	if err != nil {
		return 0, err
	}
	owners := make(map[string]string)
	for _, kv := range r.Responses[0].GetResponseRange().Kvs {
		owners[strings.TrimPrefix(string(kv.Key), ownersPrefix)] = string(kv.Value)
	}
	nodes := make(map[string]string)
	for _, kv := range r.Responses[1].GetResponseRange().Kvs {
		nodes[strings.TrimPrefix(string(kv.Key), nodesPrefix)] = parseNodeURL(kv.Value)
	}
	moves := make(map[string]string)
	for _, kv := range r.Responses[2].GetResponseRange().Kvs {
		id := strings.TrimPrefix(string(kv.Key), movesPrefix)
		moves[id] = string(kv.Value)
	}
	c.cache.reset(owners, nodes, moves)
	for id, tgt := range moves { // after reset: takeMoved reads the cache
		c.onMove(id, tgt)
	}
	return r.Header.Revision, nil
}
