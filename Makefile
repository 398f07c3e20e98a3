# sqliteproxy: every target works on a fresh machine with Go and gcc (test and the benches install
# what they run: PostgreSQL with apt-get, Litestream, versitygw and etcd from the Go module proxy).
GO      ?= go
TAGS    := sqlite_omit_load_extension
ADDR    ?= 127.0.0.1:8080
# HOSTPORT is ADDR as curl takes it: localhost:8080 for :8080, 127.0.0.1:8080 as given.
HOSTPORT = $(if $(filter :%,$(ADDR)),localhost$(ADDR),$(ADDR))
DIR     ?= ./data
export CGO_ENABLED := 1

.PHONY: run run-replicated run-cluster test check vet unit compat build clean bench bench-replication cli static torture replica cluster examples replication bench-cluster postgres bench-postgres soak-cluster

## run: start the example multi-tenant service on $(DIR) (default ./data)
run:
	@echo 'sqliteproxy example: listening on $(ADDR), tenant files in $(DIR). Try:'
	@echo "  curl -s -X POST -H 'X-Tenant-ID: acme' -d '{\"Name\":\"signup\"}' $(HOSTPORT)/events"
	@echo "  curl -s -H 'X-Tenant-ID: acme' $(HOSTPORT)/events"
	cd examples && $(GO) run -tags $(TAGS) ./events -addr $(ADDR) -dir $(abspath $(DIR))

REPLICA ?= file://$(CURDIR)/replica-data
LSOCK   := $(CURDIR)/bin/litestream.sock

## run-replicated: the example service with every tenant streamed by Litestream to $(REPLICA)
## (default ./replica-data); remove $(DIR) and run it again: tenants come back from the replica
run-replicated:
	@if [ -S '$(LSOCK)' ]; then echo 'run-replicated: $(LSOCK) exists: another make run-replicated is running (a second Litestream would take its socket), or one was killed: then remove the file' >&2; exit 1; fi
	@mkdir -p bin
	cd replication && $(GO) build -o ../bin/litestream github.com/benbjohnson/litestream/cmd/litestream
	cd examples && $(GO) build -tags $(TAGS) -o ../bin/events ./events
	@printf 'socket:\n  enabled: true\n  path: %s\n  permissions: 0600\n' '$(LSOCK)' > bin/litestream.yml
	@echo 'sqliteproxy example, replicated to $(REPLICA): listening on $(ADDR), tenant files in $(DIR). Try:'
	@echo "  curl -s -X POST -H 'X-Tenant-ID: acme' -d '{\"Name\":\"signup\"}' $(HOSTPORT)/events"
	@echo "  then stop it, rm -rf $(DIR), make run-replicated again and: curl -s -H 'X-Tenant-ID: acme' $(HOSTPORT)/events"
	env -u AWS_CA_BUNDLE bin/litestream replicate -config bin/litestream.yml -exec \
		'bin/events -addr $(ADDR) -dir $(DIR) -replica "$(REPLICA)" -litestream-socket $(LSOCK) -litestream bin/litestream'

## run-cluster: three example nodes of one cluster (etcd leases, Litestream, a file replica) on
## :8081-:8083; requests reach each tenant's owner from any node
run-cluster:
	scripts/run-cluster.sh $(abspath cluster-data)

## test: everything CI runs: formatting, go mod tidy, vet, race-enabled tests
test: check vet unit compat cli replica cluster examples replication postgres

check:
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) mod tidy -diff
	cd compat && $(GO) mod tidy -diff
	cd cmd/sqliteproxy && $(GO) mod tidy -diff
	cd replication && $(GO) mod tidy -diff
	cd replica && $(GO) mod tidy -diff
	cd cluster && $(GO) mod tidy -diff
	cd examples && $(GO) mod tidy -diff
	cd bench/postgres && $(GO) mod tidy -diff

vet:
	$(GO) vet -tags $(TAGS) ./...

unit:
	$(GO) test -race -tags $(TAGS) -timeout 20m ./...
	# and the refusal of load_extension in a build that has it (without sqlite_omit_load_extension),
	# a build that also keeps SQLite's memory statistics (tag sqliteproxy_memstatus, memstatus.go)
	$(GO) test -race -tags sqliteproxy_memstatus -run '^(TestHardening_LoadExtensionRefused|TestMemStatus_OffUnlessKept)$$' .
	# and the package again with Config.KeepWAL on in every test proxy: kept side files change nothing else
	SQLITEPROXY_TEST_KEEP_WAL=1 $(GO) test -tags $(TAGS) -timeout 10m .

