"""Triton kernels for the live GPU path, each behind a PyTorch custom op.

They exist because the compiled fp16 U-Net spends half of a batch-256 call in Inductor's GroupNorm
kernels and most of the rest in cuDNN fp16 convolutions (benchmarks/README.md). There are three:
- a GroupNorm (+SiLU) that reads channels_last memory as it lies and writes fp16 or FP8, used by
  the fp8 blocks and by the fast path's attention;
- a 3x3 convolution that multiplies FP8 on Ada's and Hopper's tensor cores, loading through TMA on
  Hopper, where most of them run warp-specialized (a Gluon kernel);
- an fp16 matmul that adds a residual in its epilogue: attention's output projection.

Importing this package needs `triton`. On a machine without a GPU the Triton kernels run under
Triton's interpreter (TRITON_INTERPRET=1), which is how the tests check them; the Gluon kernel,
which the interpreter cannot run, is compiled for sm_90 there and run on the H100.
"""
