package sqliteproxy

import (
	"context"
	"database/sql/driver"
	"errors"
	"maps"
	"regexp"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mattn/go-sqlite3"
	"github.com/sqliteproxy/sqliteproxy/internal/sqlscan"
)

// Group commit. Autocommit writes that find a tenant's writer busy queue up
// instead of waiting for it one by one; the head of the queue (the leader)
// takes the writer once and runs the whole queue in one transaction,
// commits once, and only then answers every caller with its own result or
// error. One hand-over of the writer (and one commit, one fsync with
// synchronous=FULL) per batch instead of per statement.
//
// Each statement stays atomic on its own without a SAVEPOINT: SQLite undoes
// a failing statement and keeps the transaction going (statement journal;
// "Response To Errors Within A Transaction"), except when the error rolls
// the whole transaction back, which sqlite3_get_autocommit tells (then the
// batch runs again alone, below). A SAVEPOINT per statement was measured:
// it cost a third of the throughput, and ROLLBACK TO would also undo what
// INSERT OR FAIL keeps in autocommit mode, where this keeps it as SQLite
// would.
//
// What is batched: a single INSERT, UPDATE, DELETE or REPLACE without
// RETURNING, executed by (*sql.DB).ExecContext on a checkout that holds no
// lease, while the writer is busy. Everything else takes the writer as
// before: statements that cannot run inside a transaction or that the
// scanner is not sure of, explicit transactions, sql.Conn work (throughDB)
// and any checkout that holds a lease.
// Uncontended, a write never batches: a batch of one is today's path.
//
// Gathering. Callers answered together write again together: without a
// wait, the first of them found the writer free and committed alone while
// the others queued behind it, so batches alternated between one caller
// and the rest (two syncs per round at synchronous=FULL). A leader now
// waits, before it takes the writer, until as many callers are queued as
// the largest batch it has seen (want), for at most as long as a COMMIT
// takes (a moving average, maxGather at most); a wait that times out sets
// want to what came. While want ≥ 2 a write on a free writer leads a
// batch instead of taking the writer alone; a lone writer pays that one
// bounded wait, and then (want 1) takes the writer as before.
//
// Semantics kept: FIFO order; a statement that fails is rolled back alone
// (by SQLite) and its caller gets its own error; a caller
// whose context ends while queued is removed and nothing of it runs (one
// without a deadline waits BusyTimeout from its call, queued and leading
// together, then gets SQLITE_BUSY, as it would waiting for the writer); a
// caller whose context ends while its statement runs has it interrupted,
// as alone (SQLite rolls the batch's transaction back with it, and the
// others run again alone); a caller whose context ends after its statement
// ran, before the batch commits (behind another caller's slow statement),
// has the leader commit what has run at its next statement once it has
// waited a grace (a COMMIT's time, a millisecond at least: hurried; what
// has not run is queued again at the head), and if the running
// statement runs on past abortAfter, leaves with its context's error, as
// alone it would have been answered by then: the batch is undone (the
// running statement interrupted), nothing of the leaving caller applied,
// and the others are queued again at the head, the interrupted statement
// to run alone; a
// failed COMMIT applies nothing and fails every caller of the batch,
// except a constraint failure at COMMIT (deferred foreign keys), after
// which each statement runs again alone so each caller gets exactly what
// it would have got alone. With foreign keys on and a key INITIALLY
// DEFERRED in the schema, statements run alone: one caller's statement
// could mend another's broken key before the COMMIT (deferredKeys).
// A statement that runs alone is run by its own caller (queued again,
// marked alone, it leads a batch of one): no caller waits for another's
// statement outside their batch's transaction, which it may leave.
// Visible difference: a statement's commit may carry other callers'
// statements (they become durable together).

// maxBatch bounds the statements of one batch (a batch holds the writer).
const maxBatch = 128

// abortAfter is how long a batched caller whose context ended after its
// statement ran waits for the batch to commit (the leader commits what
// has run as soon as the statement it runs ends) before it undoes the
// batch and leaves. Undone at once, batches under load would be thrown
// away whenever one caller's deadline passed, and commit almost nothing:
// a statement that runs longer than this is interrupted, and runs again
// alone, at most once.
const abortAfter = 20 * time.Millisecond

// maxGather bounds how long a leader waits for callers to join its batch.
const maxGather = 250 * time.Microsecond

// A yield (runtime.Gosched) that takes longer than gatherStall means other
// goroutines keep the processors busy (the scheduler preempts them every
// 10 ms; an idle machine answers in microseconds, a busy VM's hiccups
// rarely take a millisecond): gathers then sleep for gatherSleep.
const (
	gatherStall = 2 * time.Millisecond
	gatherSleep = time.Second
)