## compat: sqliteproxy under sqlx, GORM, ent, bun and sqlc (the nested module compat/)
compat:
	cd compat && $(GO) vet -tags $(TAGS) ./... && $(GO) test -race -tags $(TAGS) ./...

## cli: the ops command cmd/sqliteproxy (a nested module, for its progress-bar dependency)
cli:
	cd cmd/sqliteproxy && $(GO) vet -tags $(TAGS) ./... && $(GO) test -race -tags $(TAGS) ./...
	# the commands on directories whose closed tenants kept their side files (Config.KeepWAL)
	cd cmd/sqliteproxy && SQLITEPROXY_TEST_KEEP_WAL=1 $(GO) test -tags $(TAGS) ./...

## cluster: tenant ownership over etcd leases (a nested module; tests start a real etcd in-process)
cluster:
	cd cluster && $(GO) vet ./... && $(GO) test -race -timeout 10m ./...

## examples: the example service (a nested module: as a cluster node it links the etcd client)
examples:
	cd examples && $(GO) vet -tags $(TAGS) ./... && $(GO) test -race -tags $(TAGS) ./...

## replica: the replica compactor (a nested module: it links Litestream's library)
replica:
	cd replica && $(GO) vet ./... && $(GO) test -race ./...

## replication: replication with a real Litestream (v0.5.18) and a real S3-compatible server
## (versitygw), both pinned as tools in replication/go.mod and built on first use (~4 min cold)
replication:
	cd replication && $(GO) vet -tags $(TAGS) ./... && $(GO) test -race -tags $(TAGS) -timeout 20m ./...

## bench-replication: insert throughput with replication on and off, restore on open of a 1 MB
## tenant from a local S3-compatible server (as its node left it, and after repeated restores with
## the compactor off and on), bytes uploaded per evict + reopen cycle
bench-replication:
	cd replication && $(GO) test -tags $(TAGS) -run '^$$' -bench '$(BENCH)' -count $(COUNT) -timeout 60m . | tee ../bench-replication.txt
	$(GO) run $(BENCHSTAT) -col /replication bench-replication.txt

## bench-cluster: forwarding latency (direct vs forwarded), inserts with ownership off and on, and
## failover of 100 tenants after a node's SIGKILL (3 iterations: each kills a node)
bench-cluster:
	cd replication && $(GO) test -tags $(TAGS) -run '^$$' -bench 'Forward|Ownership' -benchtime 2s -count $(COUNT) -timeout 60m . | tee ../bench-cluster.txt
	cd replication && $(GO) test -tags $(TAGS) -run '^$$' -bench 'Failover' -benchtime 3x -count 2 -timeout 30m . | tee -a ../bench-cluster.txt
	$(GO) run $(BENCHSTAT) -col /path bench-cluster.txt

## soak-cluster: three node processes, a real etcd, Litestream and S3 server, steady traffic and a
## random fault every 20-60 s (kills, lost disks, pauses past the TTL, etcd and store outages, moves,
## deletes, restores) for $(SOAK) (default 15m), checking every acknowledged write the README
## promises, one writer per generation and nothing in another tenant after each fault
SOAK ?= 15m
soak-cluster:
	cd replication && CLUSTER_SOAK=1 CLUSTER_SOAK_DUR=$(SOAK) $(GO) test -tags $(TAGS) -run '^TestClusterSoak$$' -count 1 -timeout 90m -v . > ../soak-cluster.txt 2>&1; \
		st=$$?; tail -40 ../soak-cluster.txt; exit $$st

## postgres: the shared-PostgreSQL comparison (nested module bench/postgres) as a smoke test: a
## throwaway PostgreSQL cluster (Debian's package, installed with apt-get when initdb is missing),
## row level security isolation, and every workload a few iterations on both sides
postgres:
	bench/postgres/install-postgres.sh
	cd bench/postgres && $(GO) vet -tags $(TAGS) ./... && \
		$(GO) test -race -short -tags $(TAGS) -run . -bench . -benchtime 3x -timeout 10m ./...

