package sqliteproxy

import (
	"sync"
	"sync/atomic"
)

// classCache remembers, by SQL text, whether a query may run on a reader.
// The verdict depends only on the text (sqlite3_stmt_readonly and the
// statement count), so it is shared by all tenants. It is bounded: when it
// holds maxClasses texts it starts over, so applications that build SQL with
// literals cannot grow it without limit.
type classCache struct {
	m sync.Map // string -> bool (true: read-only)
	n atomic.Int64
}

const maxClasses = 10_000

func (c *classCache) lookup(query string) (readonly, ok bool) {
	v, ok := c.m.Load(query)
	if !ok {
		return false, false
	}
	return v.(bool), true
}

func (c *classCache) store(query string, readonly bool) {
	if c.n.Add(1) > maxClasses {
		c.m.Clear()
		c.n.Store(1)
	}
	c.m.Store(query, readonly)
}
