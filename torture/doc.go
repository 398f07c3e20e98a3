// Package torture holds the sqliteproxy torture suite (issue 8); it has no
// code of its own, only tests:
//
//   - crash safety: a child process writes transactions to several tenants
//     and is killed with SIGKILL at random moments (also while it migrates);
//     after every kill each tenant must pass integrity_check, keep its
//     counter invariant and hold every transaction the child acknowledged;
//   - crash safety of a fleet rollback: a child rolling 200 tenants back
//     two versions (Proxy.Rollback) is killed with SIGKILL at random
//     moments; after every kill each tenant's schema and ledger must be
//     exactly those of one version, never in between;
//   - write contention on one tenant (64 goroutines): no SQLITE_BUSY, no
//     error, exact row counts;
//   - the connection cap under load (many tenants, MaxConnections 32): open
//     .db descriptors never above the cap, bounded waits, no goroutine leak;
//   - faults: disk full (tmpfs), a tenant file deleted or replaced under a
//     live proxy, a corrupt tenant file, a read-only data directory (a
//     read-only remount as root; chmod 0500 as any other user, which a root
//     run also checks in a child process running as uid 65534);
//   - lifecycle under traffic: DeleteTenant, BackupTenant and RestoreTenant
//     while writers hammer the same tenant.
//
// Each test reports its figures (cycles, operations, errors, rows lost) and
// TestMain prints them as a table at the end. `go test ./torture/` (and so
// `make test`) runs a short budget; `make torture` runs the long one
// (-torture.long) under -race, plus every fuzz target for a bounded time.
package torture