// gcReq is one queued autocommit statement. Requests are pooled (gcReqs):
// at a hundred thousand statements a second, a request and its channels
// per statement kept the garbage collector busy enough to show in p99.
type gcReq struct {
	ctx   context.Context
	query string
	args  []driver.NamedValue
	reuse bool // may run from the writer's prepared statements (batchable)
	res   driver.Result
	err   error
	// deadline bounds the wait of a request whose ctx has none, by
	// BusyTimeout from its arrival (boundWait): queued or leading, it
	// waits no longer than it would for the writer without the queue.
	deadline time.Time
	// wake receives exactly one signal for a request taken from the queue
	// by someone else: gcDone (answered: res and err are set) or gcLead
	// (lead the next batch). Buffered, so the sender never waits.
	wake chan gcSignal
	// timer ends a queued wait at deadline (bound).
	timer *time.Timer
	// state: reqQueued until a leader takes the request into its batch
	// (reqBatched, under gc.mu); the leader makes it reqRunning just before
	// it runs, unless its caller, whose context ended first, made it
	// reqAbandoned: then nothing of it runs, and the caller has left. A
	// caller whose context ends after its statement ran, while the batch's
	// transaction is open, makes it reqAbandoned too, and the batch is
	// undone (abortLocked).
	state atomic.Int32
	// tx is the batch transaction r was taken into (groupCommit.txSeq;
	// written under gc.mu): a caller leaves an open transaction only if it
	// is its own, not one begun after its batch committed and before its
	// caller took the answer.
	tx uint64
	// alone: r runs in a batch of its own when it leads (queued again
	// after its statement ended or was in a batch that was undone: see
	// runBatch). Written by its leader, read under gc.mu.
	alone bool
}

const (
	reqQueued int32 = iota
	reqBatched
	reqRunning
	reqAbandoned
	// reqAnswered: its leader answered it without running it (its
	// context had ended). Its caller may wait for that answer already
	// (it had found its statement run in a batch that was then undone).
	reqAnswered
)

// run reports whether the leader may run r, marking it running: not when
// its caller abandoned it.
func (r *gcReq) run() bool {
	return r.state.CompareAndSwap(reqBatched, reqRunning)
}

type gcSignal uint8

const (
	gcDone gcSignal = iota
	gcLead
)

var gcReqs = sync.Pool{New: func() any { return &gcReq{wake: make(chan gcSignal, 1)} }}

// groupCommit is a tenant's queue of autocommit statements.
type groupCommit struct {
	mu     sync.Mutex
	q      []*gcReq
	active atomic.Bool  // a leader runs or waits for the writer; changed under mu
	want   atomic.Int32 // gather: batch size worth waiting for
	commit atomic.Int64 // gather: how long a batch's COMMIT takes (ns, moving average)
	// gatherMax bounds a gather when set (tests); maxGather otherwise.
	gatherMax time.Duration
	// gathering is how many callers a sleeping leader waits for (0 when
	// none does), guarded by mu; the caller that makes them that many
	// sends on gathered. The leader's own (one leader at a time): timer
	// bounds a sleep, sleepUntil is when gathers may poll again.
	gathering  int
	gathered   chan struct{}
	timer      *time.Timer
	sleepUntil time.Time
	yields     int // gathers' yields so far (tests)
	// batch, ran and again are the leader's buffers, reused from batch to
	// batch: there is one leader at a time (active).
	batch, ran, again []*gcReq
	// inTx: a batch's transaction is open on writer and may still be
	// undone (not yet committing). A caller whose statement ran in it and
	// whose context ends leaves then, and sets aborted (abortLocked).
	// Guarded by mu; aborted is also read without it.
	inTx    bool
	writer  *physConn
	txSeq   uint64 // counts the batches' transactions
	aborted atomic.Bool
	// hurryAt: when a caller whose context ended began to wait for the
	// batch (UnixNano, 0 for none; set under mu, read without): the
	// leader commits what has run at its next statement once a grace has
	// passed (hurried).
	hurryAt atomic.Int64
	// abortAfter replaces abortAfter when set (tests).
	abortAfter time.Duration
}

// batchable reports whether query may join a batch, and whether it may run
// from the writer's prepared statements (execBatched): nothing follows its
// ';', not even a comment, that mattn would run as a statement of its own.
func batchable(query string) (ok, reuse bool) {
	info := sqlscan.Scan(query)
	if info.Multi || info.Returning {
		return false, false
	}
	switch info.Keyword {
	case "INSERT", "UPDATE", "DELETE", "REPLACE":
		return true, !info.Trailing
	}
	return false, false
}

// throughDB reports whether the statement being executed came through
// (*sql.DB).ExecContext (or Exec), found on the caller's stack. The driver
// sees a DB's one-statement checkout and a sql.Conn's first statement the
// same way, but only the first may be batched: a Conn's next statement
// would not find the session its first one left (last_insert_rowid(),
// changes(), the writer it leased). Looked up only under contention, where
// the statement is about to wait for the writer anyway.
//
// The frame that decides is the caller of database/sql's execDC, seven
// frames above groupExec: (*DB).exec, or (*Conn).ExecContext and friends.
// Unwinding costs ~0.1 µs a frame (it was 12 % of the CPU of eight
// writers), so the first look goes that deep only, and a second one
// deeper only if it decided nothing (another Go release's inlining).
func throughDB() bool {
	var pcs [16]uintptr
	for _, depth := range []int{throughDBDepth, len(pcs)} {
		n := runtime.Callers(3, pcs[:depth])
		if k := decideCaller(pcs[:n]); k != 0 || n < depth {
			return k == 1
		}
		throughDBDeep.Add(1)
	}
	return false
}

// throughDBDeep counts the lookups that the first look left undecided
// (tests want none).
var throughDBDeep atomic.Int64

