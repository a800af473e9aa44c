"""benchmarks/unet_kernels.py's binning, on kernel names a compiled CIFAR-10 U-Net launched on an H100."""

from __future__ import annotations

import pytest

from ddpm_triton.kernel_profile import kernel_category, summarize

H100_KERNELS = {
    "sm90_xmma_fprop_implicit_gemm_f16f16_f16f32_f32_nhwckrsc_nhwc_tilesize128x128x64_warpgroupsize1x1x1_g1_execute": "convolution",
    "triton_poi_fused_clone_convolution_native_group_norm_silu_77": "inductor",
    "triton_red_fused_add_clone_convolution_native_group_norm_silu_unsqueeze_9": "inductor",
    "nvjet_sm90_hsh_128x256_64x4_2x1_v_ssched_bz_coopA_TNN": "matmul",
    "cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7_64x128x256_4x1x1_cga1x1x1_kernel0_0": "attention",
    "void at::native::vectorized_elementwise_kernel<4, at::native::exp_kernel_cuda>": "other",
    "_group_norm_silu_kernel": "groupnorm",  # the project's own kernels (the older name in committed profiles)
    "_group_norm_kernel": "groupnorm",
    "_group_norm_resident_kernel": "groupnorm",
    "_conv3x3_fp8_kernel": "convolution",
    "_conv3x3_fp8_tma_kernel": "convolution",
    "_conv3x3_fp8_ws_kernel": "convolution",  # the Gluon kernel
    "_linear_residual_kernel": "matmul",
}


@pytest.mark.parametrize("name, category", H100_KERNELS.items())
def test_kernels_are_binned_by_what_they_compute_not_by_the_ops_their_name_mentions(name, category):
    assert kernel_category(name) == category


def test_summary_is_per_unet_call_and_sorted_by_time():
    conv, norm = list(H100_KERNELS)[:2]
    rows, categories = summarize([(conv, 3000.0, 37 * 5), (norm, 1000.0, 10), (conv, 2000.0, 0)], unet_calls=5)
    assert [(r.name, r.category, r.calls, r.ms) for r in rows] == [(conv, "convolution", 37.0, 1.0), (norm, "inductor", 2.0, 0.2)]
    assert categories == {"convolution": 1.0, "inductor": 0.2}
