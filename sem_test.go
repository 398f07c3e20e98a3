package sqliteproxy

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"
)

func TestSem(t *testing.T) {
	t.Parallel()
	var s sem
	if !s.TryAcquire() || s.TryAcquire() {
		t.Fatal("TryAcquire")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := s.Acquire(ctx); err == nil {
		t.Fatal("Acquire of a held semaphore did not time out")
	}
	// FIFO hand-over.
	var order []int
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := range 5 {
		wg.Go(func() {
			if err := s.Acquire(context.Background()); err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			order = append(order, i)
			mu.Unlock()
			s.Release()
		})
		waitFor(t, 10*time.Second, fmt.Sprintf("waiter %d to queue", i), func() bool { return s.nwait.Load() == int32(i+1) })
	}
	s.Release()
	wg.Wait()
	for i, v := range order {
		if v != i {
			t.Fatalf("waiters served in order %v", order)
		}
	}
	if !s.TryAcquire() {
		t.Fatal("semaphore not free at the end")
	}
	s.Release()

	// Mutual exclusion under churn with cancellations.
	var inside, bad int32
	var wg2 sync.WaitGroup
	for i := range 16 {
		wg2.Go(func() {
			for j := range 200 {
				ctx, cancel := context.WithTimeout(context.Background(), time.Duration(j%3)*time.Microsecond)
				if (i+j)%4 == 0 {
					ctx, cancel = context.WithCancel(context.Background())
				}
				if s.Acquire(ctx) == nil {
					mu.Lock()
					inside++
					if inside != 1 {
						bad++
					}
					inside--
					mu.Unlock()
					s.Release()
				}
				cancel()
			}
		})
	}
	wg2.Wait()
	if bad != 0 {
		t.Fatalf("%d times two holders at once", bad)
	}
	if !s.TryAcquire() {
		t.Fatal("semaphore leaked by a cancelled waiter")
	}
}
