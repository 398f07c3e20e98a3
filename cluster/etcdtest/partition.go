package etcdtest

import (
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Partition is a TCP proxy between clients and a Server that can stop
// passing bytes, in both directions, while keeping the connections open: a
// network partition, or a NAT entry dropped, as a client sees it (no reset,
// no FIN). It closes with the test.
type Partition struct {
	ln     net.Listener
	to     string
	cut    atomic.Bool  // no connection passes bytes
	deaf   atomic.Bool  // no connection passes etcd's bytes to the client
	dead   atomic.Int64 // connections numbered below it never pass bytes again
	serial atomic.Int64 // connections accepted so far
	mu     sync.Mutex
	conns  []net.Conn
}

// NewPartition starts a Partition in front of s, passing bytes.
func NewPartition(tb testing.TB, s *Server) *Partition {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	p := &Partition{ln: ln, to: strings.TrimPrefix(s.Endpoints()[0], "http://")}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go p.serve(c, p.serial.Add(1)-1)
		}
	}()
	tb.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		defer p.mu.Unlock()
		for _, c := range p.conns {
			c.Close()
		}
	})
	return p
}

// Endpoint is the client URL through the partition.
func (p *Partition) Endpoint() string { return "http://" + p.ln.Addr().String() }

// Cut stops (true) or resumes (false) every connection's bytes; held ones
// pass when it resumes.
func (p *Partition) Cut(cut bool) { p.cut.Store(cut) }

// Deafen holds (true) or passes again (false) etcd's answers only: the
// client's requests still reach etcd, which commits them, and the client
// does not learn of it (an answer lost, or late past its timeout).
func (p *Partition) Deafen(deaf bool) { p.deaf.Store(deaf) }

// KillOpen leaves every connection open now dead for ever (the old
// connection of a dropped NAT entry); new ones pass.
func (p *Partition) KillOpen() { p.dead.Store(p.serial.Load()) }

func (p *Partition) serve(c net.Conn, n int64) {
	u, err := net.DialTimeout("tcp", p.to, 2*time.Second)
	if err != nil {
		c.Close()
		return
	}
	p.mu.Lock()
	p.conns = append(p.conns, c, u)
	p.mu.Unlock()
	blocked := func() bool { return p.cut.Load() || n < p.dead.Load() }
	deaf := func() bool { return blocked() || p.deaf.Load() }
	pipe := func(dst, src net.Conn, blocked func() bool) {
		defer dst.Close()
		defer src.Close()
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			for n > 0 && blocked() { // held until the partition ends
				time.Sleep(5 * time.Millisecond)
			}
			if n > 0 {
				if _, err := dst.Write(buf[:n]); err != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	}
	go pipe(u, c, blocked)
	go pipe(c, u, deaf)
}
