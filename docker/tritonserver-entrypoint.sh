#!/usr/bin/env bash
# ddpm-tritonserver: `tritonserver "$@"` with the APIs that change the server's state behind a key,
# and a watchdog beside it that reloads a model whose Python-backend stub process died.
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
# model through the model-repository API with the key. It reads this PID, which becomes
# tritonserver's at the exec below, and stops when tritonserver is gone. It needs explicit model
# control (the load API) and HTTP on --http-port=N (default 8000). WATCHDOG_INTERVAL=0 turns it off.
watchdog_interval="${WATCHDOG_INTERVAL:-1}"
http_port=8000
explicit=false
for arg in "$@"; do
    case "${arg}" in
        --http-port=*) http_port="${arg#--http-port=}" ;;
        --model-control-mode=explicit) explicit=true ;;
    esac
done
if [[ "${watchdog_interval}" == "0" ]]; then
    echo "ddpm-tritonserver: WATCHDOG_INTERVAL=0: no watchdog; a model whose stub dies stays broken." >&2
elif [[ "${explicit}" != true ]]; then
    echo "ddpm-tritonserver: no watchdog: it reloads models, which needs --model-control-mode=explicit." >&2
else
    TRITON_ADMIN_KEY="${key}" python3 -m ddpm_triton.watchdog --server-pid "$$" \
        --url "127.0.0.1:${http_port}" --interval "${watchdog_interval}" &
fi

exec tritonserver \
    "--http-restricted-api=${admin_apis}:${admin_header}=${key}" \
    "--grpc-restricted-protocol=${admin_apis}:${admin_header}=${key}" \
    "$@"