// throughDBDepth is how many frames above groupExec throughDB looks at
// first: conn.exec, conn.ExecContext, ctxDriverExec, execDC.func2,
// withLock, execDC, and execDC's caller.
const throughDBDepth = 7

// decideCaller returns the kind (callerKind) of the first frame of pcs
// that has one, 0 if none has.
func decideCaller(pcs []uintptr) int8 {
	kinds := callerKinds.Load()
	for _, pc := range pcs {
		k, ok := (*kinds)[pc]
		if !ok {
			k = callerKind(pc)
			kinds = cacheCallerKind(pc, k)
		}
		if k != 0 {
			return k
		}
	}
	return 0
}

// callerKinds caches callerKind by return address (a few dozen call
// sites): an immutable map, replaced to add one.
var callerKinds atomic.Pointer[map[uintptr]int8]

func init() { callerKinds.Store(&map[uintptr]int8{}) }

func cacheCallerKind(pc uintptr, k int8) *map[uintptr]int8 {
	for {
		old := callerKinds.Load()
		m := make(map[uintptr]int8, len(*old)+1)
		maps.Copy(m, *old)
		m[pc] = k
		if callerKinds.CompareAndSwap(old, &m) {
			return &m
		}
	}
}

// callerKind: 1 for a frame of (*sql.DB).ExecContext, Exec or exec (the
// one that calls execDC), -1 for one of the Conn, Tx or Stmt equivalents,
// 0 otherwise.
func callerKind(pc uintptr) int8 {
	frames := runtime.CallersFrames([]uintptr{pc})
	for {
		f, more := frames.Next()
		switch f.Function {
		case "database/sql.(*DB).exec", "database/sql.(*DB).ExecContext", "database/sql.(*DB).Exec":
			return 1
		case "database/sql.(*Conn).ExecContext", "database/sql.(*Tx).ExecContext", "database/sql.(*Stmt).ExecContext":
			return -1
		}
		if !more {
			return 0
		}
	}
}

// uncontended reports whether a write takes t's writer as without group
// commit: no leader, the writer free, and no batch worth gathering for.
func (t *tenant) uncontended() bool {
	return !t.gc.active.Load() && !t.wsem.held.Load() && t.gc.want.Load() < 2
}

// groupExec runs an autocommit write through t's queue, or reports
// handled=false when it should take the writer as before (the writer is
// free and nobody queues: no contention).
func (t *tenant) groupExec(ctx context.Context, query string, args []driver.NamedValue) (res driver.Result, err error, handled bool) {
	if t.uncontended() {
		return nil, nil, false // no lock, no scan
	}
	ok, reuse := batchable(query)
	if !ok || !throughDB() {
		return nil, nil, false
	}
	t.r.retain.leased() // a use of an open tenant, as conn.lease counts one
	r := gcReqs.Get().(*gcReq)
	r.ctx, r.query, r.args, r.reuse = ctx, query, args, reuse
	if _, ok := ctx.Deadline(); !ok {
		r.deadline = time.Now().Add(t.r.cfg.BusyTimeout)
	}
	abandoned := false
	defer func() {
		if abandoned {
			return // its leader may still hold it: not pooled
		}
		*r = gcReq{wake: r.wake} // drop references before pooling
		gcReqs.Put(r)
	}()
	t.gc.mu.Lock()
	if t.uncontended() {
		t.gc.mu.Unlock()
		return nil, nil, false
	}
	if !t.gc.active.Load() {
		t.gc.active.Store(true)
		t.gc.mu.Unlock()
		t.leadBatch(r)
		return r.res, r.err, true
	}
	t.gc.q = append(t.gc.q, r)
	if g := t.gc.gathering; g > 0 && len(t.gc.q)+1 >= g {
		t.gc.gathering = 0
		t.gc.gathered <- struct{}{} // buffered and empty: one send per sleep
	}
	t.gc.mu.Unlock()
	var sig gcSignal
	answered := false
	select {
	case sig = <-r.wake:
		answered = true
	case <-ctx.Done():
	case <-r.bound():
	}
	if r.timer != nil {
		r.timer.Stop()
		r.timer = nil
	}
	if answered {
		return t.answered(r, sig)
	}
	// Its wait ended (its context, or its bound) without an answer.
	for {
		t.gc.mu.Lock()
		if i := slices.Index(t.gc.q, r); i >= 0 {
			t.gc.q = slices.Delete(t.gc.q, i, i+1)
			t.gc.mu.Unlock()
			return nil, opError(opWaitWriter, t.id, waitErr(ctx)), true // nothing of it ran
		}
		// Taken by a leader into its batch, not yet run: its caller leaves
		// at once (a slow statement of another caller ahead of it, or the
		// batch's BEGIN, held it past its deadline), and the leader skips
		// it.
		if r.state.CompareAndSwap(reqBatched, reqAbandoned) {
			t.gc.mu.Unlock()
			abandoned = true
			return nil, opError(opWaitWriter, t.id, waitErr(ctx)), true // nothing of it ran
		}
		// Ran (or runs) in a batch whose transaction is still open, behind
		// another caller's statement: the leader commits what has run at
		// its next statement once a grace has passed (hurried). Only for
		// its context's end: the bound of a caller without a deadline is a
		// wait for the writer, which ended when its statement ran.
		ended := ctx.Err() != nil // read once: a context that ends after this is seen through done
		mine := ended && t.gc.ranInOpenTx(r)
		if mine {
			t.gc.hurryAt.CompareAndSwap(0, time.Now().UnixNano())
		}
		t.gc.mu.Unlock()
		if mine {
			timer := time.NewTimer(t.gc.abortDelay())
			select {
			case sig := <-r.wake:
				timer.Stop()
				return t.answered(r, sig)
			case <-timer.C:
			}
			// That statement runs on (one that never ends, or a long one):
			// the caller leaves, and the batch is undone, nothing of it
			// applied; alone, it would have been answered by now.
			t.gc.mu.Lock()
			if t.gc.ranInOpenTx(r) {
				r.state.Store(reqAbandoned)
				t.gc.abortLocked()
				t.gc.mu.Unlock()
				abandoned = true
				return nil, opError(opWaitWriter, t.id, waitErr(ctx)), true // undone
			}
			t.gc.mu.Unlock()
		}
		// Answered by now (the send is on its way), its batch committing
		// or rolling back, or r leads the next batch, which hands over at
		// once on an ended context (or if the writer is not free by r's
		// deadline). A context that ends later (a wait that its bound
		// ended) is looked at again.
		var done <-chan struct{}
		if !ended {
			done = ctx.Done()
		}
		select {
		case sig := <-r.wake:
			return t.answered(r, sig)
		case <-done:
		}
	}
}

