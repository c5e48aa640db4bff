#!/usr/bin/env bash
# dragoman vs a plain nginx reverse proxy, side by side on loopback, with wrk.
#
#   bash benches/wrk/run.sh            # full run (about 4 minutes)
#   DURATION=5s SLOW_STREAMS=2000 bash benches/wrk/run.sh   # quicker
#
# Starts: a fake upstream (nginx serving fixed OpenAI / Anthropic / SSE answers after reading the
# body), nginx as a reverse proxy in front of it (keepalive upstream, no buffering), dragoman in
# front of it, and dragoman-mock for slow streams. Runs wrk -t2 against each scenario and prints
# one Markdown table, with the gateway/nginx ratio per row. Everything listens on 127.0.0.1 and is
# stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
DURATION=${DURATION:-10s}
CONNS=${CONNS:-"16 64"}
SLOW_STREAMS=${SLOW_STREAMS:-10000}
SLOW_SECONDS=${SLOW_SECONDS:-30}
WORK=$(mktemp -d /tmp/dragoman-bench.XXXXXX)

need() { command -v "$1" >/dev/null 2>&1; }
if ! need wrk || ! need nginx; then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo=sudo
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq wrk nginx-light >/dev/null
fi
command -v cmake >/dev/null || { echo "cmake missing: run .ci/run or install cmake" >&2; exit 1; }
cargo build --release --quiet --bin dragoman --bin dragoman-mock --example bare_pingora
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
# Each open stream holds two descriptors in the gateway (client and upstream): stay under the limit.
MAX_STREAMS=$(( ($(ulimit -n) - 500) / 2 ))
if [ "$SLOW_STREAMS" -gt "$MAX_STREAMS" ]; then
  echo "note: open-file limit $(ulimit -n) allows $MAX_STREAMS slow streams, not $SLOW_STREAMS" >&2
  SLOW_STREAMS=$MAX_STREAMS
fi

PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for f in "$WORK"/nginx-*.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null; done
  sleep 0.5; rm -rf "$WORK"
}
trap cleanup EXIT

UP=18100; NGX=18110; GW=18120; GW_ADMIN=18121; MOCK=18130; FAST1=18131; FAST2=18132; SLOWI=18133; BARE=18140

# --- fixed upstream answers ---
OPENAI_JSON='{"id":"chatcmpl-b","object":"chat.completion","created":1700000000,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! How can I help you today?"},"finish_reason":"stop","logprobs":null}],"usage":{"prompt_tokens":12,"completion_tokens":9,"total_tokens":21}}'
ANTHROPIC_JSON='{"id":"msg_b","type":"message","role":"assistant","model":"claude-3-5-haiku-20241022","content":[{"type":"text","text":"Hello! How can I help you today?"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":12,"output_tokens":9}}'
python3 - "$WORK" <<'PY'
import json, sys
work = sys.argv[1]
events = ['event: message_start\ndata: {"type":"message_start","message":{"id":"msg_s","type":"message","role":"assistant","model":"claude-3-5-haiku-20241022","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":12,"output_tokens":1}}}\n\n',
          'event: content_block_start\ndata: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}\n\n']
for i in range(15):
    events.append('event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"word%d "}}\n\n' % i)
events += ['event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n',
           'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":15}}\n\n',
           'event: message_stop\ndata: {"type":"message_stop"}\n\n']
assert len(events) == 20
open(f"{work}/anthropic.sse", "w").write("".join(events))
chunk = lambda c: 'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"%s"},"finish_reason":null}]}\n\n' % c
open(f"{work}/openai.sse", "w").write("".join(chunk("word%d " % i) for i in range(19)) + "data: [DONE]\n\n")
msgs = [{"role": "system", "content": "You are a helpful assistant."}]
while len(json.dumps(msgs)) < 3800:
    msgs += [{"role": "user", "content": "Tell me something interesting about the number %d." % len(msgs)},
             {"role": "assistant", "content": "The number %d is remarkable in many ways." % len(msgs)}]
msgs.append({"role": "user", "content": "Thanks!"})
for name, model, stream in [("mixed-plain", "mixed-plain", False), ("mixed-hedged", "mixed-hedged", False), ("openai", "gpt-pass", False), ("anthropic", "claude", False), ("anthropic-sse", "claude-sse", True), ("openai-sse", "gpt-pass-sse", True)]:
    body = {"model": model, "messages": msgs, "max_tokens": 100}
    if stream: body["stream"] = True
    open(f"{work}/{name}.json", "w").write(json.dumps(body))
