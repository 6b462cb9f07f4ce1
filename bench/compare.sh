#!/usr/bin/env bash
# Compare mailbag with Dovecot (issue 6): generate the mailboxes, start
# mailbag and two Dovecot instances (its default login mode and its
# high-performance mode) on loopback ports over the same Maildirs and the
# same {PLAIN} passwd-file, run every load against each server in turn,
# measure the raw loopback limit for RETR, and write results.jsonl, a
# Markdown table with ratios (report.md) and an SVG chart (chart.svg).
#
# Usage (as root, after `cargo build --release -p mailbag -p mailbag-bench`):
#   bench/compare.sh [OUT_DIR]
# Environment:
#   QUICK=1        small data and short runs, to check that everything works
#   DURATION=10    seconds per throughput run
#   KEEP_DATA=1    keep the generated mail (in a temp dir under /tmp)
#   MAILBAG=...    the server binary (default target/release/mailbag)
#   BENCH=...      the load generator (default target/release/mailbag-bench)
#   PORT_BASE=21110  mailbag on PORT_BASE, Dovecot on +1 and +2
#   SCHEME=PLAIN   the passwd-file scheme for everyone's password: PLAIN,
#                  or a scheme `doveadm pw` knows (SHA512-CRYPT, ...), the
#                  same hash given to both servers
#   LOADS="login retr maildrop rss idle idle-max"  the loads to run
#   IDLE_SESSIONS=2000, IDLE_MAX=19000  sessions for idle and idle-max
#   MAX_SERVER_RSS_MIB=4096  a load stops early if a server's anonymous RSS passes
#                  this (protects a shared machine; the result says so)
#
# Every server is started by this script and stopped by its PID on exit.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-/tmp/mailbag-bench-$(date -u +%Y%m%dT%H%M%SZ)}
MAILBAG=${MAILBAG:-$here/target/release/mailbag}
BENCH=${BENCH:-$here/target/release/mailbag-bench}
PORT_BASE=${PORT_BASE:-21110}
QUICK=${QUICK:-0}
SCHEME=${SCHEME:-PLAIN}
LOADS=" ${LOADS:-login retr maildrop rss idle idle-max} "
wants() { [[ $LOADS == *" $1 "* ]]; }

if [ "$QUICK" = 1 ]; then
    DURATION=${DURATION:-2}
    login_users=200 idle_sessions=100 idle_max=300 ramp_limit=10
    msgs_20k=50 msgs_5m=4 huge_msgs=5000 jumbo_octets=$((10 * 1024 * 1024))
else
    DURATION=${DURATION:-10}
    login_users=5000 idle_sessions=2000 idle_max=19000 ramp_limit=120
    msgs_20k=1000 msgs_5m=50 huge_msgs=100000 jumbo_octets=$((100 * 1024 * 1024))
fi

idle_sessions=${IDLE_SESSIONS:-$idle_sessions}
idle_max=${IDLE_MAX:-$idle_max}
login_users=$((login_users > idle_sessions ? login_users : idle_sessions))

for bin in "$MAILBAG" "$BENCH"; do
    [ -x "$bin" ] || {
        echo "missing $bin: run cargo build --release -p mailbag -p mailbag-bench" >&2
        exit 1
    }
done
command -v dovecot >/dev/null || {
    echo "dovecot is not installed: apt-get install -y dovecot-pop3d" >&2
    exit 1
}
[ "$(id -u)" = 0 ] || { echo "run as root (Dovecot drops to the mail user)" >&2; exit 1; }

mkdir -p "$out"
out=$(cd "$out" && pwd)
# The mail, configs and sockets live in a temp dir that the mail user can
# reach (Dovecot reads the Maildirs as that user).
data=$(mktemp -d /tmp/mailbag-bench-data.XXXXXX)
mkdir -p "$data/mail"
chmod 755 "$data"
results=$out/results.jsonl
: > "$results"
pids=()

stop_all() {
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [ "${KEEP_DATA:-0}" != 1 ]; then
        rm -rf "$data"
    fi
}
trap stop_all EXIT

log() { printf '\n== %s (%s)\n' "$*" "$(uptime | sed 's/.*load/load/')"; }

# ---- the machine -------------------------------------------------------
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //') x $(nproc)"
    echo "memory: $(free -m | awk '/Mem:/ {print $2 " MiB"}')"
    echo "kernel: $(uname -r)"
    echo "dovecot: $(dovecot --version)"
    # The last commit that changed the server, not the benchmark.
    echo "mailbag: $(git -C "$here" log -1 --format=%h -- src proto 2>/dev/null || echo unknown)"
    echo "fd limit: $(ulimit -n)"
    echo "uptime at start: $(uptime)"
} > "$out/machine.txt"
cat "$out/machine.txt"

