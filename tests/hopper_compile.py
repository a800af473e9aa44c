"""Compiles `conv3x3_hopper`'s Gluon kernel for sm_90 and prints what the tests check, as JSON.

A script rather than test code: test_kernels.py runs Triton's interpreter (TRITON_INTERPRET=1, set
before triton is imported), under which the reductions' combine functions are interpreted ones that
Gluon cannot compile. The test runs this in a fresh process without it.

    python tests/hopper_compile.py N C_IN C_OUT HW HAS_ROW STATS HAS_RESIDUAL [SKIP_CHANNELS ...]
"""

from __future__ import annotations

import json
import sys

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.experimental.gluon._runtime import GluonASTSource
from triton.runtime.jit import mangle_type

from ddpm_triton.kernels.conv3x3 import _blocks
from ddpm_triton.kernels.conv3x3_hopper import _conv3x3_fp8_ws_kernel, launch_plan


def compile_for_hopper(
    n: int, c_in: int, c_out: int, hw: int, has_row: bool, stats: bool, has_residual: bool, skip_channels: list[int]
) -> dict[str, object]:  # fmt: skip
    x = torch.zeros(n, c_in, hw, hw, dtype=torch.float8_e4m3fn).contiguous(memory_format=torch.channels_last)
    weight = torch.zeros(c_out, 9 * c_in, dtype=torch.float8_e4m3fn)
    out = torch.empty(n, c_out, hw, hw, dtype=torch.float16).contiguous(memory_format=torch.channels_last)
    row = torch.zeros(n, c_out, dtype=torch.float16) if has_row else None
    statistics = torch.empty(n, 1, 2, c_out) if stats else None
    residual = torch.zeros_like(out) if has_residual else None
    skips = [torch.zeros(n, c, hw, hw, dtype=torch.float16).contiguous(memory_format=torch.channels_last) for c in skip_channels]
    skip_weight = torch.zeros(c_out, sum(skip_channels), dtype=torch.float16) if skip_channels else None
    bias = torch.zeros(c_out)
    _, arguments, options = launch_plan(x, weight, torch.ones(c_out), bias, row, residual, skips, skip_weight, out, statistics, _blocks(c_in, c_out), sms=132)
    names = _conv3x3_fp8_ws_kernel.arg_names
    constants = {name: value for name, value in options.items() if name != "maxnreg"}
    signature = {**{name: mangle_type(value) for name, value in zip(names, arguments)}, **{name: "constexpr" for name in constants}}
    source = GluonASTSource(_conv3x3_fp8_ws_kernel, signature, {(names.index(name),): value for name, value in constants.items()})
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": options["num_warps"], "maxnreg": options["maxnreg"]})
    ptx = compiled.asm["ptx"]
    return {
        "fp8_wgmma": "wgmma.mma_async.sync.aligned" in ptx and ".e4m3.e4m3" in ptx,
        "warp_specialized": "setmaxnreg" in ptx,
        "tma_4d": "cp.async.bulk.tensor.4d" in ptx,
        "shared_bytes": compiled.metadata.shared,
        "fp16_wgmma": ".f16.f16" in ptx,
    }


if __name__ == "__main__":
    n, c_in, c_out, hw, has_row, stats, has_residual, *skip_channels = (int(a) for a in sys.argv[1:])
    print(json.dumps(compile_for_hopper(n, c_in, c_out, hw, bool(has_row), bool(stats), bool(has_residual), skip_channels)))