PY

# Two nginx processes: the fake upstream, and the baseline proxy in front of it. (In one process,
# the proxy would often hand requests to itself without a wake-up, which no gateway can do.)
nginx_conf() { # name, server blocks
  cat <<NGINX
worker_processes 2;
pid $WORK/nginx-$1.pid;
error_log $WORK/nginx-$1-error.log warn;
events { worker_connections 20000; }
http {
  access_log off;
  client_body_temp_path $WORK/body-$1; proxy_temp_path $WORK/proxy-$1;
  fastcgi_temp_path $WORK/fcgi-$1; uwsgi_temp_path $WORK/uwsgi-$1; scgi_temp_path $WORK/scgi-$1;
  client_max_body_size 64m; client_body_buffer_size 1m;
  keepalive_requests 1000000;
$2
}
NGINX
}
# The fake upstream: fixed answers, after reading the body.
nginx_conf upstream "
  server {
    listen 127.0.0.1:$UP;
    location /v1/chat/completions { default_type application/json; return 200 '$OPENAI_JSON'; }
    location /v1/messages { default_type application/json; return 200 '$ANTHROPIC_JSON'; }
    # \$(cat) drops the stream's closing blank line; it is put back, or the last event never ends.
    location /sse/v1/messages { default_type text/event-stream; return 200 '$(cat "$WORK/anthropic.sse")

'; }
    location /osse/v1/chat/completions { default_type text/event-stream; return 200 '$(cat "$WORK/openai.sse")

'; }
  }" >"$WORK/nginx-upstream.conf"
# The baseline: a plain reverse proxy, keepalive upstream, no buffering.
nginx_conf proxy "
  upstream fake { server 127.0.0.1:$UP; keepalive 256; }
  server {
    listen 127.0.0.1:$NGX;
    location / {
      proxy_pass http://fake; proxy_http_version 1.1; proxy_set_header Connection \"\";
      proxy_buffering off; proxy_request_buffering off;
    }
  }" >"$WORK/nginx-proxy.conf"
for name in upstream proxy; do
  mkdir -p "$WORK/body-$name" "$WORK/proxy-$name"
  nginx -c "$WORK/nginx-$name.conf" -p "$WORK"
done
# The framework's floor: Pingora with its defaults and no logic, in front of the same upstream.
"$ROOT/target/release/examples/bare_pingora" "127.0.0.1:$BARE" "127.0.0.1:$UP" >"$WORK/bare.log" 2>&1 &
PIDS+=("$!")

cat > "$WORK/dragoman.yaml" <<YAML
pid_file: $WORK/dragoman.pid
upgrade_sock: $WORK/upgrade.sock
listen: 127.0.0.1:$GW
admin_listen: 127.0.0.1:$GW_ADMIN
providers:
  pass: { kind: openai, auth: none, endpoints: ["http://127.0.0.1:$UP/v1"] }
  pass-sse: { kind: openai, auth: none, endpoints: ["http://127.0.0.1:$UP/osse/v1"] }
  ant: { kind: anthropic, api_key: bench, endpoints: ["http://127.0.0.1:$UP"] }
  ant-sse: { kind: anthropic, api_key: bench, endpoints: ["http://127.0.0.1:$UP/sse"] }
  slow: { kind: anthropic, api_key: bench, endpoints: ["http://127.0.0.1:$MOCK"], stream_idle_timeout: 10s }
  mixed: { kind: openai, auth: none, endpoints: ["http://127.0.0.1:$FAST1/v1", "http://127.0.0.1:$FAST2/v1", "http://127.0.0.1:$SLOWI/v1"] }
models:
  gpt-pass: { provider: pass }
  gpt-pass-sse: { provider: pass-sse }
  claude: { provider: ant }
  claude-sse: { provider: ant-sse }
  claude-slow: { provider: slow }
  mixed-plain: { provider: mixed }
  mixed-hedged: { provider: mixed, hedge: { after: 50ms, max: 1 } }
YAML
# The mocks start first, so the gateway's health checks find them up: one for slow streams, and
# two fast and one slow instance (1 s per answer) for the hedging scenario.
for port in $FAST1 $FAST2 $SLOWI; do
  "$ROOT/target/release/dragoman-mock" --listen "127.0.0.1:$port" --no-record >"$WORK/mock-$port.log" 2>&1 &
  PIDS+=("$!")
done
for port in $FAST1 $FAST2 $SLOWI; do
  until curl -sf -X DELETE "http://127.0.0.1:$port/_mock/behaviour" >/dev/null; do sleep 0.05; done
done
curl -sf -X POST -H 'content-type: application/json' -d '{"delay_ms":1000,"default":true}' "http://127.0.0.1:$SLOWI/_mock/behaviour" >/dev/null
"$ROOT/target/release/dragoman-mock" --listen "127.0.0.1:$MOCK" --no-record >"$WORK/mock.log" 2>&1 &
MOCK_PID=$!; PIDS+=("$MOCK_PID")
until curl -sf -X DELETE "http://127.0.0.1:$MOCK/_mock/behaviour" >/dev/null; do sleep 0.05; done
start_ns=$(date +%s%N)
RUST_LOG=warn "$ROOT/target/release/dragoman" -c "$WORK/dragoman.yaml" 2>"$WORK/dragoman.log" &
GW_PID=$!; PIDS+=("$GW_PID")
until curl -sf "http://127.0.0.1:$GW_ADMIN/healthz" >/dev/null; do
  kill -0 "$GW_PID" || { cat "$WORK/dragoman.log"; exit 1; }
  sleep 0.01
done
STARTUP_MS=$(( ($(date +%s%N) - start_ns) / 1000000 ))
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
IDLE_RSS_KB=$(rss_kb "$GW_PID")

# Each scenario's answer, checked once before it is measured: a 200 that ends the way a complete
# answer ends, with no error event (wrk itself only sees status codes).
check() { # url body expected-ending
  local answer
  answer=$(curl -s -H 'content-type: application/json' --data-binary @"$WORK/$2.json" "$1")
  if [[ "$answer" != *"$3"* ]] || [[ "$answer" == *'"error"'* ]]; then
    echo "scenario $2 at $1 did not answer as expected:" >&2; echo "$answer" | tail -5 >&2; exit 1
  fi
}
check "http://127.0.0.1:$GW/v1/chat/completions" openai '"finish_reason":"stop"'
check "http://127.0.0.1:$GW/v1/chat/completions" anthropic '"finish_reason":"stop"'
check "http://127.0.0.1:$GW/v1/chat/completions" anthropic-sse 'data: [DONE]'
check "http://127.0.0.1:$GW/v1/chat/completions" openai-sse 'data: [DONE]'
check "http://127.0.0.1:$NGX/sse/v1/messages" anthropic-sse 'event: message_stop'

run() { # name url body conns -> RESULT line
  BODY_FILE="$WORK/$3.json" wrk -t2 -c"$4" -d"$DURATION" --latency -s benches/wrk/post.lua "$2" 2>&1 | grep '^RESULT' || echo "RESULT rps=0 p50_us=0 p99_us=0 errors=-1 requests=0"
}
field() { sed -E "s/.*$2=([-0-9.]+).*/\1/" <<<"$1"; }

ROWS=(); BARE_ROWS=(); DRAGOMAN_VS_BARE=()
add_row() { # scenario conns gateway-line nginx-line
  local g=$3 n=$4
  local ratio_rps ratio_p99
  ratio_rps=$(awk -v a="$(field "$g" rps)" -v b="$(field "$n" rps)" 'BEGIN{printf (b>0? "%.2f" : "-"), a/b}')
  ratio_p99=$(awk -v a="$(field "$g" p99_us)" -v b="$(field "$n" p99_us)" 'BEGIN{printf (b>0? "%.2f" : "-"), a/b}')
  ROWS+=("| $1 | $2 | $(field "$g" rps) | $(field "$g" p50_us) | $(field "$g" p99_us) | $(field "$g" errors) | $(field "$n" rps) | $(field "$n" p50_us) | $(field "$n" p99_us) | $(field "$n" errors) | **$ratio_rps** | $ratio_p99 | $(( $(rss_kb "$GW_PID") / 1024 )) |")
}

for c in $CONNS; do
  n=$(run nginx "http://127.0.0.1:$NGX/v1/chat/completions" openai "$c")
  g=$(run dragoman "http://127.0.0.1:$GW/v1/chat/completions" openai "$c")
  add_row "OpenAI pass-through JSON" "$c" "$g" "$n"
  b=$(run bare "http://127.0.0.1:$BARE/v1/chat/completions" openai "$c")
  BARE_ROWS+=("| bare Pingora 0.9 (no logic), pass-through JSON | $c | $(field "$b" rps) | $(field "$b" p50_us) | $(field "$b" p99_us) | $(field "$b" errors) | $(field "$n" rps) | $(field "$n" p50_us) | $(field "$n" p99_us) | $(field "$n" errors) | **$(awk -v a="$(field "$b" rps)" -v b="$(field "$n" rps)" 'BEGIN{printf (b>0? "%.2f" : "-"), a/b}')** | $(awk -v a="$(field "$b" p99_us)" -v b="$(field "$n" p99_us)" 'BEGIN{printf (b>0? "%.2f" : "-"), a/b}') | - |")
  DRAGOMAN_VS_BARE+=("c=$c: $(awk -v a="$(field "$g" rps)" -v b="$(field "$b" rps)" 'BEGIN{printf (b>0? "%.2f" : "-"), a/b}')")
  g=$(run dragoman "http://127.0.0.1:$GW/v1/chat/completions" anthropic "$c")
  add_row "OpenAI → Anthropic translated JSON (vs nginx pass-through)" "$c" "$g" "$n"
  n=$(run nginx "http://127.0.0.1:$NGX/sse/v1/messages" anthropic-sse "$c")
  g=$(run dragoman "http://127.0.0.1:$GW/v1/chat/completions" anthropic-sse "$c")
  add_row "OpenAI → Anthropic translated stream, 20 events (vs nginx-sse)" "$c" "$g" "$n"
  g=$(run dragoman "http://127.0.0.1:$GW/v1/chat/completions" openai-sse "$c")
  n=$(run nginx "http://127.0.0.1:$NGX/osse/v1/chat/completions" openai-sse "$c")
  add_row "OpenAI pass-through stream, 20 events (vs nginx-sse)" "$c" "$g" "$n"
done

# Hedging: one slow instance (1 s) among two fast ones, c=16.
HEDGE_OFF=$(run dragoman "http://127.0.0.1:$GW/v1/chat/completions" mixed-plain 16)
HEDGE_ON=$(run dragoman "http://127.0.0.1:$GW/v1/chat/completions" mixed-hedged 16)

# Time to first byte added by the gateway, at c=1 (median of 200 requests each way).
ttfb() { for _ in $(seq 200); do curl -s -o /dev/null -w '%{time_starttransfer}\n' -H 'content-type: application/json' --data-binary @"$WORK/anthropic-sse.json" "$1"; done | sort -n | awk '{a[NR]=$1} END {printf "%.3f", a[int(NR/2)]*1000}'; }
TTFB_NGX=$(ttfb "http://127.0.0.1:$NGX/sse/v1/messages")
TTFB_GW=$(ttfb "http://127.0.0.1:$GW/v1/chat/completions")
# The same at c=1 on one keep-alive connection (no connection set-up in the number): wrk's p50 for
# the whole answer, which the fake upstream sends at once.
ka() { BODY_FILE="$WORK/anthropic-sse.json" wrk -t1 -c1 -d"$DURATION" --latency -s benches/wrk/post.lua "$@" 2>&1 | grep '^RESULT' || echo "RESULT rps=0 p50_us=0 p99_us=0 errors=-1 requests=0"; }
KA_NGX=$(ka "http://127.0.0.1:$NGX/sse/v1/messages")
KA_GW=$(ka "http://127.0.0.1:$GW/v1/chat/completions")
# And with a new connection per request, back to back: the server closes after each answer and
# wrk reconnects, with no process start-up or idle time between requests (unlike curl above).
NEWCONN_NGX=$(ka -H 'Connection: close' "http://127.0.0.1:$NGX/sse/v1/messages")
NEWCONN_GW=$(ka -H 'Connection: close' "http://127.0.0.1:$GW/v1/chat/completions")

# Many concurrent slow streams: one event every 100 ms for SLOW_SECONDS.
python3 - "$WORK" "$SLOW_SECONDS" <<'PY'
import json, sys
work, seconds = sys.argv[1], int(sys.argv[2])
events = ['event: message_start\ndata: {"type":"message_start","message":{"id":"msg_slow","type":"message","role":"assistant","model":"m","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":1,"output_tokens":1}}}\n\n',
          'event: content_block_start\ndata: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}\n\n']
events += ['event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"tick "}}\n\n'] * (seconds * 10 - 5)
events += ['event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n',
           'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":1}}\n\n',
           'event: message_stop\ndata: {"type":"message_stop"}\n\n']
json.dump({"sse": events, "interval_ms": 100, "default": True}, open(f"{work}/slow-spec.json", "w"))
json.dump({"model": "claude-slow", "stream": True, "max_tokens": 10, "messages": [{"role": "user", "content": "tick"}]}, open(f"{work}/slow.json", "w"))
PY
curl -sf -X POST -H 'content-type: application/json' --data-binary @"$WORK/slow-spec.json" "http://127.0.0.1:$MOCK/_mock/behaviour" >/dev/null
BEFORE_KB=$(rss_kb "$GW_PID")
# wrk counts a stream when it ends, so it runs long enough for streams that the machine's CPU (the
# mock, wrk and the gateway on two cores, ~100,000 events a second) stretches past SLOW_SECONDS.
BODY_FILE="$WORK/slow.json" timeout $((SLOW_SECONDS * 3 + 30)) wrk -t2 -c"$SLOW_STREAMS" -d"$((SLOW_SECONDS * 2 + 10))s" --timeout "$((SLOW_SECONDS * 3))s" --latency -s benches/wrk/post.lua "http://127.0.0.1:$GW/v1/chat/completions" >"$WORK/slow.out" 2>&1 &
WRK_PID=$!
sleep $((SLOW_SECONDS / 2))
OPEN=$(ss -Htn state established "( sport = :$GW )" | wc -l)
PEAK_KB=$(rss_kb "$GW_PID")
wait "$WRK_PID" || true
SLOW=$(grep '^RESULT' "$WORK/slow.out" || echo "RESULT rps=0 p50_us=0 p99_us=0 errors=-1 requests=0")
PER_STREAM_KB=$(awk -v a="$PEAK_KB" -v b="$BEFORE_KB" -v n="$OPEN" 'BEGIN{printf (n>0? "%.1f" : "-"), (a-b)/n}')

echo
echo "Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r); wrk -t2, $DURATION per run; $(date -u +%Y-%m-%d)"
echo
echo "| scenario | c | dragoman req/s | p50 µs | p99 µs | errors | nginx req/s | p50 µs | p99 µs | errors | req/s ratio | p99 ratio | gateway RSS MB |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${ROWS[@]}" "${BARE_ROWS[@]}"
echo
echo "| measure | value |"
echo "|---|---|"
echo "| hedging, one slow instance (1 s) of three, c=16: p50 / p99 / req/s | off: $(field "$HEDGE_OFF" p50_us) µs / $(field "$HEDGE_OFF" p99_us) µs / $(field "$HEDGE_OFF" rps); on (after 50 ms): $(field "$HEDGE_ON" p50_us) µs / $(field "$HEDGE_ON" p99_us) µs / $(field "$HEDGE_ON" rps) |"
echo "| start-up to ready | ${STARTUP_MS} ms |"
echo "| idle RSS | $((IDLE_RSS_KB / 1024)) MB |"
echo "| time to first byte at c=1, translated stream, a new curl process and connection each (median of 200; the gateway idles between) | dragoman ${TTFB_GW} ms, nginx ${TTFB_NGX} ms |"
echo "| whole translated stream at c=1 on one keep-alive connection (wrk p50) | dragoman $(field "$KA_GW" p50_us) µs, nginx $(field "$KA_NGX" p50_us) µs |"
echo "| whole translated stream at c=1, a new connection each, back to back (wrk p50, \`Connection: close\`) | dragoman $(field "$NEWCONN_GW" p50_us) µs, nginx $(field "$NEWCONN_NGX" p50_us) µs |"
echo "| dragoman / bare Pingora, pass-through JSON req/s | ${DRAGOMAN_VS_BARE[*]} |"
echo "| slow streams: target / open at mid-run / completed / errors | $SLOW_STREAMS / $OPEN / $(field "$SLOW" requests) / $(field "$SLOW" errors) |"
echo "| slow streams: duration p50 / p99 (${SLOW_SECONDS} s of events each) | $(awk -v a="$(field "$SLOW" p50_us)" 'BEGIN{printf "%.1f s", a/1e6}') / $(awk -v a="$(field "$SLOW" p99_us)" 'BEGIN{printf "%.1f s", a/1e6}') |"
echo "| gateway RSS before → mid-run | $((BEFORE_KB / 1024)) MB → $((PEAK_KB / 1024)) MB (${PER_STREAM_KB} KB per open stream) |"
