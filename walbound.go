package sqliteproxy

import (
	"os"
	"time"
)

// A tenant's WAL, kept from growing without end.
//
// SQLite starts a WAL over from its beginning only when a writer finds every
// frame of it copied into the database and no reader on it, and a
// checkpoint cannot copy frames past the oldest snapshot a reader holds. A
// tenant that is read and written without pause always has a reader on an
// older snapshot: its automatic (passive) checkpoints never finish, the WAL
// never starts over, and it grows for as long as the traffic lasts (four
// writers and four readers for 20 s: 409 MB of -wal beside a 22 MB file; a
// plain mattn pool does the same). Readers get slower as it grows, and the
// disk fills.
//
// The proxy holds its tenants' writers, so the writer can wait a moment for
// the readers: every walCheckEvery check-ins, the writer's check-in looks at
// the -wal's size, and past walLimit runs a TRUNCATE checkpoint, waiting up
// to walWait for readers on older snapshots to finish (readers that begin
// meanwhile read the database and do not hold it up). Writers queued behind
// it wait as long. A reader that holds its snapshot longer (a long report)
// makes it give up; it tries again walRetry later, so such a reader costs
// the tenant's writes at most walWait per walRetry.
//
// Not with replication: Litestream owns the checkpoints of the files it
// streams (it denies RESTART and TRUNCATE to tenant connections), and
// truncates the WAL itself.
var (
	walCheckEvery uint32 = 1024 // a stat costs ~8 µs here: ~8 ns a check-in
	walLimit      int64  = 64 << 20
	walWait              = 50 * time.Millisecond
	walRetry             = time.Second
)

// walState is what boundWAL keeps of a tenant; touched only by the holder of
// its writer semaphore.
type walState struct {
	checkIns uint32    // writer check-ins since the last look at the -wal
	next     time.Time // no checkpoint before this
}

// boundWAL is the writer's check-in step that keeps the -wal under walLimit
// (see above). The caller holds t.wsem; pc is t.w.
func (t *tenant) boundWAL(pc *physConn) {
	t.wal.checkIns++
	if t.wal.checkIns < walCheckEvery {
		return
	}
	t.wal.checkIns = 0
	fi, err := os.Stat(t.path + "-wal")
	if err != nil || fi.Size() <= walLimit {
		return
	}
	now := time.Now()
	if now.Before(t.wal.next) || !pc.c.AutoCommit() {
		return
	}
	t.wal.next = now.Add(walRetry)
	if err := t.truncateWAL(pc); err != nil {
		// The writer's busy timeout may be walWait's still: close it, and
		// the next lease opens a fresh connection.
		t.dropWriter()
	}
}

// truncateWAL runs a TRUNCATE checkpoint on the writer pc, waiting for
// readers up to walWait rather than the busy timeout. A checkpoint that
// could not finish is not an error: the next one goes on from where it
// stopped. The error is that of giving pc its busy timeout back.
func (t *tenant) truncateWAL(pc *physConn) error {
	if err := setBusyTimeout(pc.c, walWait); err != nil {
		return nil // unchanged
	}
	_, _ = checkpoint(pc.c) // a busy or failed checkpoint: see above
	return setBusyTimeout(pc.c, t.r.cfg.BusyTimeout)
}
