package sqliteproxy

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
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

// TenantLease is this node's ownership of one tenant. A lease may also
// implement Released() (gen int64, pos uint64), the newest generation a
// release recorded a position for and that position, carried through
// owners that recorded none (the cluster's does): a replica of that
// generation behind that position is refused. Without it, Previous is
// checked instead.
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

// validLease is what a TenantLease may also implement (the cluster's
// does): Valid reports whether the lease may still be relied on at this
// very moment. Lost is closed by a timer, which a process stopped past its
// deadline (SIGSTOP, a paused VM) runs late; Valid sees the clock. The
// driver asks it before each write (lockWriterBy) and in Generation.
type validLease interface{ Valid() bool }

// releasedLease is what a TenantLease may also implement (the cluster's
// does): Released is the newest generation a release recorded a position
// for, and that position, also when owners since recorded none (one died
// right after it took the tenant, whose Previous then says position 0).
type releasedLease interface {
	Released() (gen int64, pos uint64)
}

// releasedAt is the generation and position l's tenant was last released
// with: a replica of that generation behind it lost uploads.
func releasedAt(l TenantLease) (gen int64, pos uint64) {
	if r, ok := l.(releasedLease); ok {
		return r.Released()
	}
	return l.Previous()
}

// leaseStale reports whether t's lease (if any) says it may not be relied
// on any more; the caller holds t's writer semaphore.
func leaseStale(t *tenant) bool {
	v, ok := t.lease.(validLease)
	return ok && !v.Valid()
}

// leaseEnded reports whether t was fenced while its writer is held (a
// transaction, a sql.Conn, a batch): its file moved (filewatch.go), or this
// node's lease on t ended: fenced by watchLease, or past its deadline with
// the timer that says so late (the process was stopped past it), which it
// then records as lockWriterUntil does. The caller holds t's writer; what
// it says to its caller is fenceErr.
func (t *tenant) leaseEnded() bool {
	if t.fenced.Load() {
		return true
	}
	if t.lease != nil && leaseStale(t) {
		t.r.lostLeases.Store(t.id, struct{}{})
		t.fenced.Store(true)
		return true
	}
	return false
}

// errLeaseEnded: this node's lease on the tenant ended while a statement or
// transaction held its writer.
var errLeaseEnded = fmt.Errorf("%w: this node's lease on the tenant ended; retry", ErrNotOwner)

// fenceErr is why fenced t refuses work: errFileMoved or errLeaseEnded.
func (t *tenant) fenceErr() error {
	if t.moved.Load() {
		return errFileMoved
	}
	return errLeaseEnded
}

// own makes sure this node holds t's lease (Config.Ownership), acquiring it
// if needed; the caller holds t's writer semaphore. It fails with an
// *OwnerError (wrapped in an *Error for op) when another node owns t.
func (r *router) own(ctx context.Context, op string, t *tenant) error {
	o := r.cfg.Ownership
	if o == nil {
		return nil
	}
	if t.lease != nil {
		select {
		case <-t.lease.Lost():
			r.letGoLost(t)
		default:
			return nil
		}
	}
	lease, err := acquireLive(ctx, o, t.id)
	if err != nil {
		return opError(op, t.id, err)
	}
	t.lease = lease
	// A lease this node could not release (finishRelease) is over: taking
	// the tenant again ended it (its owner key), and the new generation
	// starts from this copy, its last writes included.
	t.unreleased, t.keptPos = nil, nil
	t.lost.Store(lease.Lost())
	if v, ok := lease.(validLease); ok {
		t.valid.Store(&v)
	} else {
		t.valid.Store(nil)
	}
	r.lostLeases.Delete(t.id)
	t.fenced.Store(false)
	if gen := lease.Generation(); t.gen.Swap(gen) != gen {
		// Litestream's files beside t describe another generation's replica.
		t.registered.Store(false)
	}
	r.tel.ownership(t.tel, "acquired")
	go r.watchLease(t, lease)
	return nil
}