## bench-postgres: the proxy beside one shared PostgreSQL database with a tenant_id column and row
## level security, same machine, same workloads, both durability pairings (bench/postgres), then
## the README's tables (medians of $(COUNT) runs)
bench-postgres:
	bench/postgres/install-postgres.sh
	cd bench/postgres && $(GO) test -tags $(TAGS) -run '^$$' -bench 'Insert|SingleQuery|Query10Rows|Tx5Inserts|PreparedInsert|Tenants100x4|Writers8|WorkingSet|RoundTrip' -count $(COUNT) -timeout 60m . | tee ../../bench-postgres.txt
	cd bench/postgres && $(GO) test -tags $(TAGS) -run '^$$' -bench 'TenantLifecycle' -benchtime 10x -count $(COUNT) -timeout 30m . | tee -a ../../bench-postgres.txt
	cd bench/postgres && $(GO) run ./internal/pgtable < ../../bench-postgres.txt

build:
	$(GO) build -tags $(TAGS) ./...

# Fully static binaries: CGo with glibc linked statically (needs libc.a, from
# Debian's libc6-dev). osusergo and netgo keep os/user and the resolver off
# getpwnam/getaddrinfo, which a static glibc cannot provide (the linker warns),
# and sqlite_omit_load_extension keeps SQLite off dlopen.
STATIC_FLAGS := -tags '$(TAGS) osusergo netgo' -ldflags '-s -w -extldflags "-static"' -trimpath

# static_build DIR,OUT,PKG: go build in DIR; any output (a linker warning) fails.
define static_build
	$(info cd $(1) && $(GO) build $(STATIC_FLAGS) -o $(2) $(3))
	@out=$$(cd $(1) && $(GO) build $(STATIC_FLAGS) -o $(2) $(3) 2>&1); rc=$$?; \
	if [ -n "$$out" ]; then echo "$$out"; fi; \
	if [ $$rc -ne 0 ]; then exit $$rc; fi; \
	if [ -n "$$out" ]; then rm -f $(1)/$(2); echo 'static: the build printed warnings (above); it must build cleanly'; exit 1; fi
endef

## static: bin/events, bin/sqliteproxy and bin/litestream (pinned by replication/go.mod; pure Go,
## no CGo) as fully static binaries (no libc at run time: FROM scratch)
static:
	@mkdir -p bin
	$(call static_build,examples,../bin/events,./events)
	$(call static_build,cmd/sqliteproxy,../../bin/sqliteproxy,.)
	cd replication && CGO_ENABLED=0 $(GO) build -trimpath -ldflags '-s -w' -o ../bin/litestream github.com/benbjohnson/litestream/cmd/litestream
	@for b in bin/events bin/sqliteproxy bin/litestream; do \
		if command -v ldd >/dev/null && ! ldd $$b 2>&1 | grep -q 'not a dynamic executable'; then \
			ldd $$b; echo "static: $$b is dynamically linked"; exit 1; fi; \
		if command -v file >/dev/null; then file $$b; fi; \
	done

clean:
	rm -rf $(DIR) bin

BENCHSTAT := golang.org/x/perf/cmd/benchstat@v0.0.0-20260908200009-22c9c6c9d4da
COUNT     ?= 6
BENCH     ?= .

## bench: benchmarks side by side with mattn (see bench_test.go), then benchstat and the README table
bench:
	$(GO) test -tags $(TAGS) -run '^$$' -bench '$(BENCH)' -count $(COUNT) -timeout 60m . | tee bench.txt
	$(GO) run $(BENCHSTAT) -col /impl bench.txt
	$(GO) run $(BENCHSTAT) -col /impl -format csv bench.txt 2>/dev/null | $(GO) run ./internal/benchtable

FUZZTIME ?= 20s

# torture_run CMD: run CMD; on failure set rc=1 and go on.
torture_run = echo "$(1)"; $(1) || rc=1;

## torture: the long torture suite (torture/, -torture.long) under -race, then every fuzz target
## for $(FUZZTIME); runs them all and fails at the end if any failed
torture:
	@rc=0; \
	$(call torture_run,$(GO) test -race -tags $(TAGS) -run . -v -count=1 -timeout 60m ./torture/ -torture.long) \
	$(call torture_run,$(GO) test -tags $(TAGS) -run '^$$' -fuzz '^FuzzTenantPath$$' -fuzztime $(FUZZTIME) .) \
	$(call torture_run,$(GO) test -tags $(TAGS) -run '^$$' -fuzz '^FuzzFormatDSN$$' -fuzztime $(FUZZTIME) .) \
	$(call torture_run,$(GO) test -tags $(TAGS) -run '^$$' -fuzz '^FuzzMigrationFileNames$$' -fuzztime $(FUZZTIME) .) \
	$(call torture_run,$(GO) test -tags $(TAGS) -run '^$$' -fuzz '^FuzzScan$$' -fuzztime $(FUZZTIME) ./internal/sqlscan) \
	exit $$rc
