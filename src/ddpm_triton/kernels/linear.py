"""residual + x @ weight.T + bias in one fp16 matmul: attention's output projection and its residual add.

Apart, the projection writes its output and a pointwise kernel reads it back with the residual;
that add was the largest of Inductor's kernels left in the compiled fp8 U-Net (0.034 ms of each
16x16 attention block at batch 256, on the H100). Here the epilogue adds the residual as it
stores. cuBLAS cannot do both: its bias epilogue and its C input are separate calls in PyTorch.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _linear_residual_kernel(
    x_ptr,  # [M, K] fp16
    w_ptr,  # [N, K] fp16
    bias_ptr,  # [N] fp16 or fp32
    res_ptr,  # [M, N] fp16
    out_ptr,  # [M, N] fp16
    M,
    N,
    K,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0)
    blocks_n = tl.cdiv(N, BLOCK_N)
    rows = ((pid // blocks_n) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    cols = (pid % blocks_n) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask, n_mask = rows < M, cols < N
    k = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + k
        a = tl.load(x_ptr + rows[:, None] * K + kk[None, :], mask=m_mask[:, None] & (kk < K)[None, :], other=0.0)
        b = tl.load(w_ptr + cols[None, :] * K + kk[:, None], mask=(kk < K)[:, None] & n_mask[None, :], other=0.0)
        acc = tl.dot(a, b, acc)
    mask = m_mask[:, None] & n_mask[None, :]
    where = rows[:, None] * N + cols[None, :]
    acc += tl.load(bias_ptr + cols, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    acc += tl.load(res_ptr + where, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + where, acc.to(tl.float16), mask=mask)


def _check(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor) -> None:
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"linear_residual multiplies [M, K] by [N, K].T, not {tuple(x.shape)} by {tuple(weight.shape)}")
    if bias.shape != (weight.shape[0],) or residual.shape != (x.shape[0], weight.shape[0]):
        raise ValueError(f"bias {tuple(bias.shape)} and residual {tuple(residual.shape)} do not fit the output {(x.shape[0], weight.shape[0])}")
    for name, t in (("x", x), ("weight", weight), ("residual", residual)):
        if t.dtype != torch.float16:
            raise ValueError(f"linear_residual takes float16 tensors; {name} is {t.dtype}")


@torch.library.custom_op("ddpm_triton::linear_residual", mutates_args=())
def linear_residual(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """residual + x @ weight.T + bias, float16: x [M, K], weight [N, K], bias [N] (fp16 or fp32, read
    as it is: a cast would be a kernel of its own), residual [M, N]."""
    _check(x, weight, bias, residual)
    (m, k), n = x.shape, weight.shape[0]
    out = torch.empty((m, n), dtype=torch.float16, device=x.device)
    block_n, block_k = min(128, max(16, triton.next_power_of_2(n))), min(64, max(16, triton.next_power_of_2(k)))
    # 128x128x64 tiles, 4 warps: the fastest of eight configurations at the CIFAR-10 U-Net's
    # [65536, 256] x [256, 256] on the H100 (benchmarks/README.md).
    _linear_residual_kernel[(triton.cdiv(m, 128) * triton.cdiv(n, block_n),)](
        x.contiguous(), weight.contiguous(), bias.contiguous(), residual.contiguous(), out, m, n, k,
        BLOCK_M=128, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=4, num_stages=3,
    )  # fmt: skip
    return out


@linear_residual.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    _check(x, weight, bias, residual)
    return x.new_empty((x.shape[0], weight.shape[0]))