// ownerLookup is what an Ownership may also implement (the cluster's
// does): which node owns a tenant now, answered without taking it.
type ownerLookup interface {
	NodeID() string
	Owner(ctx context.Context, id string) (node, url string, ok bool, err error)
}

// refuseOtherOwner fails with an *OwnerError (in an *Error for op) when
// the Ownership says that another node owns t now, so that a restore is
// refused before it copies or downloads anything. When it cannot tell (no
// lookup, etcd unreachable, nobody owns t) it says nil: the restore's
// drain takes the lease, and is refused then.
func (r *router) refuseOtherOwner(ctx context.Context, op string, t *tenant) error {
	ol, ok := r.cfg.Ownership.(ownerLookup)
	if !ok {
		return nil
	}
	node, url, owned, err := ol.Owner(ctx, t.id)
	if err != nil || !owned || node == ol.NodeID() {
		return nil
	}
	return opError(op, t.id, &OwnerError{Tenant: t.id, Owner: node, OwnerURL: url})
}

// acquireLive acquires tenant id's lease from o, refusing a lease that is
// lost or past its deadline already (given up by a move that raced the
// Acquire): nothing may be written under it. It asks once more, which then
// names the node the tenant went to.
func acquireLive(ctx context.Context, o Ownership, id string) (TenantLease, error) {
	for try := 0; ; try++ {
		lease, err := o.Acquire(ctx, id)
		if err != nil {
			return nil, err
		}
		live := true
		select {
		case <-lease.Lost():
			live = false
		default:
			if v, ok := lease.(validLease); ok && !v.Valid() {
				live = false
			}
		}
		if live {
			return lease, nil
		}
		if try == 1 {
			return nil, errLeaseEnded
		}
	}
}

// watchLease closes t when its lease is lost: t is fenced, so that it is
// not used again before it is closed and owned anew, and closed now if
// nothing holds it.
func (r *router) watchLease(t *tenant, lease TenantLease) {
	select {
	case <-lease.Lost():
	case <-r.stop:
		return
	}
	if cur, _ := t.lost.Load().(<-chan struct{}); cur != lease.Lost() {
		return // released (Release closes Lost too) or replaced
	}
	// Remembered beyond t, which may be let go from the registry below:
	// a write acknowledged before the loss was noticed must not have its
	// SyncTenant succeed on the next object for the ID (stillOwned).
	r.lostLeases.Store(t.id, struct{}{})
	if !t.wsem.TryAcquire() {
		t.fenced.Store(true) // closed by the next user (unfence)
		return
	}
	defer t.wsem.Release()
	if t.lease != lease {
		return // released or replaced meanwhile
	}
	t.fenced.Store(true)
	r.unfence(t)
	r.forgetIdle(t, true) // no lease left to keep it for
}

// unfence closes a fenced tenant (its lease was lost) so that it is owned
// anew before it is used; the caller holds t's writer semaphore. It fails
// while readers are leased: nothing of t may be used until they are done.
//
// A tenant fenced because its file moved (filewatch.go) is closed the same
// way, so that it is opened anew at its path; its lease stays.
func (r *router) unfence(t *tenant) error {
	if !t.fenced.Load() {
		return nil
	}
	if t.moved.Load() {
		if r.budget.counted(t) > 0 && !t.evict(true, evictFileMoved) {
			return opError(opOpenTenant, t.id, errFileMoved)
		}
		t.closedAfterMove()
		if !t.fenced.Load() {
			return nil
		}
	}
	r.tel.ownership(t.tel, "lost")
	if r.budget.counted(t) > 0 && !t.evict(true, evictLeaseLost) {
		return opError(opOpenTenant, t.id, errLeaseEnded)
	}
	r.letGoLost(t)
	t.fenced.Store(false)
	return nil
}

