package cluster

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/sqliteproxy/sqliteproxy/cluster/etcdtest"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// A move whose key is written just after a node's Acquire committed its
// owner key, but before the Acquire recorded the lease as held: onMove
// found nothing held and did nothing, the Acquire then returned a live
// lease, and the owner never gave the tenant up: the move waited until its
// context ended (16 of 40 rounds). Seen as a RestoreTenant, whose drain
// releases and takes the tenant again, while `sqliteproxy move` ran.
func TestMove_RacingAcquireNoticed(t *testing.T) {
	srv := etcdtest.Start(t)
	a, _ := newNode(t, srv, "a"), newNode(t, srv, "b")
	cli, err := clientv3.New(clientv3.Config{Endpoints: srv.Endpoints(), DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx := ctxT(t, 5*time.Minute)
	hung := 0
	const rounds = 20
	for i := range rounds {
		id := fmt.Sprintf("t%d", i)
		// the mover: as soon as the owner key exists, write the move key
		w := cli.Watch(ctx, ownersPrefix+id)
		put := make(chan struct{})
		go func() {
			defer close(put)
			for resp := range w {
				for _, ev := range resp.Events {
					if ev.Type == clientv3.EventTypePut {
						cli.Put(ctx, movesPrefix+id, "b")
						return
					}
				}
			}
		}()
		l, err := a.Acquire(ctx, id)
		<-put
		if err != nil {
			// The move won the race: refused, and released for the target.
			t.Logf("round %d: Acquire: %v", i, err)
		} else {
			// the driver: on Lost, release with a position
			go func() { <-l.Lost(); l.Release(context.Background(), 1) }()
		}
		// the target takes it within a few seconds, or the move hangs
		deadline := time.Now().Add(4 * time.Second)
		took := false
		for time.Now().Before(deadline) {
			r, err := cli.Get(ctx, ownersPrefix+id)
			if err == nil && len(r.Kvs) == 1 && string(r.Kvs[0].Value) == "b" {
				took = true
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if !took {
			hung++
			r, _ := cli.Get(ctx, ownersPrefix+id)
			owner := ""
			if len(r.Kvs) == 1 {
				owner = string(r.Kvs[0].Value)
			}
			t.Logf("round %d: 4 s after the move key, owner is %q (Acquire: %v)", i, owner, err)
		}
		cli.Delete(ctx, movesPrefix+id)
	}
	if hung > 0 {
		t.Fatalf("%d of %d moves never noticed by the owner", hung, rounds)
	}
}