// answered is groupExec's return for r once it received sig: its result
// (gcDone), or the one it has after leading the next batch (gcLead).
func (t *tenant) answered(r *gcReq, sig gcSignal) (driver.Result, error, bool) {
	if sig == gcLead {
		t.leadBatch(r)
	}
	return r.res, r.err, true
}

// ranInOpenTx reports, under mu, whether r ran (or runs) in the batch
// transaction that is open now: its caller may hurry or undo that batch,
// not one begun after its own committed.
func (gc *groupCommit) ranInOpenTx(r *gcReq) bool {
	return r.state.Load() == reqRunning && gc.inTx && r.tx == gc.txSeq
}

// hurried reports whether a caller whose context ended has waited for the
// batch longer than a grace: as long as a COMMIT takes, a millisecond at
// least. A batch of fast statements ends within it and commits whole;
// cut at once, batches under load shrank to a few statements a sync,
// since the oldest callers at the head of the queue are those whose
// deadlines pass first.
func (gc *groupCommit) hurried() bool {
	at := gc.hurryAt.Load()
	if at == 0 {
		return false
	}
	grace := max(time.Duration(gc.commit.Load()), time.Millisecond)
	return time.Now().UnixNano()-at >= int64(grace)
}

// abortDelay is how long a caller that leaves waits for its batch to
// commit before it undoes it: abortAfter, or gc.abortAfter (tests).
func (gc *groupCommit) abortDelay() time.Duration {
	if gc.abortAfter > 0 {
		return gc.abortAfter
	}
	return abortAfter
}

// abortLocked undoes the batch whose transaction is open (inTx), called
// under mu by a caller that leaves it: the statement running, if any, is
// interrupted, and the leader rolls the batch back at its next step and
// queues its other callers again (runBatch).
func (gc *groupCommit) abortLocked() {
	if gc.aborted.Swap(true) {
		return // interrupted already
	}
	// Under mu, while inTx: the leader ends inTx (under mu) before it
	// commits, rolls back or gives the writer back, so no interrupt
	// reaches those. SQLite clears an interrupt when a statement starts
	// (none other running): one that came just before the statement
	// the leader was starting (it looks at aborted before each) would be
	// lost, and the statement would run to its end, which for a runaway
	// one is never. So the writer is interrupted again every millisecond
	// until the leader has stopped (inTx ends, under mu).
	seq, c := gc.txSeq, gc.writer.c
	interruptConn(c)
	go interruptWhile(&gc.mu, c, func() bool { return gc.inTx && gc.txSeq == seq })
}

// bound returns a channel that receives at r's deadline (nil, which never
// does, for a request whose ctx has a deadline of its own).
func (r *gcReq) bound() <-chan time.Time {
	if r.deadline.IsZero() {
		return nil
	}
	// A timer of its own for each wait: one used again may deliver a tick
	// of its last use under GODEBUG=asynctimerchan=1 (the timers of Go
	// before 1.23, which an application may ask for), even after a Stop
	// and a drain, and end this wait at once (writes failed with
	// SQLITE_BUSY after microseconds).
	r.timer = time.NewTimer(time.Until(r.deadline))
	return r.timer.C
}

