#!/usr/bin/env bash
# ddpm-tritonserver: `tritonserver "$@"` with the APIs that change the server's state behind a key.
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

exec tritonserver \
    "--http-restricted-api=${admin_apis}:${admin_header}=${key}" \
    "--grpc-restricted-protocol=${admin_apis}:${admin_header}=${key}" \
    "$@"
