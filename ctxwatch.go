package sqliteproxy

import (
	"context"
	"database/sql/driver"
	"errors"
	"sync"
	"time"

	"github.com/mattn/go-sqlite3"
)

// When a statement's context ends, mattn interrupts the statement once
// (sqlite3_interrupt: for an Exec from a goroutine it starts per statement,
// for a query from an AfterFunc while the rows step). SQLite forgets an
// interrupt that comes just before a statement starts to run with no other
// statement active on its connection (it clears the flag there), and
// mattn's query looks at the context before it marks its rows as stepping:
// a context that ended at that moment let the statement run to its end, and
// a runaway one (a recursive CTE without a bound) for ever, holding the
// caller, the connection (the tenant's writer, perhaps) and a processor. So
// a routed statement runs with a context mattn cannot see end, and the
// proxy interrupts it itself (ctxWatch): from the context's end, every
// millisecond, for as long as a call steps the statement. What the caller
// gets is what mattn gives: the context's error.

// ctxWatch interrupts connection c while a call steps a statement run
// with ctx and ctx has ended.
type ctxWatch struct {
	ctx  context.Context
	c    *sqlite3.SQLiteConn
	stop func() bool // ends the AfterFunc that interrupts

	mu      sync.Mutex
	running bool // a call steps the statement; under mu
}

// watchCtx returns the watch of a statement of ctx on c, nil when ctx
// cannot end. The caller closes it when the statement is done (execWatched
// and queryWatched make and close it).
func watchCtx(ctx context.Context, c *sqlite3.SQLiteConn) *ctxWatch {
	if ctx.Done() == nil {
		return nil
	}
	w := &ctxWatch{ctx: ctx, c: c}
	w.stop = context.AfterFunc(ctx, w.interrupt)
	return w
}

// enter marks a call stepping the statement, or reports ctx's error if it
// has ended: then no call is to be made. (Looked at again once marked: an
// end of ctx that enter does not see is one whose interrupt sees the
// mark. Looked at first too, so that an interrupt coming for an end seen
// here finds no mark: it would stay set, on a connection with other
// statements active, for the next of those.)
func (w *ctxWatch) enter() error {
	if err := w.ctx.Err(); err != nil {
		return err
	}
	w.mu.Lock()
	w.running = true
	w.mu.Unlock()
	if err := w.ctx.Err(); err != nil {
		w.exit()
		return err
	}
	return nil
}

// exit marks the call returned: no interrupt comes after it.
func (w *ctxWatch) exit() {
	w.mu.Lock()
	w.running = false
	w.mu.Unlock()
}

// interrupt runs once ctx has ended: it interrupts c every millisecond for
// as long as a call steps the statement.
func (w *ctxWatch) interrupt() {
	interruptWhile(&w.mu, w.c, func() bool { return w.running })
}

// interruptWhile interrupts c at once and then every millisecond, under
// mu, for as long as runs (called under mu) says that what it interrupts
// still runs: no interrupt comes after the code that ends it has let mu go.
// SQLite clears an interrupt when a statement starts with none other
// active, so one alone can be lost (ctxWatch, and a group commit's abort).
func interruptWhile(mu *sync.Mutex, c *sqlite3.SQLiteConn, runs func() bool) {
	for {
		mu.Lock()
		running := runs()
		if running {
			interruptConn(c)
		}
		mu.Unlock()
		if !running {
			return
		}
		time.Sleep(time.Millisecond)
	}
}

// close ends the watch; a nil watch is none.
func (w *ctxWatch) close() {
	if w != nil {
		w.stop()
	}
}

// watched runs f, a call into mattn that steps the statement, marked as
// stepping (enter; exit when it returns, or panics), with a context mattn
// cannot see end.
func watched[T any](w *ctxWatch, f func(context.Context) (T, error)) (T, error) {
	if err := w.enter(); err != nil {
		var zero T
		return zero, err
	}
	defer w.exit()
	return f(context.Background())
}

// execWatched runs exec, a statement of ctx on c, under a watch (none when
// ctx cannot end: exec then runs with context.Background). A statement
// interrupted for ctx's end fails with ctx's error, as mattn's do; so does
// one whose wait for another process's lock the interrupt ended
// (SQLITE_BUSY, busy.go).
func execWatched[T any](ctx context.Context, c *sqlite3.SQLiteConn, exec func(context.Context) (T, error)) (T, error) {
	w := watchCtx(ctx, c)
	if w == nil {
		return exec(context.Background())
	}
	defer w.close()
	res, err := watched(w, exec)
	if err != nil && (isInterrupt(err) || isBusyWait(err)) {
		if cerr := w.ctx.Err(); cerr != nil {
			var zero T
			return zero, cerr
		}
	}
	return res, err
}

// queryWatched runs query (whose first step mattn takes at once), a query
// of ctx on c, under a watch as mattn runs it with ctx: ctx's error if ctx
// ended meanwhile. It returns the watch (nil when ctx cannot end) with the
// rows, which close it; without rows it is closed.
func queryWatched(ctx context.Context, c *sqlite3.SQLiteConn, query func(context.Context) (driver.Rows, error)) (driver.Rows, *ctxWatch, error) {
	w := watchCtx(ctx, c)
	if w == nil {
		rs, err := query(context.Background())
		return rs, nil, err
	}
	rs, err := watched(w, query)
	if cerr := w.ctx.Err(); cerr != nil {
		if err == nil {
			rs.Close()
		}
		rs, err = nil, cerr
	}
	if err != nil {
		w.close()
		return nil, nil, err
	}
	return rs, w, nil
}

// nextWatched is rs.Next under w (nil: no watch) as mattn runs it with w's
// context: the first (first) returns the query's first step, taken
// already, whatever the context; a later one fails with the context's
// error once it has ended, before or during the step.
func nextWatched(w *ctxWatch, rs *sqlite3.SQLiteRows, dest []driver.Value, first bool) error {
	if w == nil || first {
		return rs.Next(dest)
	}
	_, err := watched(w, func(context.Context) (struct{}, error) { return struct{}{}, rs.Next(dest) })
	if cerr := w.ctx.Err(); cerr != nil {
		return cerr
	}
	return err
}

// isBusyWait reports whether err is SQLITE_BUSY: a wait for a lock that
// gave up (not SQLITE_LOCKED, which fails at once).
func isBusyWait(err error) bool {
	var se sqlite3.Error
	return errors.As(err, &se) && se.Code == sqlite3.ErrBusy
}

// isInterrupt reports whether err is SQLite's for an interrupted statement.
func isInterrupt(err error) bool {
	var se sqlite3.Error
	return errors.As(err, &se) && se.Code == sqlite3.ErrInterrupt
}
