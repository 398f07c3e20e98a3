package sqliteproxy

import (
	"os"
	"os/exec"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// earlyBusyEnv marks the child of TestGroupCommit_AsyncTimerChan.
const earlyBusyEnv = "SQLITEPROXY_TEST_EARLY_BUSY"

// An application may run with the timers of Go before 1.23
// (GODEBUG=asynctimerchan=1): a timer used again by group commit kept a
// tick of its last use, which ended the next queued wait at once: writes
// failed with SQLITE_BUSY after microseconds (67 in a helper's run). The
// child runs writers on one tenant and fails if any busy error comes
// before BusyTimeout.
func TestGroupCommit_AsyncTimerChan(t *testing.T) {
	t.Parallel()
	cmd := exec.Command(os.Args[0], "-test.run", "^TestGroupCommit_EarlyBusyChild$", "-test.v")
	cmd.Env = append(os.Environ(), "GODEBUG=asynctimerchan=1", earlyBusyEnv+"=1")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("child with GODEBUG=asynctimerchan=1: %v\n%s", err, out)
	}
}

func TestGroupCommit_EarlyBusyChild(t *testing.T) {
	if os.Getenv(earlyBusyEnv) == "" {
		t.Skip("the child of TestGroupCommit_AsyncTimerChan")
	}
	const busy = 20 * time.Millisecond
	p := newTestProxy(t, Config{Migrations: []string{eventsTable}, BusyTimeout: busy, GroupCommit: GroupCommitOn})
	var early atomic.Int64
	var wg sync.WaitGroup
	stop := time.Now().Add(3 * time.Second)
	for g := range 24 {
		wg.Go(func() {
			for i := 0; time.Now().Before(stop) && early.Load() == 0; i++ {
				q := `INSERT INTO events (tenant) VALUES ('w')`
				if i%7 == g%7 { // a statement of a few ms
					q = `INSERT INTO events (tenant) SELECT count(*) FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < 20000) SELECT x FROM c)`
				}
				start := time.Now()
				_, err := p.ExecContext(tctx("acme"), q)
				if took := time.Since(start); err != nil && took < busy*9/10 {
					early.Add(1)
					t.Errorf("%v after %v, BusyTimeout %v", err, took, busy)
				}
			}
		})
	}
	wg.Wait()
}
