package sqliteproxy

import (
	"context"
	"database/sql"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// walRig is a WAL-mode database written with mattn directly, its WAL kept
// (no checkpoint) so that its frames can be read while it is open.
type walRig struct {
	t    *testing.T
	path string
	db   *sql.DB
}

func newWALRig(t *testing.T, dir string) *walRig {
	t.Helper()
	p := filepath.Join(dir, "acme.db")
	db, err := sql.Open("sqlite3", p+"?_journal_mode=WAL")
	if err != nil {
		t.Fatal(err)
	}
	db.SetMaxOpenConns(1)
	t.Cleanup(func() { db.Close() })
	for _, q := range []string{`PRAGMA wal_autocheckpoint = 0`, `CREATE TABLE t (v TEXT)`} {
		if _, err := db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	return &walRig{t, p, db}
}

// commit inserts a row in a transaction of its own and returns the WAL's
// size afterwards: where that commit ends.
func (w *walRig) commit() int64 {
	w.t.Helper()
	if _, err := w.db.Exec(`INSERT INTO t VALUES ('x')`); err != nil {
		w.t.Fatal(err)
	}
	fi, err := os.Stat(w.path + "-wal")
	if err != nil {
		w.t.Fatal(err)
	}
	return fi.Size()
}

// ltx writes, beside the database, the header of a level-0 LTX file for
// transaction txid made from the WAL with salts (s1, s2), ending at end.
func (w *walRig) ltx(txid uint64, s1, s2 uint32, end int64) {
	w.t.Helper()
	dir := filepath.Join(metaDir(w.path), "ltx", "0")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		w.t.Fatal(err)
	}
	h := make([]byte, ltxHeaderSize)
	copy(h, "LTX1")
	binary.BigEndian.PutUint64(h[16:], txid)
	binary.BigEndian.PutUint64(h[24:], txid)
	binary.BigEndian.PutUint64(h[48:], uint64(walHeaderSize))
	binary.BigEndian.PutUint64(h[56:], uint64(end-walHeaderSize))
	binary.BigEndian.PutUint32(h[64:], s1)
	binary.BigEndian.PutUint32(h[68:], s2)
	name := fmt.Sprintf("%016x-%016x.ltx", txid, txid)
	if err := os.WriteFile(filepath.Join(dir, name), h, 0o600); err != nil {
		w.t.Fatal(err)
	}
}

// lastWALCommit finds the end of the last commit SQLite wrote, and stops
// at the first frame that fails its checksum as SQLite's recovery does.
func TestWALPos_LastCommit(t *testing.T) {
	t.Parallel()
	w := newWALRig(t, t.TempDir())
	first := w.commit()
	second := w.commit()
	end, s1, s2, err := lastWALCommit(w.path + "-wal")
	if err != nil || end != second || end <= first {
		t.Fatalf("lastWALCommit = %d, %v; want %d (first commit ends at %d)", end, err, second, first)
	}
	hdr, err := readPrefix(w.path+"-wal", walHeaderSize)
	if err != nil {
		t.Fatal(err)
	}
	if s1 != binary.BigEndian.Uint32(hdr[16:]) || s2 != binary.BigEndian.Uint32(hdr[20:]) {
		t.Errorf("salts %x %x, header %x", s1, s2, hdr[16:24])
	}

	// A copy whose last frame is damaged: that commit does not count.
	b, err := os.ReadFile(w.path + "-wal")
	if err != nil {
		t.Fatal(err)
	}
	b[second-1] ^= 0xff
	damaged := filepath.Join(t.TempDir(), "damaged-wal")
	if err := os.WriteFile(damaged, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if end, _, _, err := lastWALCommit(damaged); err != nil || end != first {
		t.Errorf("damaged last frame: %d, %v; want %d", end, err, first)
	}
	if end, _, _, err := lastWALCommit(filepath.Join(t.TempDir(), "none-wal")); end != 0 || err != nil {
		t.Errorf("no WAL: %d, %v", end, err)
	}
}

// A commit after the point Litestream's last LTX file ends, or in a WAL
// restarted since, is pending; ReplicaPositions counts it as one more
// local transaction, so that status does not say "in sync" while the
// replica lacks it.
func TestWALPos_Pending(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	w := newWALRig(t, dir)
	first := w.commit()
	second := w.commit()
	_, s1, s2, err := lastWALCommit(w.path + "-wal")
	if err != nil {
		t.Fatal(err)
	}
	replica := "file://" + t.TempDir()
	for _, c := range []struct {
		name    string
		txid    uint64 // of the newest LTX file, written in turn
		s1, s2  uint32
		end     int64
		pending bool
	}{
		{"up to the last commit", 3, s1, s2, second, false},
		{"up to the first commit", 4, s1, s2, first, true},
		{"another WAL's", 5, s1 + 1, s2, second, true},
	} {
		w.ltx(c.txid, c.s1, c.s2, c.end)
		if got, err := walPending(w.path, c.txid); got != c.pending || err != nil {
			t.Errorf("%s: pending %v, %v; want %v", c.name, got, err, c.pending)
		}
		want := c.txid
		if c.pending {
			want++
		}
		local, remote, err := ReplicaPositions(context.Background(), replica, dir, "acme")
		if local != want || remote != 0 || err != nil {
			t.Errorf("%s: ReplicaPositions %d, %d, %v; want %d, 0", c.name, local, remote, err, want)
		}
	}
	if got, err := walPending(w.path, 99); got || err != nil {
		t.Errorf("no LTX file of that transaction: %v, %v", got, err)
	}
}
