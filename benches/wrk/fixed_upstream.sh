# Sourced by the A/B scripts: the fixed upstream they measure against (nginx answering every chat
# completion with the same JSON) and the 3.8 KB chat request they send.
#
#   start_fixed_upstream WORK PORT WORKERS   # nginx in WORK, pid in WORK/nginx.pid
#   write_bench_body WORK                     # WORK/body.json

FIXED_ANSWER='{"id":"chatcmpl-b","object":"chat.completion","created":1700000000,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! How can I help you today?"},"finish_reason":"stop","logprobs":null}],"usage":{"prompt_tokens":12,"completion_tokens":9,"total_tokens":21}}'

start_fixed_upstream() {
  local work=$1 port=$2 workers=$3
  mkdir -p "$work/body" "$work/proxy"
  cat > "$work/nginx.conf" <<NGINX
worker_processes $workers;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 20000; }
http {
  access_log off; client_body_temp_path $work/body; proxy_temp_path $work/proxy;
  fastcgi_temp_path $work/fcgi; uwsgi_temp_path $work/uwsgi; scgi_temp_path $work/scgi;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$port;
    location /v1/chat/completions { default_type application/json; return 200 '$FIXED_ANSWER'; } }
}
NGINX
  nginx -c "$work/nginx.conf" -p "$work"
}

write_bench_body() {
  python3 - "$1" <<'PY'
import json, sys
msgs = [{"role": "system", "content": "You are a helpful assistant."}]
while len(json.dumps(msgs)) < 3800:
    msgs += [{"role": "user", "content": "Tell me something interesting about the number %d." % len(msgs)},
             {"role": "assistant", "content": "The number %d is remarkable in many ways." % len(msgs)}]
json.dump({"model": "gpt-pass", "messages": msgs, "max_tokens": 100}, open(sys.argv[1] + "/body.json", "w"))
PY
}
