#!/usr/bin/env bash
# Run one experiment on Flower's Deployment Engine on this machine: a real SuperLink (not the simulation
# runtime) and N SuperNodes, each its own process that loads its own data, then `flwr run --stream`.
# TLS and SuperNode authentication are on unless --insecure / --no-auth. Everything started here is
# stopped on exit, Ctrl-C or SIGTERM. The results land in RESULTS_DIR/<run_id>/ as with a simulation run,
# next to superlink.log, supernode-<i>.log and stdout.log (the streamed run). See docs/deployment.md.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: experiments/deploy_local.sh [options]

  --nodes N              SuperNodes to start (default 3); sets federation.num_clients
  --config FILE          a runner file (pick a run with --run) or one run's config YAML (e.g. a
                         results/<run_id>/config.yaml); default: the defaults of `flwr run .`
                         (tiny CNN on synthetic data)
  --run RUN_ID           the run (run_id or variation) to take from a runner file
  --set KEY=VALUE        override a config key, repeatable (e.g. --set train.num_rounds=2)
  --results-dir DIR      where the ServerApp writes <run_id>/ (default: the config's results_dir)
  --overwrite            replace a finished run with the same run_id
  --node-data-path PATH  each SuperNode's own dataset directory (node config data-path); "{i}" in
                         PATH becomes the node's partition id, e.g. /data/node{i}
  --no-auth              TLS, but no SuperNode authentication
  --insecure             neither TLS nor SuperNode authentication (plain HTTP on loopback)
  --keep DIR             keep certificates, keys and Flower homes in DIR (default: a temporary
                         directory, deleted on exit)
  -h, --help             this text

Environment: PYTHON (default .venv/bin/python, else python3) must have the package's dependencies
and Flower; its bin/ provides flower-superlink, flower-supernode and flwr.
EOF
}

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$REPO/.venv/bin/python" ]]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON="$(command -v python3)"; fi
fi
BIN="$("$PYTHON" -c 'import os, sys; print(os.path.dirname(sys.executable))')"
FEDERATION=local-deployment

NODES=3
TLS=1
AUTH=1
KEEP=""
NODE_DATA_PATH=""
RUN_CONFIG_ARGS=()
while (($#)); do
  case "$1" in
    --nodes) NODES="${2:?--nodes needs a number}"; shift 2 ;;
    --config) RUN_CONFIG_ARGS+=(--config "$(realpath "${2:?--config needs a file}")"); shift 2 ;;
    --run) RUN_CONFIG_ARGS+=(--run "${2:?--run needs a run_id}"); shift 2 ;;
    --set) RUN_CONFIG_ARGS+=(--set "${2:?--set needs KEY=VALUE}"); shift 2 ;;
    --results-dir) RUN_CONFIG_ARGS+=(--results-dir "$(realpath -m "${2:?--results-dir needs a directory}")"); shift 2 ;;
    --overwrite) RUN_CONFIG_ARGS+=(--overwrite); shift ;;
    --node-data-path) NODE_DATA_PATH="${2:?--node-data-path needs a path}"; shift 2 ;;
    --no-auth) AUTH=0; shift ;;
    --insecure) TLS=0; AUTH=0; shift ;;
    --keep) KEEP="$(realpath -m "${2:?--keep needs a directory}")"; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
  esac
done
if ! [[ "$NODES" =~ ^[1-9][0-9]*$ ]]; then
  echo "--nodes: expected a positive number, got '$NODES'" >&2
  exit 2
fi
if [[ "$NODE_DATA_PATH" == *"'"* ]]; then
  echo "--node-data-path: a path with a single quote cannot travel in Flower's node config" >&2
  exit 2
fi

deploy() { PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m fedmpq_flwr.deploy "$@"; }

if [[ -n "$KEEP" ]]; then
  mkdir -p "$KEEP"
  WORK="$KEEP"
else
  WORK="$(mktemp -d -t fedmpq-deploy-XXXXXX)"
fi
# Everything started here, by PID: `flwr run` and the SuperNodes are stopped before the SuperLink, so
# that they can still tell it that they leave. `deploy stop` also ends their children (SuperExec, apps).
# Only pids that are still this script's children are signalled (`--parent $$`).
LINK_PID=""
HELPER_PID=""
PIDS=()
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  local group
  for group in "$HELPER_PID ${PIDS[*]}" "$LINK_PID"; do
    if [[ -n "${group// /}" ]]; then
      # shellcheck disable=SC2086 # a list of PIDs
      deploy stop --parent $$ $group || true
      # shellcheck disable=SC2086
      wait $group 2>/dev/null || true
    fi
  done
  if [[ -z "$KEEP" ]]; then rm -rf "$WORK"; fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
# Run a helper in the background and wait for it: a signal interrupts `wait` (not a foreground command).
waiting() {
  local rc=0
  "$@" &
  HELPER_PID=$!
  wait "$HELPER_PID" || rc=$?
  HELPER_PID=""
  return "$rc"
}

