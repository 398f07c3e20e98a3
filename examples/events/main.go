// Command events is the example multi-tenant HTTP service of sqliteproxy: a
// tiny event log in which every tenant's events live in a SQLite file of
// their own, <dir>/<tenant>.db, created and migrated on the tenant's first
// request.
//
// The tenant comes from the X-Tenant-ID header. A middleware checks it and
// puts it into the request context with sqliteproxy.WithOrgID; from there on
// the handlers are ordinary single-tenant database/sql code, and the driver
// sends each statement to the right file.
//
// Run it from the repository root with
//
//	make run
//
// (the same as cd examples && go run -tags sqlite_omit_load_extension
// ./events -addr :8080 -dir ../data: examples is a module of its own) and
// try it with
//
//	curl -s -X POST -H 'X-Tenant-ID: acme' -d '{"Name":"signup"}' localhost:8080/events
//	curl -s -H 'X-Tenant-ID: acme' localhost:8080/events
//
// Endpoints:
//
//	POST /events   {"Name": "..."}  -> 201 and the created event
//	               ?durable=1       -> with -replica: 201 only once the event is in the replica (SyncTenant)
//	GET  /events                    -> 200 and the tenant's events, newest first:
//	                                   [{"id": 1, "name": "...", "created_at": "..."}]
//	GET  /healthz                   -> 200 "ok" (no tenant needed)
//
// As a cluster node (-etcd, -node, -advertise; needs -replica), a request
// for a tenant another node owns is forwarded to that node (one hop), a
// tenant nobody owns is taken here, and POST /events answers with headers
// X-Sqliteproxy-Node and X-Sqliteproxy-Generation: the node that wrote the
// event and its lease's generation. A tenant being moved answers 503 with
// Retry-After, and so does a write whose lease ended before it could be
// acknowledged, with X-Sqliteproxy-Outcome: unknown (it may or may not
// have survived: retry it only if it is idempotent), and a request for a
// tenant whose owner stopped answering (another node takes it within the
// TTL).
//
// The body of POST /events is decoded with encoding/json, which matches
// field names case-insensitively: {"name": "..."} works as well.
package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/sqliteproxy/sqliteproxy"
	"github.com/sqliteproxy/sqliteproxy/cluster"
	"github.com/sqliteproxy/sqliteproxy/replica"
)

// migrations is the schema of every tenant's file. It is append-only: to
// change the schema, add a migration; never edit one that has been applied.
var migrations = []string{
	`CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, name TEXT NOT NULL, created_at DATETIME DEFAULT CURRENT_TIMESTAMP)`,
}

const (
	// tenantHeader names the tenant of a request.
	tenantHeader = "X-Tenant-ID"
	// maxBodyBytes caps the size of a request body.
	maxBodyBytes = 1 << 20
	// shutdownTimeout bounds how long in-flight requests may run after a
	// SIGINT or SIGTERM.
	shutdownTimeout = 5 * time.Second
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "address to listen on (:8080: every interface)")
	dir := flag.String("dir", "./data", "directory holding one SQLite file per tenant")
	layout := flag.String("layout", "flat", "layout of -dir: flat (<dir>/<id>.db) or buckets (<dir>/<bucket>/<id>.db, for many thousands of tenants; convert a directory with `sqliteproxy relayout`)")
	replicaURL := flag.String("replica", "", "replica URL (file:///path, s3://bucket/prefix?region=... or ?endpoint=...): stream every tenant there with Litestream, restore missing tenants from there")
	socket := flag.String("litestream-socket", "", "control socket of the Litestream process (with -replica)")
	litestream := flag.String("litestream", "", "litestream binary used to restore tenants (default: litestream on PATH)")
	maxConns := flag.Int("max-connections", 0, "SQLite connections open at once, all tenants together (default 100)")
	etcd := flag.String("etcd", "", "comma-separated etcd endpoints: run as a node of a cluster (needs -replica, -node, -advertise)")
	node := flag.String("node", "", "this node's ID in the cluster (with -etcd)")
	advertise := flag.String("advertise", "", "URL other nodes forward this node's tenants' requests to, e.g. http://10.0.0.1:8080 (with -etcd)")
	ttl := flag.Duration("ttl", cluster.DefaultTTL, "lease TTL (with -etcd): a dead node's tenants move after this long")
	flag.Parse()
	cfg := sqliteproxy.Config{Dir: *dir, Migrations: migrations, MaxConnections: *maxConns,
		ReplicaURL: *replicaURL, LitestreamSocket: *socket, LitestreamPath: *litestream}
	switch *layout {
	case "flat":
	case "buckets":
		cfg.Layout = sqliteproxy.LayoutBuckets
	default:
		fmt.Fprintf(os.Stderr, "events: -layout %q is not flat or buckets\n", *layout)
		os.Exit(2)
	}
	if *replicaURL != "" {
		cfg.ReplicaCompactor = &replica.Compactor{} // keeps restores fast
		cfg.ReplicaRestorer = &replica.Restorer{}   // restores without starting a litestream process
	} else if *socket != "" || *litestream != "" {
		// The image runs under Litestream and passes its socket whether or
		// not REPLICA_URL is set: without a replica there is nothing to
		// stream, and New refuses a socket without one.
		slog.Info("events: replication off (no -replica): -litestream-socket and -litestream are not used")
		cfg.LitestreamSocket, cfg.LitestreamPath = "", ""
	}
	var ccfg *cluster.Config
	if *etcd != "" {
		ccfg = &cluster.Config{Endpoints: strings.Split(*etcd, ","), NodeID: *node, AdvertiseURL: *advertise, TTL: *ttl}
	}
	if err := run(*addr, cfg, ccfg); err != nil {
		slog.Error("events: exiting", "err", err)
		os.Exit(1)
	}
}

