package sqliteproxy

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"iter"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// This file holds the on-disk layout of a data directory: where a tenant's
// file lives (Layout, bucketOf, tenantPath in tenantid.go), the marker that
// records a bucketed layout, and the streaming listing of tenants.

// Layout says where tenant files live under Config.Dir.
//
// LayoutFlat, the default, keeps every tenant in Dir itself:
// <Dir>/<id>.db. LayoutBuckets spreads them over 256 folders named by the
// first byte of the SHA-256 of the ID, in lower-case hex:
// <Dir>/<bucket>/<id>.db, where bucket is the first two characters of
// `printf %s ID | sha256sum`. This is an on-disk format: it never changes.
// A tenant's side files (-wal, -shm, Litestream's files, the driver's
// temporary files) live in the same folder as its database file.
//
// A directory in the bucketed layout holds a marker file,
// <Dir>/.sqliteproxy-layout, written when a proxy first opens it with
// LayoutBuckets (which refuses a directory holding flat tenant files) or
// by Relayout. A directory without one is flat. New refuses a directory
// whose marker says another layout than Config.Layout, or that a relayout
// was interrupted, so that a proxy never sees an empty tenant where the
// other layout keeps its data. Convert a directory with Relayout
// (`sqliteproxy relayout -to buckets`). Not detected: two proxies that
// open the same empty directory at the same moment with different
// layouts, and versions of this package older than Layout, which ignore
// the marker. Never remove the marker by hand.
type Layout int8

const (
	LayoutFlat    Layout = iota // <Dir>/<id>.db (default) [layout=flat]
	LayoutBuckets               // <Dir>/<2 hex digits of SHA-256(id)>/<id>.db [layout=buckets]
)

// String returns the layout's DSN value: "flat" or "buckets".
func (l Layout) String() string {
	switch l {
	case LayoutFlat:
		return "flat"
	case LayoutBuckets:
		return "buckets"
	}
	return fmt.Sprintf("Layout(%d)", int8(l))
}

func parseLayout(s string) (Layout, error) {
	switch s {
	case "flat":
		return LayoutFlat, nil
	case "buckets":
		return LayoutBuckets, nil
	}
	return 0, fmt.Errorf("%q is not flat or buckets", s)
}

// DirLayout returns the layout the data directory dir is in, as its
// marker records it (a directory without one is LayoutFlat). It fails if
// a relayout of dir was interrupted (run Relayout again) or the marker is
// not one it knows. Tools that open directories of either layout (the
// CLI) use it to set Config.Layout.
func DirLayout(dir string) (Layout, error) {
	st, err := readDirState(dir)
	if err == nil {
		err = st.interrupted(dir)
	}
	if err == nil && st.layout == LayoutFlat {
		err = unmarkedBuckets(dir)
	}
	if err != nil {
		return 0, opError("dir layout", "", err)
	}
	return st.layout, nil
}

// numBuckets is the number of bucket folders of LayoutBuckets.
const numBuckets = 256

// bucketOf is the bucket folder of tenant id in LayoutBuckets: the first
// byte of SHA-256(id) in lower-case hex ("00" to "ff").
func bucketOf(id string) string {
	sum := sha256.Sum256([]byte(id))
	return bucketName(int(sum[0]))
}

func bucketName(i int) string {
	const digits = "0123456789abcdef"
	return string([]byte{digits[i>>4], digits[i&15]})
}

// layoutMarkerName is the file in Dir that records a layout other than
// flat, or a relayout under way.
const layoutMarkerName = ".sqliteproxy-layout"

// layoutTempPrefix starts the temporary name of a marker being written.
const layoutTempPrefix = ".layout-"

// Marker contents (one line).
const (
	markerBuckets      = "buckets"
	markerRelayoutTo   = "relayout-to-" // + target layout
	relayoutRerunHint  = "run `sqliteproxy relayout -dir %s -to %s` to finish it (or -to %s to undo it)"
	otherLayoutRefusal = "%s is in the %s layout, not %s: set Config.Layout (DSN layout=%s; CLI -layout %[4]s or auto), or convert it with `sqliteproxy relayout -dir %s -to %s` while nothing uses it"
)

