package sqliteproxy

import (
	"fmt"
	"strings"
	"testing"
)

// The classification cache holds at most maxClassWeight of weight,
// whatever the texts: 500 unique 1 MiB queries kept 504 MiB of heap
// before it was weighed by bytes (a user trial).
func TestClassCache_Bounded(t *testing.T) {
	t.Parallel()
	var c classCache
	held := func() (n, bytes int) {
		c.m.Range(func(k, _ any) bool {
			n++
			bytes += len(k.(string))
			return true
		})
		return n, bytes
	}
	c.store(strings.Repeat(" ", maxClassText+1)+"SELECT 1", true)
	if n, _ := held(); n != 0 {
		t.Errorf("a text over maxClassText was kept")
	}
	pad := strings.Repeat(" ", maxClassText-16)
	for i := range 1000 {
		c.store(fmt.Sprintf("SELECT %d%s", i, pad), true)
		if _, b := held(); b > maxClassWeight {
			t.Fatalf("after %d long texts the cache holds %d bytes of SQL, over %d", i+1, b, maxClassWeight)
		}
	}
	for i := range 20_000 {
		c.store(fmt.Sprintf("SELECT %d", i), true)
	}
	if n, _ := held(); n < 5_000 || n > maxClassWeight/classWeight {
		t.Errorf("short texts kept: %d", n)
	}
	if ro, ok := c.lookup("SELECT 19999"); !ok || !ro {
		t.Errorf("the last text stored: %v, %v", ro, ok)
	}
}
