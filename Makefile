# sqliteproxy: every target works on a fresh machine with Go and gcc.
GO      ?= go
TAGS    := sqlite_omit_load_extension
ADDR    ?= :8080
DIR     ?= ./data
export CGO_ENABLED := 1

.PHONY: run test check vet unit compat build clean bench

## run: start the example multi-tenant service on $(DIR) (default ./data)
run:
	@echo 'sqliteproxy example: listening on $(ADDR), tenant files in $(DIR). Try:'
	@echo "  curl -s -X POST -H 'X-Tenant-ID: acme' -d '{\"type\":\"signup\",\"payload\":\"alice\"}' localhost$(ADDR)/events"
	@echo "  curl -s -H 'X-Tenant-ID: acme' localhost$(ADDR)/events"
	$(GO) run -tags $(TAGS) ./examples/events -addr $(ADDR) -dir $(DIR)

## test: everything CI runs: formatting, go mod tidy, vet, race-enabled tests
test: check vet unit compat

check:
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) mod tidy -diff
	cd compat && $(GO) mod tidy -diff

vet:
	$(GO) vet -tags $(TAGS) ./...

unit:
	$(GO) test -race -tags $(TAGS) -timeout 20m ./...

## compat: sqliteproxy under sqlx, GORM, ent, bun and sqlc (the nested module compat/)
compat:
	cd compat && $(GO) vet -tags $(TAGS) ./... && $(GO) test -race -tags $(TAGS) ./...

build:
	$(GO) build -tags $(TAGS) ./...

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