# ---- mailboxes ---------------------------------------------------------
log "generating mailboxes in $data"
passwd=$data/passwd
if [ "$SCHEME" = PLAIN ]; then
    stored="{PLAIN}pw"
else
    # One hash of the same password for everyone: both servers pay the
    # same verification per login.
    stored=$(doveadm pw -s "$SCHEME" -p pw)
fi
echo "passwords: $SCHEME" >> "$out/machine.txt"
gen() { "$BENCH" gen --root "$data/mail" --passwd "$passwd" --stored "$stored" "$@"; }
gen --prefix u --users "$login_users" --messages 5 --size 2048
if [ "$idle_max" -gt "$login_users" ]; then
    gen --prefix u --first $((login_users + 1)) --users $((idle_max - login_users)) --messages 0
fi
gen --prefix r20k- --users 4 --messages "$msgs_20k" --size $((20 * 1024))
gen --prefix r5m- --users 4 --messages "$msgs_5m" --size $((5 * 1024 * 1024))
for who in mailbag dovecot dovecot-tuned; do
    gen --prefix "huge-$who" --users 1 --messages "$huge_msgs" --size 600
done
gen --prefix jumbo --users 1 --messages 1 --size "$jumbo_octets"
chmod 644 "$passwd"
# Both servers serve mail as the mail user: Dovecot drops to it for mail
# access, mailbag becomes it after binding (it never serves mail as root).
chown -R mail:mail "$data/mail"
chmod 755 "$data"

# ---- servers -----------------------------------------------------------
wait_port() { # port
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "nothing listens on port $1" >&2
    return 1
}

cat > "$data/mailbag.toml" <<EOF
[server]
user = "mail"
group = "mail"
[pop3]
listen = ["127.0.0.1:$PORT_BASE"]
[store]
root = "$data/mail"
[auth]
passwd_file = "$passwd"
allow_plaintext = true
failure_delay_ms = 2000
# Logins in flight count against the address's failure room (they wait
# for it past this many); the load is one address.
max_failures_per_address = 20000
[limits]
max_connections = 20000
# All the load comes from one address (loopback); the per-address and
# before-login limits are for hostile clients, not for a benchmark.
max_connections_per_address = 20000
max_unauthenticated = 20000
EOF
# Both servers log at their default level (a line per login). mailbag is
# restarted before the memory loads, so that each starts from a fresh
# process as Dovecot's per-session processes do.
start_mailbag() {
    "$MAILBAG" serve --config "$data/mailbag.toml" 2>> "$out/mailbag.log" &
    mailbag_pid=$!
    pids+=("$mailbag_pid")
    wait_port "$PORT_BASE"
}
restart_mailbag() {
    kill "$mailbag_pid"
    wait "$mailbag_pid" 2>/dev/null || true
    local kept=() pid
    for pid in "${pids[@]}"; do
        [ "$pid" = "$mailbag_pid" ] || kept+=("$pid")
    done
    pids=("${kept[@]}")
    start_mailbag
    servers[0]="mailbag $PORT_BASE $mailbag_pid"
}
start_mailbag

# $1 name, $2 port, $3 "tuned" for the high-performance login mode.
dovecot_conf() {
    local dir=$data/$1
    mkdir -p "$dir/run" "$dir/state"
    cat > "$dir/dovecot.conf" <<EOF
protocols = pop3
listen = 127.0.0.1
base_dir = $dir/run
state_dir = $dir/state
log_path = $out/$1.log
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
  args = uid=mail gid=mail home=$data/mail/localhost/%u
}
# Room for the idle-session load: Dovecot runs one pop3 process per
# session, and every login process holds a connection to auth.
default_process_limit = $((idle_sessions + 200))
default_client_limit = $((idle_sessions + 200))
default_vsz_limit = 1G
service anvil {
  client_limit = $((2 * idle_sessions + 1000))
}
service auth {
  client_limit = $((2 * idle_sessions + 1000))
}
protocol pop3 {
  mail_max_userip_connections = 1000
}
service pop3-login {
  inet_listener pop3 {
    address = 127.0.0.1
    port = $2
  }
  inet_listener pop3s {
    port = 0
  }
EOF
    if [ "$3" = tuned ]; then
        # Dovecot's documented high-performance mode: long-lived login
        # processes (one per core) serving many connections each, mail
        # processes reused across sessions, and no flag writes on RETR.
        cat >> "$dir/dovecot.conf" <<EOF
  service_count = 0
  process_min_avail = $(nproc)
  client_limit = $((idle_sessions + 200))
}
service pop3 {
  process_limit = $((idle_sessions + 200))
  service_count = 100
  process_min_avail = $(nproc)
}
pop3_no_flag_updates = yes
EOF
    else
        cat >> "$dir/dovecot.conf" <<EOF
}
service pop3 {
  process_limit = $((idle_sessions + 200))
}
EOF
    fi
    dovecot -F -c "$dir/dovecot.conf" &
    pids+=("$!")
    eval "${1//-/_}_pid=$!"
}
dovecot_conf dovecot $((PORT_BASE + 1)) default
dovecot_conf dovecot-tuned $((PORT_BASE + 2)) tuned
wait_port "$PORT_BASE"
wait_port $((PORT_BASE + 1))
wait_port $((PORT_BASE + 2))

