#!/bin/sh
# `make run`: the newcomer's one command on a fresh Debian 12.
#   1. checks the dependencies (installs them with apt-get when run as root)
#   2. builds ./tollgate
#   3. starts a private PostgreSQL under ./var with the schema and demo data
#   4. starts tollgate in the foreground with var/tollgate.yaml
# Ctrl-C stops tollgate and the private PostgreSQL.
set -eu

top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
var="$top/var"
pgport=${TOLLGATE_PGPORT:-55432}
debs="build-essential pkg-config libevent-dev libosip2-dev libyaml-dev libpq-dev postgresql sip-tester"

need_install=0
for pc in libevent libosip2 yaml-0.1 libpq; do
	pkg-config --exists "$pc" 2>/dev/null || need_install=1
done
command -v sipp >/dev/null 2>&1 || need_install=1
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_install=1
if [ "$need_install" = 1 ]; then
	if [ "$(id -u)" = 0 ]; then
		echo "run: installing dependencies: $debs"
		apt-get update -qq
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $debs
	else
		echo "run: missing dependencies; as root run:" >&2
		echo "  apt-get update && apt-get install -y $debs" >&2
		exit 1
	fi
fi

make -s

pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
mkdir -p "$var"
pgdir="$var/pg"
as_pg=""
if [ "$(id -u)" = 0 ]; then
	# initdb refuses root: the cluster belongs to the postgres user
	as_pg="runuser -u postgres --"
	if ! runuser -u postgres -- test -x "$var"; then
		# postgres cannot reach ./var (a home directory of mode 700): keep the data
		# in a directory it can reach and point ./var/pg at it
		real=/var/tmp/tollgate-run-$(echo "$top" | cksum | cut -d' ' -f1)
		mkdir -p "$real"
		[ -L "$pgdir" ] || ln -sfn "$real" "$pgdir"
		pgdir="$real"
	fi
	mkdir -p "$pgdir"
	chown postgres "$pgdir"
fi

if [ ! -f "$pgdir/data/PG_VERSION" ]; then
	echo "run: creating a private PostgreSQL cluster in $pgdir/data"
	$as_pg "$pgbin/initdb" -D "$pgdir/data" -A trust -U tollgate >/dev/null
fi
if ! $as_pg "$pgbin/pg_ctl" -D "$pgdir/data" status >/dev/null 2>&1; then
	$as_pg "$pgbin/pg_ctl" -D "$pgdir/data" -l "$pgdir/postgresql.log" -w \
		-o "-p $pgport -k $pgdir -c listen_addresses=''" start >/dev/null
fi
stop_pg() {
	$as_pg "$pgbin/pg_ctl" -D "$pgdir/data" -m fast stop >/dev/null 2>&1 || true
}
trap stop_pg EXIT INT TERM

psql="psql -X -q -h $pgdir -p $pgport -U tollgate"
$psql -d postgres -tAc "select 1 from pg_database where datname='tollgate'" | grep -q 1 ||
	$psql -d postgres -c "create database tollgate"
$psql -d tollgate -v ON_ERROR_STOP=1 -f sql/install.sql >/dev/null
$psql -d tollgate -v ON_ERROR_STOP=1 -f sql/demo.sql >/dev/null

cat >"$var/tollgate.yaml" <<YAML
# written by make run; see etc/tollgate.yaml for every key
listen: ["127.0.0.1:5060"]
workers: 2
downstream: "127.0.0.10:5080"
database: "host=$pgdir port=$pgport user=tollgate dbname=tollgate"
log: { level: info, file: "-" }
metrics: "127.0.0.1:9090"
reject: reply
snapshot_file: "$var/snapshot.bin"
# MD5 offered first: the sipp of Debian 12 answers only the first challenge, in MD5
digest: { realm: "tollgate", algorithms: [MD5, SHA-256] }
YAML

cat <<MSG

tollgate is starting on 127.0.0.1:5060 (metrics: http://127.0.0.1:9090/metrics).
Demo data: account "demo" may call from 127.0.0.20; 127.0.0.40 belongs to an inactive account.

Place a test call, in two other terminals:
  sipp -sf t/sip/uas.xml -i 127.0.0.10 -p 5080 -set expected_account demo -m 1
  sipp -sf t/sip/uac.xml -i 127.0.0.20 -s 1000 127.0.0.1:5060 -m 1
and from an address no rule covers (challenged with 407: it has no password):
  sipp -sf t/sip/uac.xml -i 127.0.0.2 -s 1000 127.0.0.1:5060 -m 1
SIP digest user "alice" (password alice-secret, account demo), from any address:
  sipp -sf t/sip/uas_auth.xml -i 127.0.0.10 -p 5080 -set expected_account demo -set expected_user alice -m 1
  sipp -sf t/sip/uac_auth.xml -i 127.0.0.3 -s 1000 -au alice -ap alice-secret 127.0.0.1:5060 -m 1
Provision with SQL:  $psql -d tollgate
Changes apply live; SIGHUP (kill -HUP on the master) re-reads the config.
Ctrl-C stops tollgate and this private PostgreSQL.

MSG
./tollgate -c "$var/tollgate.yaml" || true
