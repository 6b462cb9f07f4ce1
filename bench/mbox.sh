#!/usr/bin/env bash
# mbox spools, mailbag against Dovecot serving the same files: the first
# and warm login to the end of UIDL of a 100,000-message spool, and RETR
# throughput of 20 KiB and 5 MiB messages with 4 readers.
#
# Usage (as root, after `cargo build --release -p mailbag -p mailbag-bench`):
#   bench/mbox.sh [OUT_DIR]
# Environment:
#   QUICK=1        5,000 messages and 2-second runs, to check the script
#   DURATION=6     seconds per RETR run
#   MAILBAG=..., BENCH=...  the binaries (default target/release/...)
#   PORT_BASE=21210  mailbag on PORT_BASE, Dovecot on PORT_BASE + 1
#
# Both servers run as the `mail` user over spools owned by it. Dovecot is
# in its high-performance mode (as bench/compare.sh's "dovecot-tuned")
# with its indexes in a directory of its own, `mbox:<dir>:INBOX=<spool>`.
# Every server is started here and stopped by its PID on exit.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-/tmp/mailbag-mbox-bench-$(date -u +%Y%m%dT%H%M%SZ)}
MAILBAG=${MAILBAG:-$here/target/release/mailbag}
BENCH=${BENCH:-$here/target/release/mailbag-bench}
PORT_BASE=${PORT_BASE:-21210}
if [ "${QUICK:-0}" = 1 ]; then
    DURATION=${DURATION:-2} huge=5000 n20k=50 n5m=4
else
    DURATION=${DURATION:-6} huge=100000 n20k=1000 n5m=50
fi
[ "$(id -u)" = 0 ] || { echo "run as root (both servers drop to the mail user)" >&2; exit 1; }
command -v dovecot >/dev/null || { echo "apt-get install -y dovecot-pop3d" >&2; exit 1; }

mkdir -p "$out"
data=$(mktemp -d /tmp/mailbag-mbox-bench.XXXXXX)
chmod 755 "$data"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [ "${KEEP_DATA:-0}" = 1 ] || rm -rf "$data"
}
trap cleanup EXIT
wait_port() {
    for _ in $(seq 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on $1" >&2
    exit 1
}

passwd=$data/passwd
mkdir -p "$data/spools" "$data/dovecot-mail"
gen() { "$BENCH" gen --mbox --root "$data/spools" --passwd "$passwd" "$@" >/dev/null; }
gen --prefix huge --users 1 --messages "$huge" --size 600
gen --prefix r20k- --users 4 --messages "$n20k" --size $((20 * 1024))
gen --prefix r5m- --users 4 --messages "$n5m" --size $((5 * 1024 * 1024))
chown -R mail:mail "$data/spools" "$data/dovecot-mail"
chmod 2775 "$data/spools"
chmod 644 "$passwd"

cat > "$data/mailbag.toml" <<EOF
[server]
user = "mail"
group = "mail"
[pop3]
listen = ["127.0.0.1:$PORT_BASE"]
[store]
kind = "mbox"
[store.mbox]
path = "$data/spools/%u"
[auth]
passwd_file = "$passwd"
allow_plaintext = true
max_failures_per_address = 20000
EOF
"$MAILBAG" serve --config "$data/mailbag.toml" 2>>"$out/mailbag.log" &
pids+=("$!")
mailbag_pid=$!

dir=$data/dovecot
mkdir -p "$dir/run" "$dir/state"
cat > "$dir/dovecot.conf" <<EOF
protocols = pop3
listen = 127.0.0.1
base_dir = $dir/run
state_dir = $dir/state
log_path = $out/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
mail_location = mbox:$data/dovecot-mail/%u:INBOX=$data/spools/%u
mbox_write_locks = dotlock fcntl
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
  args = uid=mail gid=mail home=$data/dovecot-mail/%u
}
protocol pop3 {
  mail_max_userip_connections = 1000
}
service pop3-login {
  inet_listener pop3 {
    address = 127.0.0.1
    port = $((PORT_BASE + 1))
  }
  inet_listener pop3s {
    port = 0
  }
  service_count = 0
  process_min_avail = $(nproc)
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
wait_port "$PORT_BASE"
wait_port $((PORT_BASE + 1))

{
    echo "# mbox: mailbag $("$MAILBAG" --version | head -1) against $(dovecot --version)"
    echo "# $(nproc) CPUs, $(uname -r), $(date -u +%FT%TZ)"
} | tee "$out/report.txt"
for s in "mailbag $PORT_BASE $mailbag_pid" "dovecot $((PORT_BASE + 1)) $dovecot_pid"; do
    set -- $s
    echo "## $1: PASS to the end of UIDL, $huge messages (first login, then warm)" | tee -a "$out/report.txt"
    "$BENCH" maildrop --addr "127.0.0.1:$2" --label "$1" --user huge1 --repeat 6 | tee -a "$out/report.txt"
done
for size in 20k 5m; do
    for s in "mailbag $PORT_BASE $mailbag_pid" "dovecot $((PORT_BASE + 1)) $dovecot_pid"; do
        set -- $s
        # The first pass lets Dovecot index the spools; the second is measured.
        for pass in warm measured; do
            line=$("$BENCH" retr --name "retr-$size" --addr "127.0.0.1:$2" --server-pid "$3" \
                --label "$1" --concurrency 4 --duration "$DURATION" \
                --user "r$size-1" --user "r$size-2" --user "r$size-3" --user "r$size-4")
            [ $pass = measured ] && echo "## $1 RETR $size: $line" | tee -a "$out/report.txt"
        done
    done
done
echo "report: $out/report.txt"
