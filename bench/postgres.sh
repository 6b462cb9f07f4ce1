#!/usr/bin/env bash
# One mailbag node on PostgreSQL beside mailbag on Maildir and Dovecot in
# its high-performance mode, the same loads against each: login cycles
# at 64 concurrent, RETR MB/s of 20 KiB and 5 MiB messages (4 readers),
# LMTP deliveries/s (8 clients, 10 KiB), and the first and warm PASS to
# the end of UIDL of a 100,000-message maildrop.
#
# Usage (as root, after `cargo build --release -p mailbag -p mailbag-bench`;
# Dovecot's LMTP needs `apt-get install dovecot-lmtpd`):
#   bench/postgres.sh [OUT_DIR]
# Environment:
#   QUICK=1          small data and 2-second runs, to check the script
#   DURATION=6       seconds per throughput run
#   MAILBAG=..., BENCH=...  the binaries (default target/release/...)
#   PORT_BASE=21410  POP3: mailbag-maildir +0, mailbag-pg +1, dovecot +2;
#                    LMTP +10, +11, +12; PostgreSQL +20
#   PG_SHARED_BUFFERS=1GB
#   PG_SOCKET=1      mailbag reaches PostgreSQL over its Unix socket, not TCP
#   LOADS="maildrop login retr lmtp"  the loads to run (all by default)
#   SERVERS="mailbag-maildir mailbag-pg dovecot-tuned"  the servers loaded
#   RETR_SIZES="20k 5m"  the RETR loads, in order (repeat one to alternate)
#   MAILBAG_B=...    a second mailbag binary, served as `mailbag-pg-b` from
#                    a database of its own (migrated and imported by that
#                    binary), for A/B runs of two builds: POP3 port +3,
#                    LMTP +13; every load then alternates the PostgreSQL nodes
#
# PostgreSQL runs with fsync and synchronous_commit on (a 250 to LMTP is a
# flushed commit), on the same machine and disk as everything else. The
# mail is made by `mailbag-bench gen` as Maildirs and copied into
# PostgreSQL with `mailbag import`, so every server holds the same
# messages. Every server is started here and stopped on exit.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-/tmp/mailbag-pg-bench-$(date -u +%Y%m%dT%H%M%SZ)}
MAILBAG=${MAILBAG:-$here/target/release/mailbag}
BENCH=${BENCH:-$here/target/release/mailbag-bench}
P=${PORT_BASE:-21410}
if [ "${QUICK:-0}" = 1 ]; then
    DURATION=${DURATION:-2} users=200 n20k=50 n5m=4 huge=2000
else
    DURATION=${DURATION:-6} users=2000 n20k=1000 n5m=50 huge=100000
fi
[ "$(id -u)" = 0 ] || { echo "run as root (the servers drop to the mail user)" >&2; exit 1; }
pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
[ -x "$pgbin/initdb" ] || { echo "apt-get install -y postgresql" >&2; exit 1; }

mkdir -p "$out"
out=$(cd "$out" && pwd)
data=$(mktemp -d /tmp/mailbag-pg-bench.XXXXXX)
chmod 755 "$data"
pids=()
pgdata=$data/pg
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    cp "$pgdata/postgresql.log" "$out/" 2>/dev/null || true
    [ -d "$pgdata" ] && runuser -u postgres -- "$pgbin/pg_ctl" -D "$pgdata" -m fast stop >/dev/null 2>&1 || true
    [ "${KEEP_DATA:-0}" = 1 ] || rm -rf "$data"
}
trap cleanup EXIT
log() { echo "== $*" | tee -a "$out/report.txt"; }
wait_port() {
    for _ in $(seq 300); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on $1" >&2
    exit 1
}

LOADS=" ${LOADS:-maildrop login retr lmtp} "
wants() { [[ $LOADS == *" $1 "* ]]; }
SERVERS=" ${SERVERS:-mailbag-maildir mailbag-pg dovecot-tuned} "

# ---- mail, as Maildirs (only what the loads asked for use)
passwd=$data/passwd
gen() { "$BENCH" gen --root "$data/mail" --passwd "$passwd" "$@" >/dev/null; }
gen --prefix u --users "$users" --messages 5 --size 2048
if wants retr; then
    gen --prefix r20k- --users 4 --messages "$n20k" --size $((20 * 1024))
    gen --prefix r5m- --users 4 --messages "$n5m" --size $((5 * 1024 * 1024))
fi
gen --prefix lm --users 100 --messages 0
if wants maildrop; then
    for who in maildir pg ${MAILBAG_B:+pg-b} dovecot-tuned; do
        gen --prefix "huge-$who" --users 1 --messages "$huge" --size 600
    done
fi
chown -R mail:mail "$data/mail"
chmod 644 "$passwd"

