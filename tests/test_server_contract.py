"""The `ddpm` wire contract, checked through the real tritonserver with plain tritonclient calls.

These tests know only the contract (names, dtypes, semantics), not the project's client library:
they are what an independent client would rely on.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.server

STEPS = 4  # few denoising steps keep the CPU tests quick; the contract does not depend on it


def _inputs(module, seeds, **options):
    seeds = np.asarray(seeds, dtype=np.int64).reshape(-1, 1)
    n = len(seeds)
    arrays = {"SEED": seeds, "STEPS": np.full((n, 1), options.pop("STEPS", STEPS), np.int32)}
    for name, value in options.items():
        dtype = {"SAMPLER": np.object_, "ETA": np.float32, "CLASS_LABEL": np.int32, "GUIDANCE_SCALE": np.float32}[name]
        arrays[name] = np.asarray(value if isinstance(value, list) else [value] * n, dtype=dtype).reshape(n, 1)
    inputs = []
    for name, array in arrays.items():
        datatype = "BYTES" if array.dtype == np.object_ else {np.int64: "INT64", np.int32: "INT32", np.float32: "FP32"}[array.dtype.type]
        tensor = module.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def generate_grpc(server, seeds, **options) -> np.ndarray:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    return client.infer("ddpm", _inputs(grpcclient, seeds, **options)).as_numpy("IMAGE")


def generate_http(server, seeds, **options) -> np.ndarray:
    client = httpclient.InferenceServerClient(server.http_url)
    return client.infer("ddpm", _inputs(httpclient, seeds, **options)).as_numpy("IMAGE")


def test_ddpm_metadata_is_the_contract(server):
    client = httpclient.InferenceServerClient(server.http_url)
    config = client.get_model_config("ddpm")
    assert config["max_batch_size"] > 0
    inputs = {i["name"]: (i["data_type"], i["dims"], i.get("optional", False)) for i in config["input"]}
    assert inputs == {
        "SEED": ("TYPE_INT64", [1], False),
        "STEPS": ("TYPE_INT32", [1], True),
        "SAMPLER": ("TYPE_STRING", [1], True),
        "ETA": ("TYPE_FP32", [1], True),
        "CLASS_LABEL": ("TYPE_INT32", [1], True),
        "GUIDANCE_SCALE": ("TYPE_FP32", [1], True),
    }
    (output,) = config["output"]
    assert output["name"] == "IMAGE" and output["data_type"] == "TYPE_UINT8" and len(output["dims"]) == 3


def test_images_are_uint8_hwc(server):
    images = generate_grpc(server, [1, 2, 3])
    assert images.dtype == np.uint8 and images.shape[0] == 3 and images.ndim == 4
    assert images.std() > 0  # not a blank canvas


@pytest.mark.parametrize("options", [{}, {"SAMPLER": "ddpm"}, {"SAMPLER": "ddim", "ETA": 0.5}])
def test_repeated_requests_give_identical_bytes(server, options):
    first = generate_grpc(server, [10, 11], **options)
    again = generate_grpc(server, [10, 11], **options)
    assert first.tobytes() == again.tobytes()


def test_http_and_grpc_give_identical_bytes(server):
    assert generate_grpc(server, [5, 6], SAMPLER="ddpm").tobytes() == generate_http(server, [5, 6], SAMPLER="ddpm").tobytes()


def test_image_alone_matches_the_same_seed_in_a_batch(server):
    alone = generate_grpc(server, [77], SAMPLER="ddpm", CLASS_LABEL=3)
    batch = generate_grpc(server, [1, 77, 2, 3], SAMPLER="ddpm", CLASS_LABEL=[0, 3, 5, -1])
    assert np.abs(alone[0].astype(int) - batch[1].astype(int)).mean() <= 2


def test_different_seeds_and_labels_give_different_images(server):
    images = generate_grpc(server, [1, 2, 1], CLASS_LABEL=[4, 4, 7])
    assert not np.array_equal(images[0], images[1]) and not np.array_equal(images[0], images[2])


def test_defaults_come_from_the_model_config(server):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    tensor = grpcclient.InferInput("SEED", [1, 1], "INT64")
    tensor.set_data_from_numpy(np.array([[9]], np.int64))
    implicit = client.infer("ddpm", [tensor]).as_numpy("IMAGE")
    defaults = {p: v["string_value"] for p, v in httpclient.InferenceServerClient(server.http_url).get_model_config("ddpm")["parameters"].items()}
    explicit = generate_grpc(
        server,
        [9],
        STEPS=int(defaults["default_steps"]),
        SAMPLER=defaults["default_sampler"],
        GUIDANCE_SCALE=float(defaults["default_guidance_scale"]),
    )
    assert implicit.tobytes() == explicit.tobytes()


INVALID = [
    ({"STEPS": 0}, "STEPS"),
    ({"STEPS": 1001}, "STEPS"),
    ({"SAMPLER": "euler"}, "SAMPLER"),
    ({"SAMPLER": "ddim", "ETA": float("nan")}, "ETA"),
    ({"SAMPLER": "ddim", "ETA": 1.5}, "ETA"),
    ({"SAMPLER": "ddpm", "ETA": 0.5}, "ETA"),
    ({"CLASS_LABEL": 10}, "CLASS_LABEL"),
    ({"CLASS_LABEL": -2}, "CLASS_LABEL"),
    ({"GUIDANCE_SCALE": -1.0}, "GUIDANCE_SCALE"),
    ({"GUIDANCE_SCALE": float("inf")}, "GUIDANCE_SCALE"),
]


@pytest.mark.parametrize("options,name", INVALID, ids=[f"{n}-{i}" for i, (_, n) in enumerate(INVALID)])
def test_invalid_values_are_rejected_by_name(server, options, name):
    with pytest.raises(InferenceServerException, match=name) as err:
        generate_grpc(server, [1], **options)
    assert "must" in str(err.value) or "only" in str(err.value)
    assert httpclient.InferenceServerClient(server.http_url).is_server_ready()


def test_a_bad_request_does_not_fail_its_neighbours(server):
    """Good and bad requests sent together (so the dynamic batcher may merge them): only the bad one fails."""

    def ask(i: int):
        try:
            return generate_grpc(server, [100 + i], STEPS=0 if i % 3 == 0 else STEPS)
        except InferenceServerException as err:
            return err

    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(ask, range(12)))
    for i, result in enumerate(results):
        if i % 3 == 0:
            assert isinstance(result, InferenceServerException) and "STEPS" in str(result)
        else:
            assert isinstance(result, np.ndarray) and result.shape[0] == 1
