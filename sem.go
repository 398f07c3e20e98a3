package sqliteproxy

import (
	"context"
	"sync/atomic"
)

// sem is a binary semaphore whose Acquire honours a context. The
// uncontended path is one compare-and-swap each way (a buffered channel
// costs ~50 ns per lease).
type sem struct {
	held    atomic.Bool
	waiters atomic.Int32
	wake    chan struct{} // capacity 1: a hint that the semaphore was released
}

func newSem() sem { return sem{wake: make(chan struct{}, 1)} }

func (s *sem) TryAcquire() bool { return s.held.CompareAndSwap(false, true) }

func (s *sem) Acquire(ctx context.Context) error {
	if s.TryAcquire() {
		return nil
	}
	s.waiters.Add(1)
	defer s.waiters.Add(-1)
	for {
		if s.TryAcquire() {
			return nil
		}
		select {
		case <-s.wake:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (s *sem) Release() {
	s.held.Store(false)
	if s.waiters.Load() > 0 {
		select {
		case s.wake <- struct{}{}:
		default: // a wake-up is pending already
		}
	}
}
