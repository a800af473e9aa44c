"""Property tests of the `ddpm` request validation: every value is either accepted as-is or named in the error."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ddpm_triton.serving.requests import Defaults, InvalidInput, ModelFacts, parse

FACTS = ModelFacts(timesteps=1000, num_classes=10, max_batch_size=8)
UNCONDITIONAL = ModelFacts(timesteps=1000, num_classes=0, max_batch_size=8)
DEFAULTS = Defaults(steps=50, sampler="ddim", eta=0.0, guidance_scale=2.0)


def column(values, dtype):
    return np.asarray(values, dtype=dtype).reshape(-1, 1)


def request(n, **inputs):
    arrays = {"SEED": column(np.arange(n), np.int64)}
    dtypes = {"STEPS": np.int32, "SAMPLER": np.object_, "ETA": np.float32, "CLASS_LABEL": np.int32, "GUIDANCE_SCALE": np.float32}
    for name, values in inputs.items():
        arrays[name] = column(values, dtypes[name])
    return arrays


int32 = st.integers(-(2**31), 2**31 - 1)
floats = st.floats(width=32)


@given(st.lists(int32, min_size=1, max_size=8))
def test_steps(values):
    try:
        options = parse(request(len(values), STEPS=values), FACTS, DEFAULTS)
    except InvalidInput as err:
        assert any(not 1 <= v <= 1000 for v in values) and str(err).startswith("STEPS must be in [1, 1000]")
    else:
        assert options.steps.tolist() == values


@given(st.lists(floats, min_size=1, max_size=8))
def test_eta(values):
    try:
        options = parse(request(len(values), SAMPLER=["ddim"] * len(values), ETA=values), FACTS, DEFAULTS)
    except InvalidInput as err:
        assert any(not (0 <= v <= 1) for v in values) and str(err).startswith("ETA must be in [0, 1]")
    else:
        assert options.eta.tolist() == pytest.approx(values)


@given(st.lists(int32, min_size=1, max_size=8))
def test_class_label(values):
    try:
        options = parse(request(len(values), CLASS_LABEL=values), FACTS, DEFAULTS)
    except InvalidInput as err:
        assert any(not -1 <= v <= 9 for v in values) and str(err).startswith("CLASS_LABEL must be in [-1, 9]")
    else:  # -1 asks for an unconditional image: the null label, num_classes
        assert options.labels.tolist() == [10 if v == -1 else v for v in values]


@given(st.lists(floats, min_size=1, max_size=8))
def test_guidance_scale(values):
    try:
        options = parse(request(len(values), GUIDANCE_SCALE=values), FACTS, DEFAULTS)
    except InvalidInput as err:
        assert any(not (0 <= v <= 50) for v in values) and str(err).startswith("GUIDANCE_SCALE must be in [0, 50]")
    else:
        assert options.guidance.tolist() == pytest.approx(values)


@given(st.lists(st.text(max_size=8) | st.sampled_from(["ddpm", "ddim"]), min_size=1, max_size=8))
def test_sampler(values):
    raw = [v.encode() for v in values]
    try:
        options = parse(request(len(values), SAMPLER=raw), FACTS, DEFAULTS)
    except InvalidInput as err:
        assert any(v not in ("ddpm", "ddim") for v in values) and str(err).startswith("SAMPLER must be one of ddpm, ddim")
    else:  # ddpm is ddim with eta = 1
        assert options.eta.tolist() == [1.0 if v == "ddpm" else 0.0 for v in values]


def test_absent_inputs_take_the_defaults():
    options = parse(request(3), FACTS, DEFAULTS)
    assert options.steps.tolist() == [50] * 3 and options.eta.tolist() == [0.0] * 3
    assert options.labels.tolist() == [10] * 3 and options.guidance.tolist() == [2.0] * 3


@pytest.mark.parametrize("name,value", [("CLASS_LABEL", 3), ("GUIDANCE_SCALE", 2.0)])
def test_conditioning_an_unconditional_model_is_refused(name, value):
    with pytest.raises(InvalidInput, match=f"{name} is not accepted: this model is unconditional"):
        parse(request(1, **{name: [value]}), UNCONDITIONAL, DEFAULTS)


def test_eta_with_ddpm_is_refused():
    with pytest.raises(InvalidInput, match="ETA applies to SAMPLER=ddim only"):
        parse(request(1, SAMPLER=[b"ddpm"], ETA=[0.0]), FACTS, DEFAULTS)


def test_batch_bounds():
    with pytest.raises(InvalidInput, match="SEED is empty"):
        parse({"SEED": np.zeros((0, 1), np.int64)}, FACTS, DEFAULTS)
    with pytest.raises(InvalidInput, match="at most 8 per request"):
        parse(request(9), FACTS, DEFAULTS)
    with pytest.raises(InvalidInput, match=r"STEPS must have shape \[2, 1\]"):
        parse({"SEED": column([1, 2], np.int64), "STEPS": column([5], np.int32)}, FACTS, DEFAULTS)
