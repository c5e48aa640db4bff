#!/usr/bin/env bash
# What gateway keys and in-process rate limits cost on the pass-through path: the same binary
# without keys, with keys, and with keys and limits (a key with rpm, tpm and concurrency, plus rpm
# and tpm on the model and the provider: every scope), in alternating rounds against the same fixed
# upstream (nginx), wrk -t2.
#
#   bash benches/wrk/keys_ab.sh                      # 3 rounds of 10 s each way, c=16
#   ROUNDS=5 DURATION=5s CONNS=64 bash benches/wrk/keys_ab.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
DURATION=${DURATION:-10s}
CONNS=${CONNS:-16}
ROUNDS=${ROUNDS:-3}
WORK=$(mktemp -d /tmp/dragoman-keys-ab.XXXXXX)
command -v wrk >/dev/null && command -v nginx >/dev/null || {
  echo "wrk and nginx are needed: run benches/wrk/run.sh once, or apt-get install wrk nginx-light" >&2; exit 1; }
cargo build --release --quiet --bin dragoman

PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null
  sleep 0.3; rm -rf "$WORK"
}
trap cleanup EXIT
UP=18200; GW=18220; GW_ADMIN=18221

. benches/wrk/fixed_upstream.sh
start_fixed_upstream "$WORK" "$UP" 2
write_bench_body "$WORK"

config() { # name, extra provider/model settings, keys section
  cat > "$WORK/$1.yaml" <<YAML
pid_file: $WORK/dragoman.pid
upgrade_sock: $WORK/upgrade.sock
grace_period_seconds: 0
graceful_shutdown_timeout_seconds: 1
listen: 127.0.0.1:$GW
admin_listen: 127.0.0.1:$GW_ADMIN
providers:
  pass: { kind: openai, auth: none, endpoints: ["http://127.0.0.1:$UP/v1"]$2 }
models:
  gpt-pass: { provider: pass$2 }
$3
YAML
}
config plain "" ""
config keys "" "keys:
  bench: { key: bench-client }
  other: { key: other-client }"
# post.lua sends `Authorization: Bearer bench-client`. The limits are far above what the run
# reaches: they are checked and charged on every request, never refuse one.
config keyed ", limits: { rpm: 1000000000, tpm: 1000000000000 }" \
  "keys:
  bench: { key: bench-client, limits: { rpm: 1000000000, tpm: 1000000000000, concurrency: 100000 } }
  other: { key: other-client }"

run() { # config -> rps
  RUST_LOG=warn "$ROOT/target/release/dragoman" -c "$WORK/$1.yaml" 2>"$WORK/$1.log" &
  local pid=$!
  until curl -sf "http://127.0.0.1:$GW_ADMIN/healthz" >/dev/null; do
    kill -0 "$pid" || { cat "$WORK/$1.log" >&2; exit 1; }
    sleep 0.01
  done
  local status
  status=$(curl -s -o /dev/null -w '%{http_code}' -H 'content-type: application/json' \
    -H 'authorization: Bearer bench-client' --data-binary @"$WORK/body.json" "http://127.0.0.1:$GW/v1/chat/completions")
  [ "$status" = 200 ] || { echo "$1: answered $status" >&2; exit 1; }
  BODY_FILE="$WORK/body.json" wrk -t2 -c"$CONNS" -d"$DURATION" --latency -s benches/wrk/post.lua \
    "http://127.0.0.1:$GW/v1/chat/completions" | grep '^RESULT'
  kill "$pid"; wait "$pid" 2>/dev/null || true
}
field() { sed -E "s/.*$2=([-0-9.]+).*/\1/" <<<"$1"; }

echo "| round | no keys (req/s) | keys, no limits (req/s) | keys and limits (req/s) | keys / none | keys+limits / none | p99 none / keys / keys+limits (µs) |"
echo "|---|---|---|---|---|---|---|"
K=(); L=()
for r in $(seq "$ROUNDS"); do
  a=$(run plain); k=$(run keys); b=$(run keyed)
  rk=$(awk -v x="$(field "$k" rps)" -v y="$(field "$a" rps)" 'BEGIN{printf "%.3f", x/y}')
  rl=$(awk -v x="$(field "$b" rps)" -v y="$(field "$a" rps)" 'BEGIN{printf "%.3f", x/y}')
  K+=("$rk"); L+=("$rl")
  echo "| $r | $(field "$a" rps) | $(field "$k" rps) | $(field "$b" rps) | $rk | $rl | $(field "$a" p99_us) / $(field "$k" p99_us) / $(field "$b" p99_us) |"
  for x in "$a" "$k" "$b"; do [ "$(field "$x" errors)" = 0 ] || echo "errors: $x" >&2; done
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "median ratios over $ROUNDS rounds (c=$CONNS, $DURATION each): keys $(median "${K[@]}"), keys and limits $(median "${L[@]}")"