// closeFenced closes t, fenced (its lease ended), unless its writer is
// held: the holder closes it when it gives the writer back.
func (r *router) closeFenced(t *tenant) {
	if !t.wsem.TryAcquire() {
		return
	}
	defer t.wsem.Release()
	if t.r.unfence(t) == nil {
		r.forgetIdle(t, true)
	}
}

// letGoLost drops t's lease, lost or ended by a move, t closed (the caller
// holds t's writer semaphore). A move waits for the lease's release, and
// nothing else releases it: with writes the replica lacks (an eviction's
// final sync failed) it is released once resync has uploaded them
// (finishRelease); kept through a delete's or restore's drain, it is
// released at the position the drain synced; with nothing written under
// it and no copy here (a first access that found the store down), as never
// written. Otherwise (a first access that failed, whose copy may hold what
// only this node has) it is not, and the move waits for its context.
func (r *router) letGoLost(t *tenant) {
	lease, kept := t.lease, t.keptPos
	t.lease, t.keptPos = nil, nil
	if lease == nil || t.registered.Load() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), releaseTimeout)
	defer cancel()
	var err error
	switch {
	case t.unsynced.Load():
		if t.unreleased == nil {
			t.unreleased = lease
		}
		return
	case kept != nil:
		err = lease.Release(ctx, *kept)
	case !r.wroteUnder(t.id, lease) && !hasFile(t.path):
		err = releaseNeverWritten(ctx, lease)
	default:
		return
	}
	if err == nil {
		r.released(t.id, lease)
	}
}

// hasFile reports whether there is anything at path (an error other than
// "does not exist" counts as something).
func hasFile(path string) bool {
	_, err := os.Lstat(path)
	return !errors.Is(err, fs.ErrNotExist)
}

// releaseNeverWritten releases lease as never written if it can say so
// (unwrittenReleaser), else at position 0.
func releaseNeverWritten(ctx context.Context, lease TenantLease) error {
	if ur, ok := lease.(unwrittenReleaser); ok {
		return ur.ReleaseUnwritten(ctx)
	}
	return lease.Release(ctx, 0)
}

// leaseLost reports whether t's lease was lost (watchLease saw it).
func (r *router) leaseLost(t *tenant) bool {
	_, lost := r.lostLeases.Load(t.id)
	return lost
}

// leaseKey names a lease this node holds: its tenant and generation.
type leaseKey struct {
	id  string
	gen int64
}

func leaseKeyOf(id string, lease TenantLease) leaseKey { return leaseKey{id, lease.Generation()} }

// markWritten records that something may be written under t's lease (a
// registration with Litestream, which may upload; a delete; a restore):
// it is not to be given back as never written. The mark stays with the
// lease, not t, until it is released: a lease outlives the object that took
// it (a delete whose replica erase failed keeps it after forgetting the
// object), and Acquire hands it to the next one (adv27: marked on the
// object, it was given back as never written, and the previous owner
// served rows deleted since). The caller holds t's writer semaphore.
func (r *router) markWritten(t *tenant) {
	if t.lease != nil {
		r.written.Store(leaseKeyOf(t.id, t.lease), struct{}{})
	}
}

// wroteUnder reports whether something may have been written under lease,
// tenant id's (markWritten); false for none.
func (r *router) wroteUnder(id string, lease TenantLease) bool {
	if lease == nil {
		return false
	}
	_, ok := r.written.Load(leaseKeyOf(id, lease))
	return ok
}

// released forgets what was kept about tenant id's lease, released with
// its final position (or as never written): nothing was lost.
func (r *router) released(id string, lease TenantLease) {
	r.written.Delete(leaseKeyOf(id, lease))
	r.lostLeases.Delete(id)
}

// unwrittenReleaser is what a TenantLease may also implement (the
// cluster's does): ReleaseUnwritten gives up a lease under which nothing
// was written, as if it had never been taken (the next owner's Previous is
// what this lease's was). Released at position 0 instead, it read as a
// delete: a restore not streamed yet was then taken for deleted, and the
// position the tenant was last released with was not checked any more.
type unwrittenReleaser interface {
	ReleaseUnwritten(ctx context.Context) error
}

