"""`gpu_load`: what a bench row records of the GPU's clock and power."""

import shutil
import time

import pytest

from ddpm_triton.gpu_load import GpuLoad, GpuLoadSampler, parse_sample, summarize


def test_a_sample_parses_as_nvidia_smi_prints_it() -> None:
    # Lines as the H100 printed them during the fp8 sampler's 1000-step requests and its graph replays.
    assert parse_sample("1800, 703.44, 0x0000000000000004") == (1800.0, 703.44, True)
    assert parse_sample("1980, 658.69, 0x0000000000000000") == (1980.0, 658.69, False)
    assert parse_sample("1410, 300.12, 0x0000000000000005") == (1410.0, 300.12, True)  # idle and capped at once
    with pytest.raises(ValueError):
        parse_sample("1980, [N/A], 0x0000000000000000")  # a GPU that reports no power: the sampler stops


def test_a_measurement_is_summarised_by_medians_and_the_capped_share() -> None:
    samples = [(1800.0, 703.0, True), (1890.0, 694.0, True), (1980.0, 658.0, False), (1965.0, 669.0, True)]
    assert summarize(samples) == GpuLoad(sm_clock_mhz=1927.5, power_w=681.5, power_capped=0.75)
    assert summarize([]) is None


def test_the_sampler_records_what_the_host_has() -> None:
    with GpuLoadSampler(interval_s=0.01) as sampler:
        time.sleep(0.2)
    load = sampler.load()
    if shutil.which("nvidia-smi") is None:  # a CPU host, as in CI: the measurement records no load
        assert load is None
    else:
        assert load is not None and load.sm_clock_mhz > 0 and load.power_w > 0 and 0 <= load.power_capped <= 1


def test_an_inactive_sampler_queries_nothing() -> None:
    with GpuLoadSampler(active=False) as sampler:
        time.sleep(0.05)
    assert sampler.load() is None
