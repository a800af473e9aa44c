"""The HTTP front's checks of a request body, without a server (tests/test_security.py sends the same
requests through the real one): which requests it refuses, with which status and message, and that it
lets everything else through for Triton to answer."""

from __future__ import annotations

import gzip
import json
import math
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ddpm_triton.http_front import HEADER_LENGTH, Refusal, check_inference_header, check_inference_request


def _tensor(shape: list, data: object, name: str = "SEED") -> dict:
    return {"name": name, "shape": shape, "datatype": "INT64", "data": data}


def _nest(values: list[int], shape: list[int]) -> object:
    """`values` as nested lists of `shape`, as a client may send them."""
    if len(shape) <= 1:
        return values
    size = len(values) // shape[0] if shape[0] else 0
    return [_nest(values[i * size : (i + 1) * size], shape[1:]) for i in range(shape[0])]


shapes = st.lists(st.integers(0, 5), min_size=1, max_size=4)


@given(shape=shapes, nested=st.booleans())
def test_data_that_fills_its_shape_goes_through(shape, nested):
    values = list(range(math.prod(shape)))
    check_inference_header({"inputs": [_tensor(shape, _nest(values, shape) if nested else values)]})


@given(shape=shapes, held=st.integers(0, 130))
def test_data_that_does_not_fill_its_shape_is_refused_by_name(shape, held):
    declared = math.prod(shape)
    header = {"inputs": [_tensor([1, 1], [7]), _tensor(shape, list(range(held)), name="STEPS")]}
    if held == declared:
        check_inference_header(header)
        return
    with pytest.raises(Refusal) as refusal:
        check_inference_header(header)
    assert refusal.value.status == 400
    expected = f"input 'STEPS' declares shape {shape}, {declared:,} values, but its 'data' holds {held:,}"
    assert str(refusal.value) == expected


@pytest.mark.parametrize(
    "header",
    [
        None,
        [],
        {"inputs": "SEED"},
        {"inputs": [1, "x", None]},
        {"inputs": [{"name": "SEED", "shape": [2**40, 1], "datatype": "INT64", "parameters": {"binary_data_size": 8}}]},
        {"inputs": [_tensor([-1, 1], [1])]},
        {"inputs": [_tensor([1.5, 1], [1])]},
        {"inputs": [_tensor([True, 1], [1])]},
        {"inputs": [_tensor("2", [1])]},
    ],
    ids=["null", "array", "inputs-not-list", "inputs-not-objects", "binary", "negative", "fraction", "bool", "string"],
)
def test_what_triton_refuses_safely_itself_goes_through(header):
    check_inference_header(header)


def test_a_huge_shape_is_refused_in_json_gzip_deflate_and_before_binary_tensors():
    huge = json.dumps({"inputs": [_tensor([2**40, 1], [1])]}).encode()
    message = "input 'SEED' declares shape [1099511627776, 1], 1,099,511,627,776 values, but its 'data' holds 1"
    bodies = [
        (huge, {}),
        (gzip.compress(huge), {"Content-Encoding": "gzip"}),
        (zlib.compress(huge), {"Content-Encoding": "deflate"}),
        (huge + b"\x00" * 8, {HEADER_LENGTH: str(len(huge))}),  # binary tensors after the JSON header
    ]
    for body, headers in bodies:
        with pytest.raises(Refusal, match=message.replace("[", r"\[").replace("]", r"\]")):
            check_inference_request(body, headers)


def test_bodies_it_cannot_read_as_json_go_to_triton():
    check_inference_request(b"{not json", {})
    check_inference_request(b"\xff\xfe", {})
    check_inference_request(b"{}", {"Content-Encoding": "br"})  # Triton refuses encodings it lacks


def test_json_nested_too_deeply_is_refused():
    deep = b'{"inputs": [{"name": "SEED", "shape": [1], "data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}]}"
    with pytest.raises(Refusal, match="nested too deeply") as refusal:
        check_inference_request(deep, {})
    assert refusal.value.status == 400


def test_a_compressed_body_is_bounded_by_what_it_inflates_to():
    with pytest.raises(Refusal, match=r"inflates to over 1,000 bytes") as refusal:
        check_inference_request(gzip.compress(b" " * 1001), {"Content-Encoding": "gzip"}, limit=1000)
    assert refusal.value.status == 413
    check_inference_request(gzip.compress(b" " * 1000), {"Content-Encoding": "gzip"}, limit=1000)
    with pytest.raises(Refusal, match="the gzip request body does not inflate") as refusal:
        check_inference_request(b"not gzip", {"Content-Encoding": "gzip"})
    assert refusal.value.status == 400