// deleteRecorder is what a TenantLease may also implement (the cluster's
// does) to record deletes. A delete erases every generation of the replica,
// but a node that owned the tenant before may still write into its own
// (its compactor, a late upload): the next owner restored those files,
// deleted rows and all (soak34). Deleted is the newest generation a delete
// erased with every older one (0: none), which nobody restores from;
// ReleaseDeleted gives the lease up after a delete erased them all, this
// lease's generation included; MarkDeleted records, under the lease, that
// the generations up to upTo are deleted: all of them before a delete
// erases the replica (recorded after it, a delete whose release etcd did
// not take was not recorded at all: adv37), and those before this lease's
// once a delete finished late has erased them (eraseDeleted), the tenant
// then made anew in this lease's generation.
type deleteRecorder interface {
	Deleted() int64
	ReleaseDeleted(ctx context.Context) error
	MarkDeleted(ctx context.Context, upTo int64) error
}

// recordDelete records, under t's lease, that t's generations up to upTo
// are deleted (deleteRecorder); nil when the lease cannot say so.
func recordDelete(ctx context.Context, t *tenant, upTo int64) error {
	if d, ok := t.lease.(deleteRecorder); ok {
		return d.MarkDeleted(ctx, upTo)
	}
	return nil
}

// deletedFloor is the newest generation of l's tenant that a delete erased
// (-1: none, or l cannot say): nothing is restored from it nor from an
// older one.
func deletedFloor(l TenantLease) int64 {
	if d, ok := l.(deleteRecorder); ok {
		if g := d.Deleted(); g > 0 {
			return g
		}
	}
	return -1
}

// releaseDeleted gives t's lease up after a delete erased t's replica:
// recorded as a delete (ReleaseDeleted), else at position 0.
func (r *router) releaseDeleted(t *tenant) {
	r.releaseLeaseWith(t, func(ctx context.Context, l TenantLease) error {
		if d, ok := l.(deleteRecorder); ok {
			return d.ReleaseDeleted(ctx)
		}
		return l.Release(ctx, 0)
	})
}

// releaseLease gives t's lease up with t's final replicated position pos;
// the caller holds t's writer semaphore, and t is closed and synced.
func (r *router) releaseLease(t *tenant, pos uint64) {
	r.releaseLeaseWith(t, func(ctx context.Context, l TenantLease) error { return l.Release(ctx, pos) })
}

// releaseUnwritten gives t's lease up as never written if nothing was
// written under it (wroteUnder; and the lease can say so), else at
// position 0; the caller holds t's writer semaphore, t is closed, and
// nothing of it is here (no file) nor in the replica.
func (r *router) releaseUnwritten(t *tenant) {
	if r.wroteUnder(t.id, t.lease) {
		r.releaseLease(t, 0)
		return
	}
	r.releaseLeaseWith(t, releaseNeverWritten)
}

// releaseUnopened gives back, as never written, the leases of tenants
// that hold one under which nothing was written (a first access that
// failed, the object store down: the node keeps the tenant until an
// access succeeds). Left to the cluster's Close, they were released at
// position 0, which reads as a delete. Close calls it once the open
// tenants are closed; a tenant in use is left to the cluster.
func (r *router) releaseUnopened() {
	if r.cfg.Ownership == nil {
		return
	}
	r.tenants.Range(func(_, v any) bool {
		t := v.(*tenant)
		if !t.wsem.TryAcquire() {
			return true
		}
		defer t.wsem.Release()
		if t.lease != nil && !r.wroteUnder(t.id, t.lease) && !t.registered.Load() && t.unreleased == nil {
			r.releaseUnwritten(t)
		}
		return true
	})
}