# name, port, pid of each server, in the order they take turns.
servers=(
    "mailbag $PORT_BASE $mailbag_pid"
    "dovecot $((PORT_BASE + 1)) $dovecot_pid"
    "dovecot-tuned $((PORT_BASE + 2)) $dovecot_tuned_pid"
)

run() { # label port pid subcommand [args...]
    local label=$1 port=$2 pid=$3 sub=$4
    shift 4
    "$BENCH" "$sub" --addr "127.0.0.1:$port" --server-pid "$pid" --label "$label" \
        --json "$results" --max-server-rss-mib "${MAX_SERVER_RSS_MIB:-4096}" "$@"
}

# ---- warm-up: the first login of every user (Dovecot builds its indexes,
# mailbag writes its listing cache; the maildrop load measures first logins)
log "warm-up: one login per user"
for s in "${servers[@]}"; do
    set -- $s
    "$BENCH" login --addr "127.0.0.1:$2" --users "$login_users" --concurrency 16 \
        --duration 600 --max-cycles "$login_users" > /dev/null
    for u in r20k-1 r20k-2 r20k-3 r20k-4 r5m-1 r5m-2 r5m-3 r5m-4 jumbo1; do
        "$BENCH" maildrop --addr "127.0.0.1:$2" --user "$u" --repeat 1 > /dev/null
    done
done

# ---- (a) login cycles --------------------------------------------------
wants login && for s in "${servers[@]}"; do
    set -- $s
    log "login cycles: $1"
    run "$@" login --users "$login_users" --concurrency 64 --duration "$DURATION"
done

# ---- (b) RETR throughput, and the loopback limit -----------------------
wants retr && for size in 20k 5m; do
    case $size in 20k) octets=$((20 * 1024)) ;; 5m) octets=$((5 * 1024 * 1024)) ;; esac
    for s in "${servers[@]}"; do
        set -- $s
        log "RETR $size: $1"
        run "$@" retr --name "retr-$size" --concurrency 4 --duration "$DURATION" \
            --user "r$size-1" --user "r$size-2" --user "r$size-3" --user "r$size-4"
    done
    log "RETR $size: raw loopback sender"
    "$BENCH" raw --name "raw-$size" --json "$results" --size "$octets" --concurrency 4 \
        --duration "$DURATION"
done

# ---- (d) the 100,000-message maildrop: first login ever, then warm ----
wants maildrop && for s in "${servers[@]}"; do
    set -- $s
    log "maildrop of $huge_msgs: $1"
    run "$@" maildrop --user "huge-${1}1" --repeat 6
done

# ---- RSS growth during RETR of a large message -------------------------
wants rss && restart_mailbag
wants rss && for s in "${servers[@]}"; do
    set -- $s
    log "RSS during RETR of $jumbo_octets octets: $1"
    run "$@" rss --user jumbo1
done

# ---- (c) idle sessions: the same count on every server -----------------
wants idle && restart_mailbag
wants idle && for s in "${servers[@]}"; do
    set -- $s
    log "idle sessions ($idle_sessions): $1"
    run "$@" idle --users "$idle_sessions" --ramp-limit "$ramp_limit"
    sleep 3
done

# mailbag alone: as many idle sessions as the fd limit allows (Dovecot's
# process per session makes that many impractical here).
if wants idle-max; then
    restart_mailbag
    log "idle sessions up to the fd limit: mailbag"
    run "mailbag" "$PORT_BASE" "$mailbag_pid" idle --name idle-max --users "$idle_max" \
        --open-concurrency 32 --ramp-limit "$ramp_limit" || true
fi

# ---- report ------------------------------------------------------------
log "report"
echo "uptime at end: $(uptime)" >> "$out/machine.txt"
note="$(date -u +%Y-%m-%d), $(nproc) x $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), Dovecot $(dovecot --version | cut -d' ' -f1), passwords $SCHEME; load average $(cut -d' ' -f1-3 /proc/loadavg) at the end"
"$BENCH" report "$results" --markdown "$out/report.md" --svg "$out/chart.svg" --note "$note"
echo "results in $out"