// leadBatch takes t's writer for r and everything queued behind it, runs
// them as one batch, answers them, and hands the lead to the next queued
// request (or ends it). What the batch gives back (runBatch: undone, or to
// run alone) goes back to the head of the queue in its order, and r, if
// it is among it, leads again.
func (t *tenant) leadBatch(r *gcReq) {
	// ended hands the lead on when r's caller's context has ended: nothing
	// of r runs. Looked at before the gather (which would take the ended
	// wait for fewer callers), and again once the writer is r's (taking a
	// free writer does not look): led by r, a batch would hold its caller
	// for the others' statements, without bound behind an endless one.
	ended := func() bool {
		if r.ctx.Err() == nil {
			return false
		}
		r.err = opError(opWaitWriter, t.id, waitErr(r.ctx))
		t.nextLeader()
		return true
	}
	for {
		if ended() {
			return
		}
		if !r.alone {
			t.gather(r)
		}
		pc, err := t.acquireWriterBy(r.ctx, r.deadline)
		if err != nil {
			r.err = err
			t.nextLeader()
			return
		}
		if r.ctx.Err() != nil {
			t.releaseBatchWriter(pc)
			ended()
			return
		}
		t.gc.mu.Lock()
		n := 0
		if !r.alone {
			n = min(len(t.gc.q), maxBatch-1)
			if k := slices.IndexFunc(t.gc.q[:n], func(q *gcReq) bool { return q.alone }); k >= 0 {
				n = k // runs alone when it leads
			}
		}
		batch := append(t.gc.batch[:0], r)
		batch = append(batch, t.gc.q[:n]...)
		t.gc.q = slices.Delete(t.gc.q, 0, n)
		for _, b := range batch {
			b.state.Store(reqBatched)
		}
		t.gc.mu.Unlock()
		if int32(len(batch)) > t.gc.want.Load() {
			t.gc.want.Store(int32(len(batch)))
		}

		again := t.runBatch(pc, batch)
		t.releaseBatchWriter(pc)
		lead := false
		t.gc.mu.Lock()
		// Under mu: a caller queued again may leave as soon as it is in
		// the queue, and is not touched after.
		queued := again[:0]
		for _, b := range again {
			if b == r {
				lead = true // r's statement was undone (or is to run alone): r leads again
				continue
			}
			if b.ctx.Err() != nil {
				// Its caller's context ended: answered now, with nothing of
				// it applied (undone, or never run), rather than queued
				// while its caller may already wait for an answer.
				if b.state.CompareAndSwap(reqRunning, reqAnswered) || b.state.CompareAndSwap(reqBatched, reqAnswered) {
					b.res, b.err = nil, opError(opWaitWriter, t.id, waitErr(b.ctx))
				}
				continue
			}
			if b.state.CompareAndSwap(reqRunning, reqQueued) || b.state.CompareAndSwap(reqBatched, reqQueued) {
				b.res, b.err = nil, nil
				queued = append(queued, b)
			}
		}
		t.gc.q = slices.Insert(t.gc.q, 0, queued...)
		t.gc.mu.Unlock()
		for _, b := range batch[1:] {
			if slices.Contains(queued, b) {
				continue // queued again: may be its caller's (or pooled) by now
			}
			if st := b.state.Load(); st == reqRunning || st == reqAnswered {
				b.wake <- gcDone // b is its caller's again: not touched after this
			}
		}
		clear(again)
		t.gc.again = again[:0]
		clear(batch)
		t.gc.batch = batch[:0]
		if !lead {
			t.nextLeader()
			return
		}
		r.state.Store(reqQueued)
		r.res, r.err = nil, nil
	}
}

// timeCommit folds the duration of a batch's COMMIT into gc.commit (a
// moving average, so that one stalled sync does not make the next leaders
// wait long).
func (gc *groupCommit) timeCommit(d time.Duration) {
	old := gc.commit.Load()
	gc.commit.Store(old + (int64(d)-old)/8)
}

// gather waits until want callers are queued (the leader included), for
// at most as long as a COMMIT takes (maxGather at most); a wait that ends
// with fewer sets want to that many.
//
// It polls, yielding the processor to the callers on their way back: a
// leader woken by the last of them lost a tenth of the throughput of eight
// writers and doubled their p99 (the idle processor had gone to sleep, and
// the callers came back one after the other on the busy one). But a yield
// puts the leader at the back of the global run queue, and when other
// goroutines keep every processor busy without blocking (eight readers
// with a reader each), it runs again only when the scheduler preempts one
// of them, every 10 ms: two writers beside such readers fell to 2 500
// writes a second with a p99 of 24 ms. A yield that takes longer than
// gatherStall shows that; the leaders of the next gatherSleep then sleep
// instead, and the caller that completes the batch wakes them (13 000
// writes a second, p99 0.3 ms, beside the same readers).
func (t *tenant) gather(r *gcReq) {
	gc := &t.gc
	want := int(gc.want.Load())
	limit := maxGather
	if gc.gatherMax > 0 {
		limit = gc.gatherMax
	}
	wait := min(time.Duration(gc.commit.Load()), limit)
	if want < 2 || wait <= 0 {
		return
	}
	now := time.Now()
	deadline := now.Add(wait)
	if now.Before(gc.sleepUntil) {
		t.sleepGather(r, want, wait)
		return
	}
	for {
		have := t.queued() + 1
		if have >= want {
			return
		}
		if now.After(deadline) || r.ctx.Err() != nil {
			gc.want.Store(int32(have))
			return
		}
		gc.yields++
		runtime.Gosched()
		last := now
		now = time.Now()
		if now.Sub(last) > gatherStall {
			gc.sleepUntil = now.Add(gatherSleep)
			t.sleepGather(r, want, deadline.Sub(now))
			return
		}
	}
}