func (r *router) releaseLeaseWith(t *tenant, release func(context.Context, TenantLease) error) {
	lease := t.lease
	if lease == nil {
		return
	}
	t.lease, t.keptPos = nil, nil
	t.lost.Store((<-chan struct{})(nil)) // released, not lost
	ctx, cancel := context.WithTimeout(context.Background(), releaseTimeout)
	defer cancel()
	if err := release(ctx, lease); err == nil {
		// Released with its final position (a move ends the lease this
		// way): everything synced is where the next owner restores from,
		// so the tenant is not lost for SyncTenant.
		r.released(t.id, lease)
		r.tel.ownership(t.tel, "released")
	}
}

// closedLost is the Lost channel of a lease lost before t was made.
var closedLost = func() <-chan struct{} {
	ch := make(chan struct{})
	close(ch)
	return ch
}()

// stillOwned fails if t's last lease was lost: a sync that completed may
// have completed after its deadline, when another node may have taken t
// and restored it without what the sync uploaded.
func (r *router) stillOwned(t *tenant) error {
	ch, _ := t.lost.Load().(<-chan struct{})
	if ch == nil {
		return nil
	}
	select {
	case <-ch:
		return opError(opSyncTenant, t.id, fmt.Errorf("%w: this node's lease ended; what was synced may not be in the tenant's current generation", ErrNotOwner))
	default:
		return nil
	}
}

// replicaKey is where t streams under ReplicaURL: its ID, or with
// Ownership <id>/g<generation>, the generation being the fencing token of
// the lease it was opened under.
func (t *tenant) replicaKey() string { return replicaKey(t.id, t.gen.Load()) }

func replicaKey(id string, gen int64) string {
	if gen == 0 {
		return id
	}
	return id + "/g" + strconv.FormatInt(gen, 10)
}

