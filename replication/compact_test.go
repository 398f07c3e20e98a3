//go:build linux

package replication_test

import (
	"context"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sqliteproxy/sqliteproxy"
	"github.com/sqliteproxy/sqliteproxy/replica"
	"github.com/sqliteproxy/sqliteproxy/replication/harness"
	"github.com/sqliteproxy/sqliteproxy/sqliteproxytest"
)

// ltxMaxTXID returns the highest transaction of the LTX file named name
// (<min>-<max>.ltx, hexadecimal; a path or an object key works too).
func ltxMaxTXID(name string) (uint64, bool) {
	stem, ok := strings.CutSuffix(path.Base(name), ".ltx")
	_, hi, found := strings.Cut(stem, "-")
	n, err := strconv.ParseUint(hi, 16, 64)
	return n, ok && found && err == nil
}

// ltxCounts counts the files of tenant id's replica: level-0 files that no
// higher level covers yet, and files of higher levels.
func (g *rig) ltxCounts(t testing.TB, id string) (l0, higher int) {
	t.Helper()
	type file struct {
		level int
		max   uint64
	}
	var files []file
	add := func(level, name string, base int) {
		if !strings.HasSuffix(name, ".ltx") {
			return // a file being written (.tmp)
		}
		lv, err := strconv.ParseInt(level, base, 16)
		mx, ok := ltxMaxTXID(name)
		if err != nil || !ok {
			t.Fatalf("not an LTX file: level %q, name %q", level, name)
		}
		files = append(files, file{int(lv), mx})
	}
	if g.s3 != nil {
		objs, _, err := g.s3.List("tenants/"+id+"/", "")
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range objs {
			dir, name := path.Split(o.Key)
			add(path.Base(dir), name, 16)
		}
	} else {
		root := path.Join(strings.TrimPrefix(g.replica, "file://"), id, "ltx")
		levels, err := os.ReadDir(root)
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range levels {
			ents, err := os.ReadDir(path.Join(root, l.Name()))
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range ents {
				add(l.Name(), e.Name(), 10)
			}
		}
	}
	var covered uint64
	for _, f := range files {
		if f.level > 0 {
			covered = max(covered, f.max)
			higher++
		}
	}
	for _, f := range files {
		if f.level == 0 && f.max > covered {
			l0++
		}
	}
	return l0, higher
}

// A tenant opened and evicted again and again leaves one level-0 file per
// session in its replica (Litestream compacts only what it streams). With
// Config.ReplicaCompactor the driver compacts the replica of a closed
// tenant once it holds 8 such files: their number stays bounded, and a
// fresh node restores every row. Without one (the control tenant) they
// pile up.
func TestProxy_CompactsClosedTenants(t *testing.T) {
	for _, kind := range []string{"file", "s3"} {
		t.Run(kind, func(t *testing.T) {
			// Litestream's own level-1 compaction runs at wall-clock
			// multiples of its interval (30 s by default): a test that
			// straddled one saw the control tenant compacted by Litestream.
			// An hour keeps it out of the test.
			g := newRigLevels(t, kind, []time.Duration{time.Hour})
			const cycles = 20
			run := func(compactor sqliteproxy.ReplicaCompactor, id string) (*sqliteproxy.Proxy, []string) {
				cfg := g.config(t, 1)
				cfg.ReadersPerTenant = -1 // one connection per tenant: a write to another evicts it
				cfg.ReplicaCompactor = compactor
				p := sqliteproxytest.New(t, cfg)
				var want []string
				most := 0
				for i := range cycles {
					name := fmt.Sprintf("%s-%d", id, i)
					insert(t, p, id, name)
					want = append(want, name)
					insert(t, p, "other-"+id, name) // evicts id: a session ends
					l0, _ := g.ltxCounts(t, id)
					most = max(most, l0)
				}
				t.Logf("%s: at most %d level-0 files not compacted over %d sessions", id, most, cycles)
				if compactor != nil && most >= cycles {
					t.Fatalf("%s: %d level-0 files not compacted after %d sessions: the compactor never ran", id, most, cycles)
				}
				return p, want
			}

			_, _ = run(nil, "control")
			if l0, higher := g.ltxCounts(t, "control"); l0 < cycles || higher != 0 {
				t.Fatalf("without a compactor: %d level-0 files and %d of higher levels after %d sessions, want >= %d and 0", l0, higher, cycles, cycles)
			}

			p, want := run(&replica.Compactor{}, "big")
			// The last compaction may still run: poll under a deadline.
			sqliteproxytest.WaitFor(t, 30*time.Second, "the replica of big compacted", func() bool {
				l0, higher := g.ltxCounts(t, "big")
				return l0 < 8 && higher > 0
			})
			if err := p.Close(); err != nil {
				t.Fatal(err)
			}
			b := sqliteproxytest.New(t, g.config(t, 4)) // another node
			if got := names(t, b, "big"); !slices.Equal(got, want) {
				t.Fatalf("restored after compaction: %v, want %v", got, want)
			}
		})
	}
}