// dirState is what a data directory's marker says.
type dirState struct {
	layout     Layout
	relayoutTo Layout // with relayout: the layout an interrupted relayout was converting to
	relayout   bool   // a relayout started and did not finish
}

// interrupted fails when a relayout of dir did not finish, saying how to
// finish it.
func (st dirState) interrupted(dir string) error {
	if !st.relayout {
		return nil
	}
	return relayoutInterrupted(fmt.Sprintf("%s: a relayout to %s was interrupted; "+relayoutRerunHint, dir, st.relayoutTo, dir, st.relayoutTo, other(st.relayoutTo)))
}

// relayoutInterrupted is the error of a directory whose relayout did not
// finish: its own message (which says how to finish it), and
// ErrRelayoutInterrupted for errors.Is.
type relayoutInterrupted string

func (e relayoutInterrupted) Error() string        { return string(e) }
func (e relayoutInterrupted) Is(target error) bool { return target == ErrRelayoutInterrupted }

// readDirState reads dir's layout marker: no marker is flat.
// The marker is a regular file of a few bytes: anything else put there
// (a FIFO hung New and every CLI command, a symlink to /dev/zero ran the
// process out of memory) is refused, and at most markerMax bytes are read.
func readDirState(dir string) (dirState, error) {
	if err := notABucket(dir); err != nil {
		return dirState{}, err
	}
	return readMarker(dir)
}

// notABucket refuses dir when it is a bucket folder of a data directory in
// the buckets layout: taken for a flat data directory, a relayout there
// moved a live tenant's file one level down (the service then made a new,
// empty one), and tenants created there are in a bucket the service never
// reads.
func notABucket(dir string) error {
	// Made absolute and resolved first: "." inside a bucket folder, or a
	// symlink to one, names it too.
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	if real, err := filepath.EvalSymlinks(abs); err == nil {
		abs = real
	}
	base := filepath.Base(abs)
	if len(base) != 2 || !isHex(base[0]) || !isHex(base[1]) {
		return nil
	}
	parent := filepath.Dir(abs)
	st, err := readMarker(parent)
	if err != nil || st.layout != LayoutBuckets && !st.relayout {
		return nil // not the parent's bucket, as far as its marker tells
	}
	return fmt.Errorf("%s is a bucket folder of the data directory %s (layout buckets): use %s as the data directory", dir, parent, parent)
}

func isHex(c byte) bool { return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' }

// unmarkedBuckets fails when dir, without a layout marker (flat), holds
// tenant files in bucket folders: a bucketed data directory copied without
// its dot-files (cp -r dir/* elsewhere skips the marker). Taken for flat,
// it was an empty directory: backups and checks of "every tenant" did
// nothing and said so with exit status 0, a relayout to flat moved
// nothing, and a service made new empty tenants beside the real ones
// (adv30). It looks at each possible bucket folder (256 lstat calls).
func unmarkedBuckets(dir string) error {
	for b := range numBuckets {
		folder := filepath.Join(dir, bucketName(b))
		if fi, err := os.Lstat(folder); err != nil || !fi.IsDir() {
			continue
		}
		found, err := firstTenantIn(folder, bucketName(b))
		if err != nil {
			return err
		}
		if found != "" {
			return fmt.Errorf("%s has no layout marker (%s), so it is flat, but holds tenant files in bucket folders (%s): a directory in the buckets layout copied without its dot-files? "+
				"Copy its %s too, or mark it with `sqliteproxy relayout -dir %s -to buckets` (which moves nothing here)",
				dir, layoutMarkerName, filepath.Join(bucketName(b), found+tenantFileSuffix), layoutMarkerName, dir)
		}
	}
	return nil
}

// readMarker is readDirState without the bucket check.
func readMarker(dir string) (dirState, error) {
	f, err := openRegular(filepath.Join(dir, layoutMarkerName))
	if errors.Is(err, fs.ErrNotExist) {
		return dirState{layout: LayoutFlat}, nil
	}
	if err != nil {
		return dirState{}, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, markerMax))
	if err != nil {
		return dirState{}, err
	}
	s := strings.TrimSpace(string(b))
	if s == markerBuckets {
		return dirState{layout: LayoutBuckets}, nil
	}
	if to, ok := strings.CutPrefix(s, markerRelayoutTo); ok {
		if l, err := parseLayout(to); err == nil {
			return dirState{relayout: true, relayoutTo: l}, nil
		}
	}
	return dirState{}, fmt.Errorf("%s: unknown layout marker %q", filepath.Join(dir, layoutMarkerName), s)
}