// reconcileGen is reconcile (replication.go) for a tenant that streams to
// a generation its local copy was not streamed to: it was taken from
// another node, or this node's copy is from an older lease. The source is
// the newest generation (at most t's) that holds data: the previous
// owner's, or an older one when the previous owner died before its first
// upload; a generation newer than t's cannot exist (etcd revisions grow),
// and one older than the previous owner's is never written again (its
// writer was fenced). The local copy is kept when it was streamed to that
// very generation and is not behind it; else it is replaced. Either way,
// Litestream's files beside it describe another replica, and go: t's new
// generation starts with a snapshot.
func (r *router) reconcileGen(ctx context.Context, t *tenant, exists bool, gate *heldGate) (bool, error) {
	g := t.gen.Load()
	var restored *restoreBound
	if exists {
		local, err := localPos(t.path)
		if err != nil {
			return true, opError(opOpenTenant, t.id, err)
		}
		if ok, b, err := restoredOnPurpose(t.path, local); err != nil {
			return true, opError(opOpenTenant, t.id, err)
		} else if ok && b == nil {
			// Restored on purpose without replication (the CLI): it
			// becomes the head of the new generation.
			return true, opErrorOrNil(opOpenTenant, t.id, os.RemoveAll(metaDir(t.path)))
		} else if ok {
			restored = b
			if prevGen, _ := t.lease.Previous(); prevGen <= b.gen && g > b.gen {
				// Nobody owned the tenant since the restore but this node:
				// the restore is carried into this lease's generation
				// first, before anything here can fail (this lease is
				// recorded as the tenant's; a later one would otherwise
				// take it for another owner's).
				if err := rewriteRestoredGen(t.path, g); err != nil {
					return true, opError(opOpenTenant, t.id, err)
				}
				b.gen = g
			}
			if b.gen == g {
				// Restored under this very lease (or carried into it just
				// now): nobody else owned it since, and it is kept without
				// asking the replica (the store down, it is served).
				return true, opErrorOrNil(opOpenTenant, t.id, os.RemoveAll(metaDir(t.path)))
			}
		}
	}
	floor := deletedFloor(t.lease)
	src, srcGen, srcPos, err := r.repl.newestGeneration(ctx, t.id, floor, g)
	if err != nil {
		// Whether the local copy is current cannot be told: refuse rather
		// than publish stale data.
		return exists, opError(opOpenTenant, t.id, fmt.Errorf("read the tenant's replica generations: %w", err))
	}
	if floor > 0 {
		r.repl.eraseDeadGenerations(ctx, t.id, floor)
	}
	if restored != nil {
		prevGen, _ := t.lease.Previous()
		if srcGen <= restored.gen && (prevGen <= restored.gen || src != "") {
			// Restored on purpose by this node as the tenant's owner, and
			// nobody wrote a newer generation since (nor deleted it: an
			// owner since, and nothing in the replica): it becomes the
			// head of the new generation.
			return true, opErrorOrNil(opOpenTenant, t.id, os.RemoveAll(metaDir(t.path)))
		}
		// Another node owned the tenant since the restore and wrote (or
		// deleted) it: its generation holds what was acknowledged since.
		// The restore is superseded, and the rules below apply.
		if err := removeIfExists(restoredMarker(t.path)); err != nil {
			return true, opError(opOpenTenant, t.id, err)
		}
	}
	if src == "" { // nothing in the replica
		if !exists {
			return false, nil
		}
		prevGen, _ := t.lease.Previous()
		if m := readGenMarker(t.path); m < prevGen || m <= floor {
			// Another owner had the tenant after this copy was streamed,
			// and its replica holds nothing now: it was deleted (a delete
			// erases every generation). This copy must not come back, nor
			// be published as a new generation (it was, and every node
			// served the deleted rows).
			err := errors.Join(removeWithSideFiles(t.path), os.RemoveAll(metaDir(t.path)),
				removeIfExists(genMarker(t.path)), removeIfExists(unsyncedMarker(t.path)))
			return false, opErrorOrNil(opOpenTenant, t.id, err)
		}
		return true, opErrorOrNil(opOpenTenant, t.id, os.RemoveAll(metaDir(t.path)))
	}
	if relGen, relPos := releasedAt(t.lease); relGen == srcGen && srcPos < relPos {
		return exists, opError(opOpenTenant, t.id, fmt.Errorf("the replica of generation %d is at %d, behind the position %d it was released with", srcGen, srcPos, relPos))
	} else if relPos > 0 && srcGen < relGen {
		// Generation relGen was uploaded up to relPos, and none of it is
		// left (a store that lost every upload of it): the older one has
		// none of what was written there (adv35). A delete erases every
		// generation (src == "" above).
		return exists, opError(opOpenTenant, t.id, fmt.Errorf("the replica's newest generation is %d, behind generation %d, which was released at position %d", srcGen, relGen, relPos))
	}
	if exists {
		local, err := localPos(t.path)
		var fr fromReplica
		if err == nil {
			fr, err = readFromReplica(t.path, local, true)
		}
		if err != nil {
			return true, opError(opOpenTenant, t.id, err)
		}
		switch {
		case local == 0 && fr.ok && fr.key == src && fr.pos == srcPos:
			// Restored from the newest generation's head, which has not
			// moved since (reconcile): it becomes the new generation's head.
			return true, opErrorOrNil(opOpenTenant, t.id, os.RemoveAll(metaDir(t.path)))
		case local == 0 && !fr.ok && readGenMarker(t.path) == 0:
			// Never streamed: another history (replicaConflict). A copy
			// restored here and written since, whose replica moved on, is
			// replaced: with Ownership the newer generation's writes are the
			// acknowledged ones.
			return true, opError(opOpenTenant, t.id, replicaConflict(t.path, srcPos, "was never streamed"))
		}
	}
	if exists && readGenMarker(t.path) == srcGen {
		local, err := localPos(t.path)
		if err != nil {
			return true, opError(opOpenTenant, t.id, err)
		}
		if local >= srcPos {
			// It holds all of that generation: the new one starts from it.
			// Until Litestream has a position of it in the new one (the
			// store down, it has none), it is marked as descending from
			// the head it holds (fromReplica): replaced by that head at the
			// next owner, the new generation's writes were lost.
			err := markFromReplica(t.path, t.path, src, srcPos)
			if err == nil {
				err = os.RemoveAll(metaDir(t.path))
			}
			return true, opErrorOrNil(opOpenTenant, t.id, err)
		}
	}
	return r.restoreReplica(ctx, t, exists, src, srcPos, gate)
}

