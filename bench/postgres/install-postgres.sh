#!/usr/bin/env bash
# Makes sure PostgreSQL's server binaries (initdb, postgres) are on this
# machine: if neither PATH nor /usr/lib/postgresql/*/bin has initdb, installs
# Debian's postgresql package with apt-get (needs root), without the "main"
# cluster and service that the package would otherwise create and start: the
# benchmarks start throwaway clusters of their own. Prints the initdb found.
# Used by `make bench-postgres`, `make postgres` and the tests themselves.
set -euo pipefail

find_initdb() {
	local d
	for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
		if [ -x "$d/initdb" ]; then echo "$d/initdb"; return 0; fi
	done
	command -v initdb 2>/dev/null
}

if initdb=$(find_initdb); then
	echo "postgresql: $initdb ($("$(dirname "$(readlink -f "$initdb")")/postgres" --version))"
	exit 0
fi

echo "postgresql: initdb not found; installing Debian's postgresql package with apt-get"
if [ "$(id -u)" -ne 0 ]; then
	echo "postgresql: apt-get needs root; install the postgresql package and run again" >&2
	exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# postgresql-common first, told not to create (and start) a cluster of its own.
apt-get install -y -qq postgresql-common >/dev/null
sed -ri 's/^#?\s*create_main_cluster\s*=.*/create_main_cluster = false/' /etc/postgresql-common/createcluster.conf
apt-get install -y -qq postgresql >/dev/null
initdb=$(find_initdb) || { echo "postgresql: installed, but no initdb found" >&2; exit 1; }
echo "postgresql: installed; $initdb ($("$(dirname "$(readlink -f "$initdb")")/postgres" --version))"