# The run config first: a mistake fails here, before anything starts.
RUN_DIR="$(deploy run-config "${RUN_CONFIG_ARGS[@]}" --num-clients "$NODES" --out "$WORK/run_config.toml")"
mkdir -p "$RUN_DIR"
read -r -a PORTS <<<"$(deploy free-ports $((NODES + 1)))"
LINK="127.0.0.1:${PORTS[0]}"

export PATH="$BIN:$PATH" # flower-superlink and flower-supernode start flower-superexec by name
export FLWR_DISABLE_UPDATE_CHECK=1 PYTHONUNBUFFERED=1
# The ServerApp runs from Flower's copy of the app: it records this checkout's commit from here.
FEDMPQ_GIT_COMMIT="$(deploy commit)"
export FEDMPQ_GIT_COMMIT
# Flower's anonymous usage events: off unless asked for (offline, each exit waits seconds for them).
export FLWR_TELEMETRY_ENABLED="${FLWR_TELEMETRY_ENABLED:-0}"
LINK_ARGS=(--host 127.0.0.1 --port "${PORTS[0]}" --disable-runtime-dependency-installation)
if ((TLS)); then
  deploy certs --out "$WORK/tls" --san 127.0.0.1 >/dev/null
  CA="$WORK/tls/ca.crt"
  LINK_ARGS+=(--ssl-ca-certfile "$CA" --ssl-certfile "$WORK/tls/server.crt" --ssl-keyfile "$WORK/tls/server.key")
  CLIENT_TLS=(--root-certificates "$CA")
else
  LINK_ARGS+=(--insecure)
  CLIENT_TLS=(--insecure)
fi
if ((AUTH)); then LINK_ARGS+=(--enable-supernode-auth); fi

echo "deploy_local [${SECONDS}s]: SuperLink on $LINK (TLS $( ((TLS)) && echo on || echo off), SuperNode authentication $( ((AUTH)) && echo on || echo off)), $NODES SuperNodes, results in $RUN_DIR" >&2
FLWR_HOME="$WORK/superlink" "$BIN/flower-superlink" "${LINK_ARGS[@]}" >"$RUN_DIR/superlink.log" 2>&1 &
LINK_PID=$!
waiting deploy wait-superlink --address "$LINK" "${CLIENT_TLS[@]}" --pid "$LINK_PID" --timeout 60
deploy federation --flwr-home "$WORK/cli" --name "$FEDERATION" --address "$LINK" "${CLIENT_TLS[@]}" >/dev/null

NODE_PIDS=()
for ((i = 0; i < NODES; i++)); do
  NODE_ARGS=("${CLIENT_TLS[@]}" --superlink "$LINK" --port "${PORTS[i + 1]}")
  if ((AUTH)); then
    # Only SuperNodes whose public key was registered through the Control API may join.
    deploy node-key --out "$WORK/keys/node-$i" >/dev/null
    FLWR_HOME="$WORK/cli" "$BIN/flwr" supernode register "$WORK/keys/node-$i.pub" "$FEDERATION" --name "node-$i" \
      >>"$RUN_DIR/supernode-$i.log" 2>&1
    NODE_ARGS+=(--auth-supernode-private-key "$WORK/keys/node-$i")
  fi
  NODE_CONFIG="partition-id=$i num-partitions=$NODES"
  if [[ -n "$NODE_DATA_PATH" ]]; then NODE_CONFIG+=" data-path='${NODE_DATA_PATH//\{i\}/$i}'"; fi
  FLWR_HOME="$WORK/node-$i" "$BIN/flower-supernode" "${NODE_ARGS[@]}" --node-config "$NODE_CONFIG" \
    >>"$RUN_DIR/supernode-$i.log" 2>&1 &
  NODE_PIDS+=("$!")
  PIDS+=("$!")
done
WAIT_ARGS=()
for pid in "${NODE_PIDS[@]}"; do WAIT_ARGS+=(--pid "$pid"); done
FLWR_HOME="$WORK/cli" waiting deploy wait-nodes --federation "$FEDERATION" --count "$NODES" "${WAIT_ARGS[@]}" \
  --timeout 120

echo "deploy_local [${SECONDS}s]: all $NODES SuperNodes online; submitting the run" >&2
FLWR_HOME="$WORK/cli" "$BIN/flwr" run "$REPO" "$FEDERATION" --stream --run-config "$WORK/run_config.toml" \
  > >(tee "$RUN_DIR/stdout.log") 2>&1 &
RUN_PID=$!
PIDS+=("$RUN_PID")
RUN_STATUS=0
wait "$RUN_PID" || RUN_STATUS=$?
if deploy check-results "$RUN_DIR"; then
  echo "deploy_local [${SECONDS}s]: run complete, results in $RUN_DIR" >&2
  exit 0
fi
echo "deploy_local [${SECONDS}s]: the run did not complete (flwr run exited with $RUN_STATUS); logs in $RUN_DIR" >&2
exit 1