// sleepGather is gather sleeping: until want callers are queued (the last
// of them wakes it), or for wait.
func (t *tenant) sleepGather(r *gcReq, want int, wait time.Duration) {
	gc := &t.gc
	gc.mu.Lock()
	if len(gc.q)+1 < want && wait > 0 {
		if gc.gathered == nil {
			gc.gathered = make(chan struct{}, 1)
		}
		gc.gathering = want
		gc.mu.Unlock()
		if gc.timer == nil {
			gc.timer = time.NewTimer(wait)
		} else {
			gc.timer.Reset(wait)
		}
		select {
		case <-gc.gathered:
		case <-gc.timer.C:
		case <-r.ctx.Done():
		}
		stopTimer(gc.timer)
		gc.mu.Lock()
		gc.gathering = 0
		select {
		case <-gc.gathered: // sent as the sleep ended otherwise
		default:
		}
	}
	have := len(gc.q) + 1
	gc.mu.Unlock()
	if have < want {
		gc.want.Store(int32(have)) // fewer came: wait for that many next time
	}
}

// nextLeader hands the lead to the oldest queued request, or ends it.
func (t *tenant) nextLeader() {
	t.gc.mu.Lock()
	defer t.gc.mu.Unlock()
	if len(t.gc.q) == 0 {
		t.gc.active.Store(false)
		return
	}
	next := t.gc.q[0]
	t.gc.q = slices.Delete(t.gc.q, 0, 1)
	next.wake <- gcLead
}

// releaseBatchWriter gives the writer back as a checkout would (conn.release).
func (t *tenant) releaseBatchWriter(pc *physConn) {
	pc.endLease()
	if !pc.c.AutoCommit() {
		if _, err := pc.c.ExecContext(context.Background(), "ROLLBACK", nil); err != nil || !pc.c.AutoCommit() {
			t.discard(pc)
			return
		}
	}
	t.release(pc)
}

