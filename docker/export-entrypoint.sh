#!/bin/sh
# ddpm-export: `ddpm-triton export "$@"`, plus `--data-dir` when CALIBRATION_DIR is set.
#
# CALIBRATION_DIR names the images that int8 calibration reads (a path inside the container, e.g.
# under the mounted /workspace/models). The optional flag lives here because compose files cannot
# add an argument only when a variable is set.
set -eu

if [ -n "${CALIBRATION_DIR:-}" ]; then
    set -- "$@" "--data-dir=${CALIBRATION_DIR}"
fi

exec ddpm-triton export "$@"
