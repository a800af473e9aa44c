"""Triton kernels for the fp8 U-Net (`ddpm_triton.fp8`), each behind a PyTorch custom op.

They exist because the compiled fp16 U-Net spends half of a batch-256 call in Inductor's GroupNorm
kernels and most of the rest in cuDNN fp16 convolutions (benchmarks/README.md): a GroupNorm+SiLU
that reads channels_last memory as it lies and writes FP8, and a 3x3 convolution that multiplies
FP8 on Hopper's tensor cores, take both halves down. Importing this package needs `triton`; on a
machine without a GPU the kernels run under Triton's interpreter (TRITON_INTERPRET=1), which is
how the tests check them.
"""