// markerMax bounds what readDirState reads of a layout marker.
const markerMax = 256

// writeMarker replaces dir's layout marker with content, atomically and
// durably; content "" removes it (flat).
func writeMarker(dir, content string) error {
	path := filepath.Join(dir, layoutMarkerName)
	if content == "" {
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		return syncDir(dir)
	}
	tmp := tempName(dir, layoutTempPrefix, "marker")
	defer os.Remove(tmp)
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = io.WriteString(f, content+"\n")
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err == nil {
		err = syncDir(dir)
	}
	return err
}

// checkLayout makes sure dir is in layout l, or refuses it: a directory
// in the other layout (or half converted) would show its tenants as
// missing, and a first access would create an empty one beside the real
// one. A directory without tenant files that is opened with LayoutBuckets
// gets its marker, unless another proxy has it open (presence, this
// process's key on it): unmarked, that one is flat, and each would have
// made and served its own file of a tenant. The caller holds dir's shared
// lock (lockDir), so no relayout runs meanwhile.
func checkLayout(dir string, l Layout, presence string) error {
	st, err := readDirState(dir)
	if err != nil {
		return err
	}
	if err := st.interrupted(dir); err != nil {
		return err
	}
	if st.layout == l {
		if l == LayoutFlat {
			return unmarkedBuckets(dir)
		}
		if l == LayoutBuckets {
			// A version before layouts (2026-11-26) does not read the
			// marker: it took every tenant for missing and wrote new flat
			// files, which this layout never reads (their writes hidden
			// from listings, checks and backups).
			if id, err := firstFlatTenant(dir); err != nil {
				return err
			} else if id != "" {
				return fmt.Errorf("%s is in the %s layout but also holds tenant files of the flat layout (%s.db), which it never reads: written by a version before layouts? "+
					"Move them into their buckets with `sqliteproxy relayout -dir %s -to buckets` while nothing uses it (it names the tenants in both places, to merge by hand, and moves nothing until there are none)", dir, l, id, dir)
			}
		}
		return nil
	}
	if st.layout == LayoutBuckets { // and l is flat
		return fmt.Errorf(otherLayoutRefusal, dir, st.layout, l, st.layout, dir, l)
	}
	// Unmarked: flat, or new. Buckets may start here only if no flat tenant
	// file is in the way.
	if found, err := hasFlatTenant(dir); err != nil {
		return err
	} else if found {
		return fmt.Errorf(otherLayoutRefusal, dir, LayoutFlat, l, LayoutFlat, dir, l)
	}
	if presenceTells && othersPresent(presence) {
		return fmt.Errorf("%s is open in another proxy, in layout %s (the directory has no layout marker): open it with that layout, or close the others first", dir, LayoutFlat)
	}
	return writeMarker(dir, markerBuckets)
}

func other(l Layout) Layout {
	if l == LayoutFlat {
		return LayoutBuckets
	}
	return LayoutFlat
}

// errDirLocked: the data directory's lock (lockDir) is held the other
// way: by Relayout when a proxy opens it, by a proxy when Relayout starts.
var errDirLocked = errors.New("data directory is locked")

// replicatingLock names the file in the data directory that a proxy with
// replication holds locked (lockReplicating). Not a tenant's name; it stays
// (removing a lock file races with its next taker).
const replicatingLock = ".sqliteproxy-replicating"

// errReplicating: another proxy with replication has the data directory
// open (lockReplicating).
var errReplicating = errors.New("another proxy with replication has this data directory open (this process or another): " +
	"two would stream each tenant with two Litestreams and corrupt its replica; stop it first")

