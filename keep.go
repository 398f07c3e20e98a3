package sqliteproxy

import "slices"

// Kept readers. A routing conn that gives a reader back at check-in keeps
// it parked, still counted as leased to its tenant, and takes it again at
// its next read of that tenant with one compare-and-swap: no pool mutex on
// either side. A point query through *sql.DB is one checkout, so leasing a
// reader from the pool and giving it back was most of what the proxy added
// to mattn's own cost (see the README's Performance section). A parked
// reader stays the tenant's: whoever needs it takes it back (revokeKept):
// a read that finds no idle reader and may open no other, an eviction, a
// drain, Close. A reader in use by the checkout that keeps it is marked
// wanted instead, and goes back to the pool, or to the oldest waiter, when
// that checkout ends.
//
// The state of a reader is physConn.keep: a token above the two low bits,
// and one of the states below in them. The token changes whenever the
// reader stops being kept, so a conn that kept it once can never take it
// back after it was revoked and kept by another conn meanwhile (the conn
// compares the whole word: token and state).
const (
	keepNone   uint64 = iota // not kept: idle in the pool, or leased as any reader
	keepInUse                // kept, and leased by its conn's checkout
	keepParked               // kept by a conn between checkouts: anyone may revoke it
	keepWanted               // kept and in use, asked back: returned at check-in

	keepStateBits = 2
	keepStateMask = 1<<keepStateBits - 1
)

// keepWord is the keep word of token tok in state st.
func keepWord(tok, st uint64) uint64 { return tok<<keepStateBits | st }

// takeKept leases the reader c keeps for t, if c keeps one and nobody took
// it back since c's last checkout; nil otherwise. The reader is checked as
// acquireReader checks a lease: t must be active, migrated and not fenced,
// else the reader goes back and the caller leases as usual.
func (c *conn) takeKept(t *tenant) *physConn {
	pc := c.kept
	if pc == nil || pc.t != t {
		return nil // none, or another tenant's: given back when c keeps another reader
	}
	if !pc.keep.CompareAndSwap(keepWord(c.keptTok, keepParked), keepWord(c.keptTok, keepInUse)) {
		c.kept = nil // revoked: it is someone else's now
		return nil
	}
	if t.state.Load() != tenantActive || !t.ready.Load() || t.fenced.Load() {
		c.kept = nil
		t.putReader(pc, nil)
		return nil
	}
	return pc
}

// putReader gives a reader of this checkout back at its end (or before an
// upgrade to the writer): parked for c's next checkout when c keeps it,
// else to the pool, keeping it for c when nobody waits for one. A conn
// keeps one reader: another one it kept (of another tenant, say) goes back.
func (c *conn) putReader(t *tenant, pc *physConn) {
	if pc == c.kept {
		if pc.keep.CompareAndSwap(keepWord(c.keptTok, keepInUse), keepWord(c.keptTok, keepParked)) {
			t.touch()
			t.r.budget.wake() // a wait for a slot may evict t now
			if t.r.isClosed.Load() {
				t.evict(false, evictClose) // Close may have passed t while it was in use
			}
			return
		}
		c.kept = nil // wanted back
		t.putReader(pc, nil)
		return
	}
	c.dropKept()
	t.putReader(pc, c)
}

// dropKept gives back the reader c keeps, unless it was taken back already.
func (c *conn) dropKept() {
	pc := c.kept
	if pc == nil {
		return
	}
	c.kept = nil
	if pc.keep.CompareAndSwap(keepWord(c.keptTok, keepParked), keepWord(c.keptTok, keepInUse)) {
		// Unused since the check-in that parked it, which marked its
		// tenant used: marking it again would keep an idle tenant open
		// past IdleTimeout and evict a busier one before it.
		pc.t.giveBack(pc, nil)
	}
}

// putReader returns a leased reader to t at the end of its use, marking t
// used (giveBack).
func (t *tenant) putReader(pc *physConn, keeper *conn) {
	t.touch()
	t.giveBack(pc, keeper)
}

// giveBack returns a leased reader to t: to the oldest waiter, else parked
// for keeper (when not nil, and t is active), else idle. A kept reader
// stops being kept first.
func (t *tenant) giveBack(pc *physConn, keeper *conn) {
	t.mu.Lock()
	if pc.keep.Load()&keepStateMask != keepNone {
		t.unkeepLocked(pc)
	}
	if len(t.readerQ) > 0 {
		// Hand it to the oldest waiter: the lease passes on as it is.
		ch := t.readerQ[0]
		t.readerQ = t.readerQ[1:]
		t.mu.Unlock()
		ch <- pc
		return
	}
	if keeper != nil && t.state.Load() == tenantActive && !t.evicting && !t.r.isClosed.Load() && !t.fenced.Load() {
		tok := pc.keep.Load()>>keepStateBits + 1
		pc.keep.Store(keepWord(tok, keepParked))
		t.kept = append(t.kept, pc)
		t.mu.Unlock()
		keeper.kept, keeper.keptTok = pc, tok
		t.r.budget.wake()
		return
	}
	t.idle = append(t.idle, pc)
	t.leasedReaders--
	last := t.leasedReaders == 0
	t.mu.Unlock()
	t.r.budget.wake()
	if t.r.isClosed.Load() {
		t.evict(false, evictClose)
	}
	if last && t.fenced.Load() {
		// Its lease ended (a move asked for it) while this reader was
		// leased, which kept it open: closed now that the last reader is
		// back, as releaseWriter does for the writer (a move waited for
		// the idle reaper, minutes). In the background: the close syncs.
		go t.r.closeFenced(t)
	}
}

// unkeepLocked ends the keeping of pc (which its keeper holds, or which
// was just revoked): the token moves on, so the keeper's word no longer
// matches. Called with t.mu held.
func (t *tenant) unkeepLocked(pc *physConn) {
	if i := slices.Index(t.kept, pc); i >= 0 {
		t.kept = slices.Delete(t.kept, i, i+1)
	}
	pc.keep.Store(keepWord(pc.keep.Load()>>keepStateBits+1, keepNone))
}

// revokeKeptLocked takes back every parked reader of t into the idle pool
// and reports how many; with want, readers in use by the checkouts that
// keep them are asked back at their check-in. Called with t.mu held.
func (t *tenant) revokeKeptLocked(want bool) int {
	n := 0
	for i := 0; i < len(t.kept); {
		pc := t.kept[i]
		if t.revokeOne(pc, want) {
			t.kept = slices.Delete(t.kept, i, i+1)
			t.idle = append(t.idle, pc)
			t.leasedReaders--
			n++
			continue
		}
		i++
	}
	return n
}

// revokeOne takes pc back if it is parked (true), or marks it wanted if
// it is in use and want.
func (t *tenant) revokeOne(pc *physConn, want bool) bool {
	for {
		v := pc.keep.Load()
		switch v & keepStateMask {
		case keepParked:
			if pc.keep.CompareAndSwap(v, keepWord(v>>keepStateBits+1, keepNone)) {
				return true
			}
		case keepInUse:
			if !want || pc.keep.CompareAndSwap(v, v|keepWanted) {
				return false
			}
		default:
			return false
		}
	}
}

// parkedLocked counts t's parked readers: leased, but not in use (Stats).
// Called with t.mu held.
func (t *tenant) parkedLocked() int {
	n := 0
	for _, pc := range t.kept {
		if pc.keep.Load()&keepStateMask == keepParked {
			n++
		}
	}
	return n
}
