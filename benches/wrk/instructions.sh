#!/usr/bin/env bash
# Instructions per request on the pass-through scenario, counted by callgrind, for config variants
# of the same release binary (benches/wrk/variants/<name>.yaml). wrk's requests per second move
# by ±10% from round to round on a shared machine; instruction counts are deterministic to well
# under 1%, so an A/B of a few percent is readable here. They count the gateway's user-space work
# only (not the kernel's), on one worker thread, after a warm-up.
#
#   bash benches/wrk/instructions.sh                       # every variant, plain first
#   bash benches/wrk/instructions.sh plain key-limits      # these variants, ratios to the first
#   MEASURE=20s bash benches/wrk/instructions.sh plain keys
#   KEEP=/tmp/profiles bash benches/wrk/instructions.sh observe-off observe-on   # keep the profiles
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
MEASURE=${MEASURE:-10s}
VARIANTS=("$@")
[ ${#VARIANTS[@]} -gt 0 ] || VARIANTS=(plain $(ls benches/wrk/variants | sed 's/\.yaml$//' | grep -vx plain))
for tool in wrk nginx valgrind callgrind_control; do
  command -v "$tool" >/dev/null || {
    echo "$tool is needed: apt-get install wrk nginx-light valgrind" >&2; exit 1; }
done
cargo build --release --quiet --bin dragoman
WORK=$(mktemp -d /tmp/dragoman-instructions.XXXXXX)
PID=
cleanup() {
  [ -n "$PID" ] && kill -9 "$PID" 2>/dev/null
  [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
UP=18300; GW=18320; ADMIN=18321

. benches/wrk/fixed_upstream.sh
start_fixed_upstream "$WORK" "$UP" 1
write_bench_body "$WORK"

measure() { # variant -> instructions per request
  {
    cat <<YAML
pid_file: $WORK/dragoman.pid
upgrade_sock: $WORK/upgrade.sock
grace_period_seconds: 0
graceful_shutdown_timeout_seconds: 1
threads: 1
listen: 127.0.0.1:$GW
admin_listen: 127.0.0.1:$ADMIN
YAML
    sed -e "s/@UP@/$UP/g" -e "s#@WORK@#$WORK#g" "benches/wrk/variants/$1.yaml"
  } > "$WORK/$1.yaml"
  RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.$1" \
    "$ROOT/target/release/dragoman" -c "$WORK/$1.yaml" 2>"$WORK/$1.log" &
  PID=$!
  until curl -sf "http://127.0.0.1:$ADMIN/healthz" >/dev/null; do
    kill -0 "$PID" 2>/dev/null || { cat "$WORK/$1.log" >&2; exit 1; }
    sleep 0.2
  done
  BODY_FILE="$WORK/body.json" wrk -t1 -c2 -d3s -s benches/wrk/post.lua \
    "http://127.0.0.1:$GW/v1/chat/completions" >/dev/null
  callgrind_control -z "$PID" >/dev/null 2>&1
  local out
  out=$(BODY_FILE="$WORK/body.json" wrk -t1 -c2 -d"$MEASURE" -s benches/wrk/post.lua \
    "http://127.0.0.1:$GW/v1/chat/completions" | grep '^RESULT')
  callgrind_control -d "$PID" >/dev/null 2>&1
  local requests errors file instructions
  requests=$(sed -E 's/.*requests=([0-9]+).*/\1/' <<<"$out")
  errors=$(sed -E 's/.*errors=([0-9]+).*/\1/' <<<"$out")
  [ "$errors" = 0 ] || { echo "$1: $errors errors (non-2xx or socket errors)" >&2; exit 1; }
  file=$(ls -t "$WORK"/callgrind."$1"* | head -1)
  instructions=$(grep -E '^(summary|totals):' "$file" | head -1 | awk '{print $2}')
  # KEEP=DIR keeps each variant's profile, for callgrind_annotate.
  [ -n "${KEEP:-}" ] && cp "$file" "$KEEP/callgrind.$1.out" && echo "$requests" >"$KEEP/requests.$1"
  kill -9 "$PID"; wait "$PID" 2>/dev/null || true; PID=
  echo $((instructions / requests))
}

echo "| variant | instructions per request | vs ${VARIANTS[0]} |"
echo "|---|---|---|"
BASE=
for v in "${VARIANTS[@]}"; do
  n=$(measure "$v")
  if [ -z "$BASE" ]; then
    BASE=$n; echo "| $v | $n | — |"
  else
    echo "| $v | $n | $(awk -v a="$n" -v b="$BASE" 'BEGIN{printf "%+.1f%%", (a/b-1)*100}') |"
  fi
done
