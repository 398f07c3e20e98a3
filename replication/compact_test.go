//go:build linux

package replication_test

import (
	"fmt"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sqliteproxy/sqliteproxy"
	"github.com/sqliteproxy/sqliteproxy/replica"
	"github.com/sqliteproxy/sqliteproxy/sqliteproxytest"
)

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
		base2, ok := strings.CutSuffix(name, ".ltx")
		_, hi, found := strings.Cut(base2, "-")
		mx, err2 := strconv.ParseUint(hi, 16, 64)
		if err != nil || !ok || !found || err2 != nil {
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
			g := newRig(t, kind)
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