// runBatch runs batch on the writer pc and sets each request's result. It
// returns, in order, the requests to queue again (leadBatch), their results
// unset: those whose statements it undid, and those that must run alone
// (each by its own caller, when it leads: a caller is never held by
// another's statement outside their batch's transaction).
func (t *tenant) runBatch(pc *physConn, batch []*gcReq) (again []*gcReq) {
	if h := batchHook.Load(); h != nil {
		(*h)(batch)
	}
	bg := context.Background()
	lead := batch[0]
	again = t.gc.again[:0]
	// alone runs the leader's statement alone, and gives the others back
	// to run alone, each by its own caller.
	alone := func() []*gcReq {
		lead.run()
		if lead.ctx.Err() != nil || !lead.deadline.IsZero() && time.Now().After(lead.deadline) {
			lead.err = opError(opWaitWriter, t.id, waitErr(lead.ctx)) // nothing of it ran
		} else {
			lead.res, lead.err = execBatched(pc, lead)
		}
		for _, r := range batch[1:] {
			r.alone = true
			again = append(again, r)
		}
		return again
	}
	if len(batch) == 1 {
		return alone()
	}
	if (t.r.cfg.ForeignKeys || foreignKeysOn(pc)) && deferredKeys(pc) {
		return alone()
	}
	// Under the leader's context: its end ends a wait for another
	// process's write lock (busy.go).
	if _, err := execWatched(lead.ctx, pc.c, func(bg context.Context) (driver.Result, error) {
		return pc.c.ExecContext(bg, "BEGIN IMMEDIATE", nil)
	}); err != nil {
		if lead.ctx.Err() != nil {
			// It ended: nothing ran. The leader's caller gets its
			// context's error; the others are queued again as they were
			// (not to run alone: none of them failed), to batch behind the
			// next leader.
			if lead.run() {
				lead.err = opError(opWaitWriter, t.id, waitErr(lead.ctx))
			}
			return append(again, batch[1:]...)
		}
		if se := (sqlite3.Error{}); errors.As(err, &se) && se.Code == sqlite3.ErrBusy {
			// Another process holds the write lock, and BEGIN waited
			// BusyTimeout for it, as every caller of the batch has waited
			// since it came: alone, each would wait as long again, one
			// after the other (twelve callers answered after 10 s with a
			// BusyTimeout of 1 s). Nothing ran.
			for _, r := range batch {
				if r.run() {
					r.err = err
				}
			}
			return again
		}
		return alone()
	}
	t.gc.mu.Lock()
	t.gc.inTx, t.gc.writer = true, pc
	t.gc.txSeq++
	for _, r := range batch {
		r.tx = t.gc.txSeq
	}
	t.gc.aborted.Store(false)
	t.gc.hurryAt.Store(0)
	seq := t.gc.txSeq
	t.gc.mu.Unlock()
	if lead.ctx.Done() != nil {
		// The leader's caller leaves as a member would, from the
		// statement of another it may be running (its context may have
		// ended since leadBatch looked: the callback then runs at once).
		// Only this batch's transaction: a callback that started late
		// must not touch the next one.
		stop := context.AfterFunc(lead.ctx, func() {
			t.gc.mu.Lock()
			defer t.gc.mu.Unlock()
			if !t.gc.inTx || t.gc.txSeq != seq {
				return
			}
			t.gc.hurryAt.CompareAndSwap(0, time.Now().UnixNano())
			time.AfterFunc(t.gc.abortDelay(), func() {
				t.gc.mu.Lock()
				defer t.gc.mu.Unlock()
				if t.gc.inTx && t.gc.txSeq == seq {
					t.gc.abortLocked()
				}
			})
		})
		defer stop()
	}
	// Statements that ran in the transaction: those that succeeded, and
	// those that failed without ending it, which may have kept changes
	// (INSERT OR FAIL, RAISE(FAIL)) that a rollback of the batch undoes.
	ran := t.gc.ran[:0]
	defer func() { clear(ran); t.gc.ran = ran[:0] }()
	var last *gcReq // the statement that ran last
	ended := -1     // batch[ended] ended the transaction
	next := len(batch)
	for i, r := range batch {
		if t.gc.aborted.Load() || t.gc.hurried() {
			next = i // a caller waits: what has run commits now
			break
		}
		if r.ctx.Err() != nil {
			// Nothing of it runs. Not marked running: its caller, leaving,
			// would undo the batch for a statement that never ran.
			if r == lead || r.state.CompareAndSwap(reqBatched, reqAnswered) {
				r.err = opError(opWaitWriter, t.id, waitErr(r.ctx))
			}
			continue
		}
		if !r.run() {
			continue // abandoned by its caller, who has left
		}
		res, err := execBatched(pc, r)
		r.res, r.err = res, err
		last = r
		if pc.c.AutoCommit() {
			// The statement ended the transaction (ON CONFLICT ROLLBACK,
			// RAISE(ROLLBACK), an I/O error, an interrupt): what ran
			// before it is gone.
			ended, next = i, i+1
			break
		}
		// An error: SQLite undid the statement (or, under FAIL, its
		// failing row) and kept the transaction (see above): its caller
		// gets its own error, the others go on.
		ran = append(ran, r)
	}
	// From here on no caller leaves: the batch commits, or is undone here.
	t.gc.mu.Lock()
	t.gc.inTx, t.gc.writer = false, nil
	aborted := t.gc.aborted.Load()
	t.gc.mu.Unlock()
	if aborted {
		// A caller left (its context ended after its statement ran): undo
		// the batch, and queue the others again, the statement that ran
		// last to run alone (it may be what held the caller: a statement
		// that runs long, which another caller's deadline must not
		// interrupt twice).
		if !pc.c.AutoCommit() {
			pc.c.ExecContext(bg, "ROLLBACK", nil)
		}
		for _, r := range batch {
			switch {
			case r.state.Load() == reqAbandoned:
				// left: nothing of it applied
			case r == lead && r.ctx.Err() != nil:
				r.res, r.err = nil, opError(opWaitWriter, t.id, waitErr(r.ctx)) // undone
			default:
				r.alone = r.alone || r == last
				again = append(again, r)
			}
		}
		return again
	}
	if ended >= 0 {
		return t.abortBatch(pc, ran, batch[ended], batch[next:], again)
	}
	// What a hurried batch did not run goes back to the head of the
	// queue, after anything of what ran that runs again.
	rest := func() []*gcReq { return append(again, batch[next:]...) }
	if t.leaseEnded() {
		// The lease ended while the batch ran (the process was stopped
		// past its deadline): another node may own the tenant by now, so
		// nothing of the batch is committed. Nor when its file moved.
		pc.c.ExecContext(bg, "ROLLBACK", nil)
		fenceErr := t.fenceErr()
		for _, r := range ran {
			r.res, r.err = nil, opError(opRoute, t.id, fenceErr)
		}
		return rest()
	}
	start := time.Now()
	_, err := pc.c.ExecContext(bg, "COMMIT", nil)
	if len(ran) > 0 {
		t.gc.timeCommit(time.Since(start)) // an empty one would shorten gathers
	}
	if err == nil {
		return rest()
	}
	if !pc.c.AutoCommit() {
		pc.c.ExecContext(bg, "ROLLBACK", nil)
	}
	var se sqlite3.Error
	if errors.As(err, &se) && se.Code == sqlite3.ErrConstraint {
		// A deferred constraint: each statement alone meets it (or not) as
		// it would have without the batch.
		for _, r := range ran {
			r.res, r.err = nil, nil
			r.alone = true
			again = append(again, r)
		}
		return rest()
	}
	for _, r := range ran {
		if r.err == nil {
			r.res, r.err = nil, err // applies none of them
		}
	}
	return rest()
}

// foreignKeysOn reports whether the writer pc enforces foreign keys, or
// cannot tell: without Config.ForeignKeys, a caller's PRAGMA foreign_keys =
// ON stays with the writer (one query per batch).
func foreignKeysOn(pc *physConn) bool {
	on, err := queryInt64(context.Background(), pc.c, "PRAGMA foreign_keys")
	return err != nil || on != 0
}