// run serves until SIGINT or SIGTERM, then shuts the server down gracefully
// and closes the proxy (which releases its tenants with their final
// positions) and then leaves the cluster.
func run(addr string, cfg sqliteproxy.Config, ccfg *cluster.Config) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	var c *cluster.Cluster
	if ccfg != nil {
		var err error
		if c, err = cluster.New(*ccfg); err != nil {
			return err
		}
		defer c.Close()
		cfg.Ownership = c
	}
	p, err := sqliteproxy.New(cfg)
	if err != nil {
		return err
	}
	if cfg.ReplicaURL != "" {
		// Said now rather than at each tenant's first access; served all
		// the same (Litestream may come up later, the store back).
		if err := p.CheckReplication(ctx); err != nil {
			slog.Warn("events: replication cannot work yet", "err", err)
		}
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		p.Close()
		return err
	}
	srv := &http.Server{
		Handler:           newServer(p, c),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
	}
	slog.Info("events: listening", "addr", ln.Addr().String(), "dir", p.Config().Dir, "replica", p.Config().ReplicaURL, "node", nodeID(c))

	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case err := <-served: // Serve failed on its own
		return errors.Join(err, p.Close())
	case <-ctx.Done():
	}
	// A second signal a second or more later kills the process at once.
	// One sooner is the same stop told twice: a Ctrl-C reaches the whole
	// process group, and Litestream (litestream replicate -exec) passes it
	// on to its child too, which killed the service before its Close (the
	// last second of writes not in the replica).
	again := make(chan os.Signal, 4)
	signal.Notify(again, os.Interrupt, syscall.SIGTERM)
	stop()
	first := time.Now()
	go func() {
		for range again {
			if time.Since(first) >= time.Second {
				slog.Error("events: second signal, exiting at once")
				os.Exit(1)
			}
		}
	}()
	slog.Info("events: shutting down")

	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	err = srv.Shutdown(sctx)
	if err := <-served; err != nil && !errors.Is(err, http.ErrServerClosed) {
		slog.Error("events: serve", "err", err)
	}
	if cerr := p.Close(); cerr != nil {
		err = errors.Join(err, cerr)
	}
	if err == nil {
		slog.Info("events: stopped")
	}
	return err
}

// newServer returns the service's handler. Only requireTenant (and, in a
// cluster, c.Forward) know about tenants; the event handlers see a plain
// *sql.DB.
func newServer(p *sqliteproxy.Proxy, c *cluster.Cluster) http.Handler {
	s := &server{db: p.DB, p: p, node: nodeID(c)}
	tenantRoute := func(h http.HandlerFunc) http.Handler {
		if c == nil {
			return requireTenant(h)
		}
		return requireTenant(c.Forward(h)) // to the tenant's owner, one hop
	}
	mux := http.NewServeMux()
	mux.Handle("POST /events", tenantRoute(s.createEvent))
	mux.Handle("GET /events", tenantRoute(s.listEvents))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		// No tenant in the context: this checks the proxy, not a tenant file.
		if err := p.PingContext(r.Context()); err != nil {
			slog.Error("events: ping", "err", err)
			http.Error(w, "unavailable", http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		io.WriteString(w, "ok")
	})
	return mux
}

// requireTenant routes the request to the tenant named by the X-Tenant-ID
// header, or rejects it with 400 when the header is missing, repeated or not
// a valid tenant ID. Checking here, before any statement runs, means a bad
// ID can never reach the driver, let alone create a file.
func requireTenant(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ids := r.Header.Values(tenantHeader)
		switch {
		case len(ids) > 1:
			writeError(w, http.StatusBadRequest, tenantHeader+" header given more than once")
			return
		case len(ids) == 0 || ids[0] == "":
			writeError(w, http.StatusBadRequest, "missing "+tenantHeader+" header")
			return
		}
		if err := sqliteproxy.ValidTenantID(ids[0]); err != nil {
			writeError(w, http.StatusBadRequest, "invalid "+tenantHeader+" header: "+err.Error())
			return
		}
		next.ServeHTTP(w, r.WithContext(sqliteproxy.WithOrgID(r.Context(), ids[0])))
	})
}

