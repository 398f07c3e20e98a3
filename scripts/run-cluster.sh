#!/usr/bin/env bash
# Three examples/events nodes of one cluster on this machine: an etcd for
# the leases, a Litestream process per node, every tenant streamed to a
# file replica. Ctrl-C stops everything. Used by `make run-cluster`.
#
#   scripts/run-cluster.sh [DATA_DIR] [REPLICA_URL]
set -euo pipefail
cd "$(dirname "$0")/.."
data=$(realpath -m "${1:-./cluster-data}")
replica=${2:-file://$data/replica}
etcd_port=${ETCD_PORT:-23790}
tags=sqlite_omit_load_extension
mkdir -p bin "$data"

echo "building etcd, litestream, events and sqliteproxy into bin/ ..."
(cd replication && go build -o ../bin/etcd go.etcd.io/etcd/server/v3)
(cd replication && go build -o ../bin/litestream github.com/benbjohnson/litestream/cmd/litestream)
(cd examples && go build -tags $tags -o ../bin/events ./events)
(cd cmd/sqliteproxy && go build -tags $tags -o ../../bin/sqliteproxy .)

etcd_pid=
pids=()
cleanup() {
	# Nodes first (each releases its tenants in etcd), etcd last.
	trap - INT TERM EXIT
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	if [ -n "$etcd_pid" ]; then kill "$etcd_pid" 2>/dev/null || true; wait "$etcd_pid" 2>/dev/null || true; fi
}
trap cleanup INT TERM EXIT

etcd_url=http://127.0.0.1:$etcd_port
bin/etcd --name sqliteproxy --data-dir "$data/etcd" \
	--listen-client-urls "$etcd_url" --advertise-client-urls "$etcd_url" \
	--listen-peer-urls http://127.0.0.1:$((etcd_port + 10)) --initial-advertise-peer-urls http://127.0.0.1:$((etcd_port + 10)) \
	--initial-cluster sqliteproxy=http://127.0.0.1:$((etcd_port + 10)) --log-level error >"$data/etcd.log" 2>&1 &
etcd_pid=$!
for _ in $(seq 100); do
	bin/sqliteproxy nodes -etcd "$etcd_url" >/dev/null 2>&1 && break
	sleep 0.1
done

for n in 1 2 3; do
	port=$((8080 + n))
	sock=$data/n$n/litestream.sock
	mkdir -p "$data/n$n/data"
	printf 'socket:\n  enabled: true\n  path: %s\n  permissions: 0600\n' "$sock" >"$data/n$n/litestream.yml"
	env -u AWS_CA_BUNDLE bin/litestream replicate -config "$data/n$n/litestream.yml" -exec \
		"bin/events -addr 127.0.0.1:$port -dir $data/n$n/data -replica $replica -litestream-socket $sock -litestream bin/litestream -etcd $etcd_url -node n$n -advertise http://127.0.0.1:$port -ttl 5s" \
		>"$data/n$n/node.log" 2>&1 &
	pids+=($!)
done

cat <<MSG
three nodes: n1 on 127.0.0.1:8081, n2 on :8082, n3 on :8083 (logs in $data/n*/node.log)
  curl -s -X POST -H 'X-Tenant-ID: acme' -d '{"Name":"signup"}' localhost:8081/events   # n1 takes acme
  curl -s -H 'X-Tenant-ID: acme' localhost:8083/events                                   # forwarded to n1
  bin/sqliteproxy owners -etcd $etcd_url
  bin/sqliteproxy move -etcd $etcd_url -to n2 acme                                       # graceful hand-over
Ctrl-C stops everything.
MSG
wait "${pids[@]}"