// deferredKeys reports whether the schema of the writer pc declares a
// foreign key INITIALLY DEFERRED, or cannot tell. Such a key is checked at
// COMMIT only, so in a batch a statement that breaks it is not failed when
// a later caller's statement mends it before the batch commits (a child
// row, then its parent), where alone it would have been: with such keys,
// and foreign keys on, statements run alone. TEMP tables count (a caller
// may have made one on the writer). The answer is kept with pc for the
// schema versions of main and temp.
//
// Its first read also ends a caller's PRAGMA defer_foreign_keys = ON on the
// writer (SQLite clears it when a statement that reads the database ends
// outside a transaction), which would otherwise defer every key of the
// batch to its COMMIT (TestGroupCommit_DeferForeignKeysPragma).
func deferredKeys(pc *physConn) bool {
	ctx := context.Background()
	v, err := queryInt64(ctx, pc.c, "PRAGMA main.schema_version")
	if err != nil {
		return true
	}
	tv, err := queryInt64(ctx, pc.c, "PRAGMA temp.schema_version")
	if err != nil {
		return true
	}
	if pc.schemaSeen == v+1 && pc.tempSeen == tv {
		return pc.deferredFK
	}
	// instr(lower()), not LIKE: a tenant's PRAGMA case_sensitive_like
	// stays on the writer, and LIKE '%deferred%' then missed DEFERRED
	// (adv49: a batch let a broken key through that alone fails).
	rows, err := pc.c.QueryContext(ctx, `SELECT sql FROM main.sqlite_schema WHERE type = 'table' AND instr(lower(sql), 'deferred') > 0
		UNION ALL SELECT sql FROM temp.sqlite_schema WHERE type = 'table' AND instr(lower(sql), 'deferred') > 0`, nil)
	if err != nil {
		return true
	}
	defer rows.Close()
	found := false
	for dest := make([]driver.Value, 1); rows.Next(dest) == nil; {
		if q, ok := dest[0].(string); ok && initiallyDeferred.MatchString(q) {
			found = true
		}
	}
	pc.schemaSeen, pc.tempSeen, pc.deferredFK = v+1, tv, found
	return found
}

// initiallyDeferred finds INITIALLY DEFERRED in a CREATE TABLE text,
// whatever blanks, byte order marks or comments lie between the two words
// (SQLite also reads \v and U+FEFF as blanks there: Go's \s has neither,
// adv50).
var initiallyDeferred = regexp.MustCompile(`(?is)\bINITIALLY(?:[\s\v\x{FEFF}]|/\*.*?\*/|--[^\n]*(?:\n|$))+DEFERRED\b`)

// execBatched runs r's statement on the writer pc, under r's context as
// it would run alone: a deadline that passes while it runs interrupts it
// (and SQLite then rolls the batch's transaction back: see runBatch). Without
// arguments it runs from pc's prepared statements when r.reuse: mattn
// parses a statement without arguments on every call (execNoArgs), which
// took two thirds of the leader's time per statement; with arguments
// mattn's own cache (_stmt_cache_size) already keeps it prepared. A
// statement with a parameter but no argument takes mattn's path for
// mattn's own error.
//
// mattn gets a context that cannot end; the proxy interrupts the statement
// itself when r's ends (ctxwatch.go), as for a statement run alone.
func execBatched(pc *physConn, r *gcReq) (driver.Result, error) {
	return execWatched(r.ctx, pc.c, func(bg context.Context) (driver.Result, error) { return execBatchedWith(bg, pc, r) })
}

// execBatchedWith is execBatched handing mattn ctx.
func execBatchedWith(ctx context.Context, pc *physConn, r *gcReq) (driver.Result, error) {
	if len(r.args) > 0 || !r.reuse {
		return pc.c.ExecContext(ctx, r.query, r.args)
	}
	s, err := pc.takeStmt(ctx, r.query)
	if err != nil {
		return nil, err
	}
	if s.NumInput() > 0 {
		s.Close()
		return pc.c.ExecContext(ctx, r.query, nil)
	}
	res, err := s.ExecContext(ctx, nil)
	pc.putStmt(r.query, s)
	return res, err
}

// abortBatch: statement cause ended the batch's transaction. What had run
// before it (ran, failed or not: a failure may have kept changes) was
// rolled back with it and runs again alone, and so does what had not run
// yet (rest), as each would have without the batch (in a batch again when
// cause was interrupted by its own context's end); they are appended to
// again (runBatch). cause keeps its own outcome: had it run alone, it
// would have done the same to its own autocommit transaction.
func (t *tenant) abortBatch(pc *physConn, ran []*gcReq, cause *gcReq, rest, again []*gcReq) []*gcReq {
	if !pc.c.AutoCommit() {
		pc.c.ExecContext(context.Background(), "ROLLBACK", nil)
	}
	// Interrupted because its own context ended, cause runs no more: the
	// others may batch again. A statement that ends the transaction by
	// itself (ON CONFLICT ROLLBACK) would do it again: alone, then.
	alone := cause.ctx.Err() == nil
	for _, r := range ran {
		r.alone = r.alone || alone
		again = append(again, r)
	}
	if cause.err == nil {
		// It ended the transaction without failing (cannot be known to
		// have applied alone): run it again alone too.
		cause.alone = true
		again = append(again, cause)
	}
	for _, r := range rest {
		if r.state.Load() == reqBatched {
			r.alone = r.alone || alone
			again = append(again, r)
		}
	}
	return again
}

// batchHook, when set (tests), sees every batch before it runs.
var batchHook atomic.Pointer[func(batch []*gcReq)]

// queued reports how many statements wait in t's queue.
func (t *tenant) queued() int {
	t.gc.mu.Lock()
	defer t.gc.mu.Unlock()
	return len(t.gc.q)
}

// stopTimer stops t, a timer used again, and drains a tick it may have
// sent (with GODEBUG=asynctimerchan=1, the timers of Go before 1.23, a
// tick can stay in the channel; one arriving after the drain only ends a
// gathering sleep early).
func stopTimer(t *time.Timer) {
	if !t.Stop() {
		select {
		case <-t.C:
		default:
		}
	}
}
