// Package etcdtest runs a real single-member etcd server in the test
// process, for tests of package cluster and of applications that use it.
package etcdtest

import (
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// startTimeout bounds how long Start and Restart wait for etcd to serve.
const startTimeout = 60 * time.Second

// Server is an in-process etcd listening on 127.0.0.1.
type Server struct {
	dir    string
	client url.URL
	peer   url.URL
	mu     sync.Mutex
	etcd   *embed.Etcd // nil while stopped
}

// Start starts etcd with its data in t.TempDir() on free ports of
// 127.0.0.1 and stops it when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	s := &Server{dir: t.TempDir()}
	// A port free when chosen may be taken before etcd binds it (another
	// process's tests start servers too): choose others then.
	for try := 1; ; try++ {
		s.client, s.peer = freeURL(t), freeURL(t)
		err := s.tryStart(t, time.Time{})
		if err == nil {
			break
		}
		if !strings.Contains(err.Error(), "address already in use") || try == 5 {
			t.Fatalf("etcdtest: start etcd: %v", err)
		}
	}
	t.Cleanup(s.Stop)
	return s
}

func freeURL(t testing.TB) url.URL {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("etcdtest: free port: %v", err)
	}
	addr := l.Addr().String()
	l.Close()
	return url.URL{Scheme: "http", Host: addr}
}

func (s *Server) start(t testing.TB) {
	t.Helper()
	// The ports were free when chosen; on a restart the old sockets may
	// linger for a moment, so retry briefly.
	if err := s.tryStart(t, time.Now().Add(10*time.Second)); err != nil {
		t.Fatalf("etcdtest: start etcd: %v", err)
	}
}

// tryStart starts etcd on s's ports, trying again until retryUntil (zero:
// once) while it cannot.
func (s *Server) tryStart(t testing.TB, retryUntil time.Time) error {
	t.Helper()
	cfg := embed.NewConfig()
	cfg.Name = "etcdtest"
	cfg.Dir = s.dir
	cfg.LogLevel = "error"
	// Even at level error, etcd logs each listener it closes on shutdown:
	// a test's output is no place for that.
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	cfg.ListenClientUrls = []url.URL{s.client}
	cfg.AdvertiseClientUrls = []url.URL{s.client}
	cfg.ListenPeerUrls = []url.URL{s.peer}
	cfg.AdvertisePeerUrls = []url.URL{s.peer}
	cfg.InitialCluster = fmt.Sprintf("%s=%s", cfg.Name, s.peer.String())
	cfg.ListenMetricsUrls = nil
	var (
		e   *embed.Etcd
		err error
	)
	for {
		e, err = embed.StartEtcd(cfg)
		if err == nil || time.Now().After(retryUntil) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		return err
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		t.Fatalf("etcdtest: etcd failed: %v", err)
	case <-time.After(startTimeout):
		e.Server.Stop()
		e.Close()
		t.Fatalf("etcdtest: etcd not ready after %v", startTimeout)
	}
	s.mu.Lock()
	s.etcd = e
	s.mu.Unlock()
	return nil
}

// Endpoints are the client URLs to give to clientv3 or cluster.Config.
func (s *Server) Endpoints() []string { return []string{s.client.String()} }

// Stop stops etcd, keeping its data. It is a no-op when stopped. Clients
// are cut off at once (new requests fail), but Stop itself may take a few
// seconds while etcd waits for open streams.
func (s *Server) Stop() {
	s.mu.Lock()
	e := s.etcd
	s.etcd = nil
	s.mu.Unlock()
	if e != nil {
		e.Close()
	}
}

// Restart starts a stopped etcd again, with the same data and ports (it
// stops it first if it runs).
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.Stop()
	s.start(t)
}