func opErrorOrNil(op, id string, err error) error {
	if err == nil {
		return nil
	}
	return opError(op, id, err)
}

// eraseDeadGenerations erases, as the tenant's owner, what the generations of
// tenant id's replica up to floor hold, which a delete erased and recorded
// (deleteRecorder): a former owner's late upload into one of them is never
// restored by an owner, but a restore without a lease (RestoreTenantAt
// before the tenant is owned here, FetchReplica, the CLI) read it, and the
// deleted rows stayed readable in the store (adv37). Best effort: what
// fails is tried again at the tenant's next first access.
func (rp *replicator) eraseDeadGenerations(ctx context.Context, id string, floor int64) {
	gens, err := rp.generations(ctx, id)
	if err != nil {
		return
	}
	for _, g := range gens {
		if g > 0 && g <= floor {
			rp.deleteKey(ctx, replicaKey(id, g))
		}
	}
}

// newestGeneration returns the key, generation and position of the newest
// generation of tenant id's replica, above min and at most max, that holds
// data; a replica written before ownership (<id> itself) counts as
// generation 0. Empty key: nothing anywhere.
func (rp *replicator) newestGeneration(ctx context.Context, id string, min, max int64) (key string, gen int64, pos uint64, err error) {
	gens, err := rp.generations(ctx, id)
	if err != nil {
		return "", 0, 0, err
	}
	slices.Sort(gens)
	slices.Reverse(gens)
	for _, g := range append(gens, 0) {
		if g > max {
			continue
		}
		if g <= min {
			break // sorted newest first
		}
		k := replicaKey(id, g)
		pos, err := rp.replicaPos(ctx, k)
		if err != nil {
			return "", 0, 0, err
		}
		if pos > 0 {
			return k, g, pos, nil
		}
	}
	return "", 0, 0, nil
}

// TenantReplicaURLs returns the replica URLs that hold tenant id's
// history under replicaURL (a Config.ReplicaURL, file:// or s3://): its own
// (<replicaURL>/<id>, written without Ownership) and, with Ownership, one
// per generation (<replicaURL>/<id>/g<N>), oldest first. Each is a
// Litestream replica of its own: compact or restore them one by one.
func TenantReplicaURLs(ctx context.Context, replicaURL, id string) ([]string, error) {
	const op = "tenant replica URLs"
	if err := checkTenantID(id); err != nil {
		return nil, opError(op, id, err)
	}
	if _, err := tenantReplicaURL(replicaURL, id); err != nil {
		return nil, opError(op, id, err)
	}
	rp := &replicator{base: replicaURL}
	if err := rp.checkFolder(id); err != nil {
		return nil, opError(op, id, err)
	}
	gens, err := rp.generations(ctx, id)
	if err != nil {
		return nil, opError(op, id, err)
	}
	slices.Sort(gens)
	urls := []string{rp.url(id)}
	for _, g := range gens {
		if err := rp.checkFolder(replicaKey(id, g)); err != nil {
			return nil, opError(op, id, err)
		}
		urls = append(urls, rp.url(replicaKey(id, g)))
	}
	return urls, nil
}