// `sqliteproxy compact` is documented as safe beside the service: it
// compacts and deletes files of the levels Litestream itself compacts for a
// tenant it streams. With Litestream's levels at 1 s and 3 s (30 s and 5 min
// by default), a tenant written and synced for 8 s while a compactor runs
// every 100 ms on its replica is restored whole by another node, and
// Litestream logs no error or warning but failed compactions on level files
// the two made at once (documented: see package replica).
func TestCompact_BesideStreaming(t *testing.T) {
	ls := harness.StartLitestreamLevels(t, []time.Duration{time.Second, 3 * time.Second})
	g := &rig{replica: "file://" + filepath.Join(t.TempDir(), "replica"), ls: ls}
	p := sqliteproxytest.New(t, g.config(t, 4))
	ctx := context.Background()

	type result struct {
		runs, failed int
		last         error
	}
	done, res := make(chan struct{}), make(chan result, 1)
	go func() {
		var r result
		c := replica.Compactor{Retention: time.Millisecond}
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-done:
				res <- r
				return
			case <-tick.C:
			}
			r.runs++
			if _, _, err := c.Compact(ctx, g.replica+"/acme"); err != nil {
				r.failed++
				r.last = err
			}
		}
	}()
	var want []string
	for i, end := 0, time.Now().Add(8*time.Second); time.Now().Before(end); i++ {
		name := fmt.Sprintf("row-%05d", i)
		insert(t, p, "acme", name)
		want = append(want, name)
		if i%20 == 19 {
			if err := p.SyncTenant(ctx, "acme"); err != nil {
				t.Fatal(err)
			}
		}
	}
	close(done)
	r := <-res
	// A run may fail when it and Litestream write the same file at once:
	// that tenant is compacted again on the next run, and nothing is lost.
	// (Through one shared .tmp file, 6 of 80 failed, and Litestream's next
	// compaction read a corrupt level file: each now writes its own.)
	t.Logf("%d rows; %d compactions beside Litestream's, %d failed (last: %v)", len(want), r.runs, r.failed, r.last)
	if r.failed > r.runs/4 {
		t.Errorf("%d of %d compactions failed; last: %v", r.failed, r.runs, r.last)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	log, err := os.ReadFile(ls.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	overlaps := 0
	for _, line := range strings.Split(string(log), "\n") {
		if strings.Contains(line, "no databases specified") {
			continue // at start: the proxy registers them over the socket
		}
		if strings.Contains(line, "compaction failed") && strings.Contains(line, "non-contiguous transaction ids") {
			// Both compacted a level at once and their files overlap: the
			// documented cost of compacting beside streaming (replica
			// package). The restore below must be whole all the same.
			overlaps++
			continue
		}
		if strings.Contains(line, "level=ERROR") || strings.Contains(line, "level=WARN") {
			t.Errorf("litestream: %s", line)
		}
	}
	t.Logf("litestream's compactions failed on overlapping level files %d times", overlaps)
	b := sqliteproxytest.New(t, g.config(t, 4)) // another node
	if got := names(t, b, "acme"); !slices.Equal(got, want) {
		t.Fatalf("restored: %d rows, want %d (first difference at %d)", len(got), len(want), firstDiff(got, want))
	}
}

func firstDiff(a, b []string) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}