func nodeID(c *cluster.Cluster) string {
	if c == nil {
		return ""
	}
	return c.NodeID()
}

// server holds the handlers' dependencies.
type server struct {
	db   *sql.DB
	p    *sqliteproxy.Proxy
	node string // this node's ID in a cluster, "" outside one
}

type event struct {
	ID        int64     `json:"id"`
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"created_at"`
}

func (s *server) createEvent(w http.ResponseWriter, r *http.Request) {
	// No struct tags: encoding/json matches "Name" case-insensitively, so
	// {"Name": "x"} and {"name": "x"} are the same request.
	var in struct{ Name string }
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	if err := dec.Decode(&in); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body larger than %d bytes", tooBig.Limit))
			return
		}
		writeError(w, http.StatusBadRequest, "malformed JSON body: "+err.Error())
		return
	}
	if dec.More() {
		writeError(w, http.StatusBadRequest, "malformed JSON body: more than one JSON value")
		return
	}
	if in.Name == "" {
		writeError(w, http.StatusBadRequest, `"Name" is required, as in {"Name": "signup"}`)
		return
	}
	e := event{Name: in.Name}
	err := s.db.QueryRowContext(r.Context(),
		`INSERT INTO events (name) VALUES (?) RETURNING id, created_at`, in.Name,
	).Scan(&e.ID, &e.CreatedAt)
	if err != nil {
		serverError(w, r, "insert event", err)
		return
	}
	id, _ := sqliteproxy.OrgID(r.Context())
	if s.node != "" {
		// Which node wrote it, under which generation of the tenant: the
		// generation is read after the write, and SyncTenant below fails
		// if the lease ended meanwhile.
		gen, ok := s.p.Generation(id)
		if !ok {
			// The lease ended after the write: it may be lost with the
			// generation it went to, so it is not acknowledged. Nor is it
			// refused: a move that ended the lease synced and handed the
			// row over (a drill found it there), so "retry" wrote it twice.
			w.Header().Set("X-Sqliteproxy-Outcome", "unknown")
			writeError(w, http.StatusServiceUnavailable, fmt.Sprintf("event %d may or may not have been stored: this node's lease on the tenant ended right after the write; look for it before writing it again", e.ID))
			return
		}
		w.Header().Set("X-Sqliteproxy-Node", s.node)
		w.Header().Set("X-Sqliteproxy-Generation", strconv.FormatInt(gen, 10))
	}
	if r.URL.Query().Get("durable") == "1" && s.p.Config().ReplicaURL != "" {
		// Acknowledge a write that must survive the loss of this machine
		// only once it is in the replica.
		if err := s.p.SyncTenant(r.Context(), id); err != nil {
			serverError(w, r, "sync event to the replica", err)
			return
		}
	}
	writeJSON(w, http.StatusCreated, e)
}

func (s *server) listEvents(w http.ResponseWriter, r *http.Request) {
	rows, err := s.db.QueryContext(r.Context(), `SELECT id, name, created_at FROM events ORDER BY id DESC`)
	if err != nil {
		serverError(w, r, "list events", err)
		return
	}
	defer rows.Close()
	events := []event{} // encodes as [] rather than null when empty
	for rows.Next() {
		var e event
		if err := rows.Scan(&e.ID, &e.Name, &e.CreatedAt); err != nil {
			serverError(w, r, "list events", err)
			return
		}
		events = append(events, e)
	}
	if err := rows.Err(); err != nil {
		serverError(w, r, "list events", err)
		return
	}
	writeJSON(w, http.StatusOK, events)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	if err := json.NewEncoder(w).Encode(v); err != nil {
		slog.Error("events: write response", "err", err)
	}
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}

// serverError logs err with the request's tenant and answers 500 without
// revealing it; a tenant another node owns (it was taken or is being moved
// since the request was routed here) answers 503 with Retry-After, and a
// tenant whose file and replica conflict 503 without.
func serverError(w http.ResponseWriter, r *http.Request, op string, err error) {
	tenant, _ := sqliteproxy.OrgID(r.Context())
	if errors.Is(err, sqliteproxy.ErrNotOwner) || errors.Is(err, cluster.ErrLeaseLost) {
		// Taken by another node since the request was routed here, being
		// moved, or this node cannot reach etcd to take it: retry.
		w.Header().Set("Retry-After", "1")
		writeError(w, http.StatusServiceUnavailable, "the tenant cannot be served by this node now; retry")
		return
	}
	slog.ErrorContext(r.Context(), "events: "+op, "tenant", tenant, "err", err)
	if errors.Is(err, sqliteproxy.ErrReplicaConflict) {
		// The tenant's file here was never streamed and its replica holds
		// another copy: unavailable until an operator keeps one (the log
		// says how). Not a retry.
		writeError(w, http.StatusServiceUnavailable, "the tenant's file and its replica are different copies: an operator must choose one (see the server's log)")
		return
	}
	writeError(w, http.StatusInternalServerError, "internal error")
}