// readDirBatch is how many directory entries listings read at a time.
const readDirBatch = 1024

// listTenants yields the tenant IDs under dir in layout l, sorted within
// each bucket: with LayoutBuckets bucket by bucket, "00" to "ff"; with
// LayoutFlat the whole directory is one bucket. A bucket's folder is read
// readDirBatch entries at a time and only its IDs are kept, so memory is
// one bucket's IDs. Only regular files whose names follow the ID rule
// (and, in buckets, sit in their ID's bucket) are tenants; side and
// temporary files are skipped. A listing error (ctx's included) is
// yielded once, last, with an empty ID; ctx is checked before every ID.
func listTenants(ctx context.Context, dir string, l Layout) iter.Seq2[string, error] {
	return listEntries(ctx, dir, l, tenantIDFromEntry)
}

// listEntries is listTenants of the entries that id names a tenant of.
func listEntries(ctx context.Context, dir string, l Layout, id func(os.DirEntry) (string, bool)) iter.Seq2[string, error] {
	return func(yield func(string, error) bool) {
		var ids []string
		for b := range numBuckets {
			folder, bucket := dir, ""
			if l == LayoutBuckets {
				bucket = bucketName(b)
				folder = filepath.Join(dir, bucket)
			}
			ids = ids[:0]
			err := realBucket(folder, bucket)
			if err == nil {
				err = readDirBatches(ctx, folder, func(ents []os.DirEntry) bool {
					for _, e := range ents {
						if id, ok := id(e); ok && (bucket == "" || bucketOf(id) == bucket) {
							ids = append(ids, id)
						}
					}
					return true
				})
			}
			if err != nil && !(bucket != "" && errors.Is(err, fs.ErrNotExist)) {
				yield("", opError(opListTenants, "", err))
				return
			}
			slices.Sort(ids)
			for _, id := range ids {
				if err := ctx.Err(); err != nil {
					yield("", opError(opListTenants, "", err))
					return
				}
				if !yield(id, nil) {
					return
				}
			}
			if bucket == "" {
				return
			}
		}
	}
}

// realBucket returns an error when folder, the folder of bucket (none:
// the data directory itself, which may be a symlink), is anything but a
// directory or missing: a symlink there would put the bucket's tenant
// files, made and found through it, outside the data directory.
func realBucket(folder, bucket string) error {
	if bucket == "" {
		return nil
	}
	fi, err := os.Lstat(folder)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("bucket folder %s is not a directory (a symlink, say): tenant files stay inside the data directory", folder)
	}
	return nil
}

// hasFlatTenant reports whether dir holds a tenant file of the flat
// layout, stopping at the first.
func hasFlatTenant(dir string) (found bool, err error) {
	id, err := firstFlatTenant(dir)
	return id != "", err
}

// firstFlatTenant returns the ID of a tenant file of the flat layout in
// dir, the first found; "" when there is none.
func firstFlatTenant(dir string) (id string, err error) {
	return firstTenantIn(dir, "")
}

// firstTenantIn returns the ID of a tenant file in folder, the first found
// whose bucket is bucket (any: ""); "" when there is none.
func firstTenantIn(folder, bucket string) (id string, err error) {
	err = readDirBatches(context.Background(), folder, func(ents []os.DirEntry) bool {
		for _, e := range ents {
			if eid, ok := tenantIDFromEntry(e); ok && (bucket == "" || bucketOf(eid) == bucket) {
				id = eid
				return false
			}
		}
		return true
	})
	return id, err
}

// tenantIDFromEntry returns the tenant ID a directory entry names, if it
// is a regular file named after a valid ID.
func tenantIDFromEntry(e os.DirEntry) (string, bool) {
	if !e.Type().IsRegular() {
		return "", false
	}
	return tenantIDFromFile(e.Name())
}

// readDirBatches calls f with dir's entries, readDirBatch at a time, until
// f returns false or the directory ends. It checks ctx between batches.
func readDirBatches(ctx context.Context, dir string, f func([]os.DirEntry) bool) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	for {
		ents, err := d.ReadDir(readDirBatch)
		if len(ents) > 0 && !f(ents) {
			return nil
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
}
