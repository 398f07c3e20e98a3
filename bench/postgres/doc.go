// Package pgbench compares sqliteproxy (a SQLite file per tenant) with the
// usual alternative, one shared PostgreSQL database whose tables carry a
// tenant_id column guarded by row level security, on the same machine and
// the same workloads. It holds only tests and benchmarks (`make
// bench-postgres`, `make postgres`); they start a throwaway PostgreSQL
// cluster of their own (see install-postgres.sh).
package pgbench