# ---- PostgreSQL
mkdir -p "$pgdata"
chown postgres: "$pgdata"
runuser -u postgres -- "$pgbin/initdb" -D "$pgdata" -A trust -U postgres >/dev/null
mkdir -p "$data/pgsock"
chmod 1777 "$data/pgsock"
cat >> "$pgdata/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $((P + 20))
unix_socket_directories = '$data/pgsock'
shared_buffers = ${PG_SHARED_BUFFERS:-1GB}
max_connections = 100
fsync = on
synchronous_commit = on
EOF
runuser -u postgres -- "$pgbin/pg_ctl" -D "$pgdata" -l "$pgdata/postgresql.log" -w start >/dev/null
runuser -u postgres -- "$pgbin/psql" -qh 127.0.0.1 -p $((P + 20)) -c "CREATE DATABASE mailbag" >/dev/null
if [ "${PG_SOCKET:-0}" = 1 ]; then
    url="postgresql://postgres@${data//\//%2F}%2Fpgsock:$((P + 20))/mailbag"
else
    url="postgresql://postgres@127.0.0.1:$((P + 20))/mailbag"
fi

common() { # pop3 port, lmtp port
    cat <<EOF
[server]
user = "mail"
group = "mail"
[pop3]
listen = ["127.0.0.1:$1"]
[lmtp]
listen = ["127.0.0.1:$2"]
[auth]
allow_plaintext = true
failure_delay_ms = 2000
max_failures_per_address = 20000
[limits]
max_connections = 20000
max_connections_per_address = 20000
max_unauthenticated = 20000
EOF
}
{ common "$P" $((P + 10)); printf '[store]\nroot = "%s"\n' "$data/mail"; } > "$data/maildir.toml"
sed -i "s|^\[auth\]|[auth]\npasswd_file = \"$passwd\"|" "$data/maildir.toml"
load_pg() { # binary, name, database, POP3 port, LMTP port
    local bin=$1 who=$2 db=$3 cfg=$data/$2.toml started
    [ "$db" = mailbag ] ||
        runuser -u postgres -- "$pgbin/psql" -qh 127.0.0.1 -p $((P + 20)) -c "CREATE DATABASE $db" >/dev/null
    { common "$4" "$5"; printf '[store]\nkind = "postgres"\nurl = "%s"\n' "${url%/*}/$db"; } > "$cfg"
    "$bin" migrate --config "$cfg" >/dev/null
    # Everyone's password, as in the passwd-file.
    runuser -u postgres -- "$pgbin/psql" -qh 127.0.0.1 -p $((P + 20)) -d "$db" \
        -c "INSERT INTO users SELECT split_part(l, ':', 1), split_part(l, ':', 2)
            FROM regexp_split_to_table(pg_read_file('$passwd'), E'\n') l WHERE l <> ''" >/dev/null
    log "copying the Maildirs into PostgreSQL ($db)"
    started=$(date +%s)
    for md in "$data"/mail/localhost/*/Maildir; do
        user=$(basename "$(dirname "$md")")
        case $user in huge-maildir1 | huge-dovecot-tuned1 | lm*) continue ;; esac
        case $user in huge-pg1 | huge-pg-b1) [ "$user" = "huge-${who}1" ] || continue ;; esac
        [ "$(ls -A "$md/new" "$md/cur" 2>/dev/null | wc -l)" -gt 0 ] || continue
        echo "$user $md"
    done | xargs -P 4 -n 2 sh -c '"$0" import --config "$1" --user "$2" --from "maildir:$3" >/dev/null' \
        "$bin" "$cfg"
    log "copied in $(($(date +%s) - started)) s"
    runuser -u postgres -- "$pgbin/psql" -qh 127.0.0.1 -p $((P + 20)) -d "$db" -c "VACUUM ANALYZE" >/dev/null
}
load_pg "$MAILBAG" pg mailbag $((P + 1)) $((P + 11))
[ -z "${MAILBAG_B:-}" ] || load_pg "$MAILBAG_B" pg-b mailbag_b $((P + 3)) $((P + 13))

"$MAILBAG" serve --config "$data/maildir.toml" 2>>"$out/mailbag-maildir.log" &
pids+=("$!")
maildir_pid=$!
"$MAILBAG" serve --config "$data/pg.toml" 2>>"$out/mailbag-pg.log" &
pids+=("$!")
pg_pid=$!
if [ -n "${MAILBAG_B:-}" ]; then
    "$MAILBAG_B" serve --config "$data/pg-b.toml" 2>>"$out/mailbag-pg-b.log" &
    pids+=("$!")
    pg_b_pid=$!
fi

dir=$data/dovecot
mkdir -p "$dir/run" "$dir/state"
cat > "$dir/dovecot.conf" <<EOF
protocols = pop3 lmtp
listen = 127.0.0.1
base_dir = $dir/run
state_dir = $dir/state
log_path = $out/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
mail_location = maildir:~/Maildir
first_valid_uid = 8
first_valid_gid = 8
default_login_user = dovenull
default_internal_user = dovecot
passdb {
  driver = passwd-file
  args = scheme=PLAIN $passwd
}
userdb {
  driver = static
  args = uid=mail gid=mail home=$data/mail/localhost/%u allow_all_users=yes
}
protocol pop3 {
  mail_max_userip_connections = 1000
}
protocol lmtp {
  lmtp_save_to_detail_mailbox = no
}
service lmtp {
  inet_listener lmtp {
    address = 127.0.0.1
    port = $((P + 12))
  }
}
service pop3-login {
  inet_listener pop3 {
    address = 127.0.0.1
    port = $((P + 2))
  }
  inet_listener pop3s {
    port = 0
  }
  service_count = 0
  process_min_avail = $(nproc)
  client_limit = 2000
}
service pop3 {
  service_count = 100
  process_min_avail = $(nproc)
}
pop3_no_flag_updates = yes
EOF
dovecot -F -c "$dir/dovecot.conf" &
pids+=("$!")
dovecot_pid=$!
for port in "$P" $((P + 1)) $((P + 2)) $((P + 10)) $((P + 11)) $((P + 12)); do wait_port "$port"; done
[ -z "${MAILBAG_B:-}" ] || { wait_port $((P + 3)); wait_port $((P + 13)); }

servers=()
for s in "mailbag-maildir $P $maildir_pid" "mailbag-pg $((P + 1)) $pg_pid" \
    "mailbag-pg-b $((P + 3)) ${pg_b_pid:-}" "dovecot-tuned $((P + 2)) $dovecot_pid"; do
    set -- $s
    if [ "$1" = mailbag-pg-b ]; then
        [ -n "${MAILBAG_B:-}" ] || continue
    else
        [[ $SERVERS == *" $1 "* ]] || continue
    fi
    servers+=("$s")
done
{
    echo "# mailbag $("$MAILBAG" --version | head -1), PostgreSQL $("$pgbin/postgres" --version | awk '{print $3}'), Dovecot $(dovecot --version)"
    echo "# $(nproc) CPUs, $(uname -r), $(date -u +%FT%TZ), load $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee -a "$out/report.txt"
pick() { grep -E "^($1) " | awk '{printf "%s=%s ", $1, $2}'; }

# Warm-up: one login per user (Dovecot builds its indexes).
for s in "${servers[@]}"; do
    set -- $s
    "$BENCH" login --addr "127.0.0.1:$2" --users "$users" --concurrency 16 \
        --duration 600 --max-cycles "$users" >/dev/null
done
wants maildrop && for s in "${servers[@]}"; do
    set -- $s
    log "$1: 100,000-message maildrop, PASS to the end of UIDL (first, then warm)"
    "$BENCH" maildrop --addr "127.0.0.1:$2" --label "$1" --user "huge-${1#mailbag-}1" --repeat 6 \
        | pick "first_ms|warm_median_ms|warm_min_ms|loadavg_1m" | tee -a "$out/report.txt"
    echo | tee -a "$out/report.txt"
done
wants login && for round in 1 2; do
    for s in "${servers[@]}"; do
        set -- $s
        log "$1: login cycles, 64 concurrent (round $round)"
        "$BENCH" login --addr "127.0.0.1:$2" --server-pid "$3" --label "$1" --users "$users" \
            --concurrency 64 --duration "$DURATION" \
            | pick "cycles_per_s|cycle_p99_ms|errors|server_cpu_cores|loadavg_1m" | tee -a "$out/report.txt"
        echo | tee -a "$out/report.txt"
    done
done
wants retr && for size in ${RETR_SIZES:-20k 5m}; do
    for s in "${servers[@]}"; do
        set -- $s
        log "$1: RETR $size, 4 readers"
        "$BENCH" retr --addr "127.0.0.1:$2" --server-pid "$3" --label "$1" --concurrency 4 \
            --duration "$DURATION" --user "r$size-1" --user "r$size-2" --user "r$size-3" --user "r$size-4" \
            | pick "mb_per_s|retr_p99_ms|server_cpu_cores|loadavg_1m" | tee -a "$out/report.txt"
        echo | tee -a "$out/report.txt"
    done
done
wants lmtp && for s in "${servers[@]}"; do
    set -- $s
    log "$1: LMTP deliveries of 10 KiB, 8 clients"
    "$BENCH" lmtp --addr "127.0.0.1:$(($2 + 10))" --server-pid "$3" --label "$1" --prefix lm \
        --users 100 --concurrency 8 --duration "$DURATION" \
        | pick "deliveries_per_s|delivery_p99_ms|errors|server_cpu_cores|loadavg_1m" | tee -a "$out/report.txt"
    echo | tee -a "$out/report.txt"
done
echo "report: $out/report.txt"