// generations lists the generations in tenant id's replica (<id>/g<N>/).
func (rp *replicator) generations(ctx context.Context, id string) ([]int64, error) {
	raw := rp.url(id)
	u, err := url.Parse(raw)
	if err != nil {
		return nil, err
	}
	var names []string
	switch u.Scheme {
	case "file":
		ents, err := readDirIfExists(u.Path)
		if err != nil {
			return nil, err
		}
		for _, e := range ents {
			names = append(names, e.Name())
		}
	case "s3":
		_, prefixes, err := listS3(ctx, raw, "/")
		if err != nil {
			return nil, err
		}
		for _, p := range prefixes {
			names = append(names, path.Base(p))
		}
	default:
		return nil, errUnsupported
	}
	var gens []int64
	for _, n := range names {
		if g, err := strconv.ParseInt(strings.TrimPrefix(n, "g"), 10, 64); strings.HasPrefix(n, "g") && err == nil && g > 0 {
			gens = append(gens, g)
		}
	}
	return gens, nil
}

// genMarker names the file that records which generation the tenant file
// at p was last streamed to (reconcileGen).
func genMarker(p string) string {
	return sideName(p, "-gen")
}

// readGenMarker returns the generation recorded beside the file at p, 0 if
// none.
func readGenMarker(p string) int64 {
	b, err := readSideFile(genMarker(p))
	if err != nil {
		return 0
	}
	g, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	return g
}

// writeGenMarker records gen beside the file at p.
func writeGenMarker(p string, gen int64) error {
	if readGenMarker(p) == gen {
		return nil
	}
	return writeSideFile(genMarker(p), []byte(strconv.FormatInt(gen, 10)+"\n"), false)
}

// Generation reports the generation tenant id streams to while this node
// holds its lease (Config.Ownership): the fencing token of the lease it is
// written under. ok is false when this node holds no lease on it.
func (p *Proxy) Generation(id string) (gen int64, ok bool) {
	v, found := p.c.r.tenants.Load(id)
	if !found {
		return 0, false
	}
	t := v.(*tenant)
	ch, _ := t.lost.Load().(<-chan struct{})
	if ch == nil {
		return 0, false
	}
	select {
	case <-ch:
		return 0, false
	default:
	}
	if v := t.valid.Load(); v != nil && !(*v).Valid() {
		return 0, false // lost, though the timer that says so has not run yet
	}
	return t.gen.Load(), true
}

// deleteReplicaOwned erases tenant t's replica, every generation, while
// holding t's writer semaphore and (with Ownership) its lease, which it
// then gives up: nothing is left to restore.
func (r *router) deleteReplicaOwned(ctx context.Context, t *tenant) (found bool, err error) {
	if !t.wsem.TryAcquire() {
		if err := t.waitWriter(ctx); err != nil { // Close ends it too
			return false, opError(opWaitWriter, t.id, err)
		}
	}
	defer t.unlockWriter()
	if r.isClosed.Load() {
		return false, opError(opWaitWriter, t.id, ErrClosed)
	}
	// The writer was held by an open restoring the tenant from this very
	// replica: the file is back, and erasing the replica alone left it
	// served (and streamed again) while the delete said nil.
	if exists, err := t.fileExists(opDeleteTenant); err != nil {
		return false, err
	} else if exists {
		return false, errRestoredMeanwhile
	}
	if err := r.own(ctx, opDeleteTenant, t); err != nil {
		return false, err
	}
	r.markWritten(t) // a delete, even one that stops midway
	if r.repl.erasable() {
		// Until it is erased: an erasure that fails, or stops midway
		// (objects are deleted in list order), left the tenant, or an
		// older state of it, for the next access to restore.
		if err := markDeleted(t); err != nil {
			return false, err
		}
	}
	if err := recordDelete(ctx, t, t.gen.Load()); err != nil {
		return false, err
	}
	found, err = r.repl.deleteReplica(ctx, t.id)
	if err == nil {
		r.releaseDeleted(t)
		err = removeIfExists(deletedMarker(t.path))
	}
	return found, err
}

// errRestoredMeanwhile: deleteReplicaOwned found the tenant's file, restored
// from the replica by an open while it waited for the writer.
var errRestoredMeanwhile = errors.New("restored from the replica meanwhile")

// isDone reports whether ch is closed.
func isDone(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}
