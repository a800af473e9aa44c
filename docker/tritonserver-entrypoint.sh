#!/usr/bin/env bash
# ddpm-tritonserver: `tritonserver "$@"` with the APIs that change the server's state behind a key,
# and a watchdog beside it that mends a model whose Python-backend stub process died: it reloads
# the model, or, for `ddpm` (config: on_stub_death: restart_server), ends tritonserver, and this
# script exits with it so that the container's restart policy starts the container again.
#
# The key comes from TRITON_ADMIN_KEY. Clients send it as the HTTP header `admin-key: <key>`, or as
# the gRPC metadata `triton-grpc-protocol-admin-key: <key>` (Triton prefixes gRPC keys itself).
# Without TRITON_ADMIN_KEY the APIs are locked with a random key that nobody knows: unset means
# "no admin access", never "open".
set -euo pipefail

# Restricted: loading/unloading models and listing the repository, registering shared-memory regions
# (they let a client point the server at memory), and changing trace and log settings.
# Left open: health, metadata, inference, and the read-only model-config and statistics, which
# clients and perf_analyzer query on every run.
readonly admin_apis="model-repository,shared-memory,trace,logging"
readonly admin_header="admin-key"

key="${TRITON_ADMIN_KEY:-}"
if [[ -z "${key}" ]]; then
    key="$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')"
    echo "ddpm-tritonserver: TRITON_ADMIN_KEY is not set; ${admin_apis} are locked with a random key." >&2
fi

# Triton does not restart a Python-backend stub that dies (python_backend dropped the restart in
# r24.06; 25.10 has none), and the model keeps reporting READY while every request to it fails.
# The watchdog (src/ddpm_triton/watchdog.py) sees the stub gone from the process table and reloads the
# model through the model-repository API with the key. A model whose config says
# on_stub_death: restart_server (`ddpm`: Triton never answers the requests that were in flight on
# its dead stub, and a reload cannot release them) gets tritonserver SIGKILLed instead, which closes
# those requests' connections. It needs explicit model control (the load API) and HTTP on
# --http-port=N (default 8000). WATCHDOG_INTERVAL=0 turns it off.
watchdog_interval="${WATCHDOG_INTERVAL:-1}"
http_port=8000
explicit=false
for arg in "$@"; do
    case "${arg}" in
        --http-port=*) http_port="${arg#--http-port=}" ;;
        --model-control-mode=explicit) explicit=true ;;
    esac
done

# tritonserver runs as this script's child, not exec'ed in its place: NVIDIA's entrypoint execs this
# script (as far as known: not checked in the image here), so exec would make tritonserver PID 1 of
# the container, and the kernel does not deliver SIGKILL (or any signal it has no handler for) to
# PID 1 from inside its PID namespace. Its handlers for SIGTERM and SIGINT are graceful: they wait up
# to --exit-timeout-secs for requests that a dead stub never finishes. So this script stays PID 1
# and passes `docker stop`'s SIGTERM (or Ctrl-C's SIGINT) on, for the graceful shutdown as before,
# with the watchdog stopped first: stubs that exit while their models unload must not look like
# deaths to mend.
tritonserver \
    "--http-restricted-api=${admin_apis}:${admin_header}=${key}" \
    "--grpc-restricted-protocol=${admin_apis}:${admin_header}=${key}" \
    "$@" &
server=$!
# shellcheck disable=SC2317  # called by the traps below
shut_down() {
    if [[ -n "${watchdog:-}" ]]; then
        kill -TERM "${watchdog}" 2>/dev/null || true
    fi
    kill "-$1" "${server}" 2>/dev/null || true
}
trap 'shut_down TERM' TERM
trap 'shut_down INT' INT

if [[ "${watchdog_interval}" == "0" ]]; then
    echo "ddpm-tritonserver: WATCHDOG_INTERVAL=0: no watchdog; a model whose stub dies stays broken." >&2
elif [[ "${explicit}" != true ]]; then
    echo "ddpm-tritonserver: no watchdog: it reloads models, which needs --model-control-mode=explicit." >&2
else
    TRITON_ADMIN_KEY="${key}" python3 -m ddpm_triton.watchdog --server-pid "${server}" \
        --url "127.0.0.1:${http_port}" --interval "${watchdog_interval}" &
    watchdog=$!
fi

# `wait` returns early (128 + the signal) when a trapped signal arrives while tritonserver still
# runs: wait until it has gone, then once more for its exit status, which bash keeps.
while kill -0 "${server}" 2>/dev/null; do
    wait "${server}" || true
done
status=0
wait "${server}" || status=$?
# The watchdog stops within one interval of tritonserver's exit; after ending it, it first removes
# the stubs' shared memory from /dev/shm (a killed server never does).
if [[ -n "${watchdog:-}" ]]; then
    wait "${watchdog}" || true
fi
# Exiting ends the container. Docker's restart policy (docker-compose.yml: unless-stopped) starts it
# again unless it was stopped on purpose: that is how the watchdog's server restart completes here.
# Not run here: these machines have no Docker engine (tests/test_reliability.py runs this script on
# the pip-installed server and checks that it exits once the watchdog has ended tritonserver).
echo "ddpm-tritonserver: tritonserver exited with status ${status}" >&2
exit "${status}"
