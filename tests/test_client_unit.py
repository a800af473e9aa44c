"""The client's parts that need no server: arguments to tensors, responses to images, the retry policy.

Everything here is real tritonclient objects: InferInputs, InferResults decoded from the bytes a
server sends, exceptions built as tritonclient builds them or raised by tritonclient itself
against a port where nothing listens. The client against the real server is tested elsewhere.
"""

from __future__ import annotations

import asyncio
import json
import socket

import aiohttp
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from ddpm_client import AsyncDDPMClient, DDPMClient, GenerationError, contract
from ddpm_client.cli import main
from ddpm_client.images import grid, save_each, save_grid, to_pil
from ddpm_client.model_info import ModelInfo
from ddpm_client.requests import (
    Batch,
    Generation,
    Options,
    build_inputs,
    decode_images,
    expand_labels,
    expand_seeds,
    infer_arguments,
    requested_outputs,
    split_batches,
)
from ddpm_client.retry import RetryPolicy, as_generation_error, is_retryable
from ddpm_client.transport import Endpoint, default_url
from geventhttpclient.response import HTTPConnectionClosed
from google.protobuf.json_format import MessageToJson
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from tritonclient.grpc import model_config_pb2, service_pb2
from tritonclient.utils import InferenceServerException, deserialize_bytes_tensor, triton_to_np_dtype

PROTOCOLS = ("grpc", "http")
TRITON = {"grpc": grpcclient, "http": httpclient}
ALL_OPTIONS = Options(steps=20, sampler="ddim", eta=0.5, guidance_scale=2.0)


def wire_values(tensor) -> np.ndarray:
    """What an InferInput will send, read back from its serialized bytes (tritonclient keeps them private)."""
    raw = tensor._get_content() if isinstance(tensor, grpcclient.InferInput) else tensor._get_binary_data()
    if tensor.datatype() == "BYTES":
        return deserialize_bytes_tensor(raw).reshape(tensor.shape())
    return np.frombuffer(raw, triton_to_np_dtype(tensor.datatype())).reshape(tensor.shape())


def batch_of(seeds, labels=None) -> Batch:
    return split_batches(expand_seeds(len(seeds), seeds), expand_labels(len(seeds), labels), len(seeds))[0]


def closed_port() -> int:
    """A localhost port nothing listens on: tritonclient's own connection errors, no server involved."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- seeds and labels -------------------------------------------------------------------------


def test_an_int_seed_numbers_the_images_from_it():
    seeds = expand_seeds(4, 10)
    assert seeds.dtype == np.int64 and seeds.tolist() == [10, 11, 12, 13]


def test_a_seed_sequence_is_kept_as_given():
    assert expand_seeds(3, [7, 3, 7]).tolist() == [7, 3, 7]
    assert expand_seeds(2, np.array([5, 6], dtype=np.int32)).dtype == np.int64


@pytest.mark.parametrize("seed", [[1, 2], [1, 2, 3, 4], [[1, 2, 3]], "abc", [1.5, 2, 3], [True, 2, 3]])
def test_a_bad_seed_argument_is_a_value_error(seed):
    with pytest.raises(ValueError, match="seed"):
        expand_seeds(3, seed)


def test_a_seed_beyond_int64_is_refused_not_wrapped():
    with pytest.raises(ValueError, match="SEED value 9223372036854775808 does not fit"):
        expand_seeds(2, 2**63 - 1)


def test_labels_repeat_an_int_and_leave_ranges_to_the_server():
    assert expand_labels(3, None) is None
    assert expand_labels(3, contract.NO_LABEL).tolist() == [-1, -1, -1]
    labels = expand_labels(3, [0, 999, -7])  # out of range for any model: the server says so, not the client
    assert labels.dtype == np.int32 and labels.tolist() == [0, 999, -7]
    with pytest.raises(ValueError, match="class_label must be an int or a sequence of n=3"):
        expand_labels(3, [1, 2])


@pytest.mark.parametrize("n", [0, -1, 2.0, True, "4"])
def test_n_must_be_a_positive_integer(n):
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        Generation.of(n, 0, None, Options(), "numpy")


def test_output_must_be_numpy_or_pil():
    with pytest.raises(ValueError, match="output must be one of numpy, pil"):
        Generation.of(1, 0, None, Options(), "png")


@pytest.mark.parametrize(
    "kwargs", [{"steps": 2.5}, {"steps": True}, {"sampler": 1}, {"eta": "0"}, {"guidance_scale": None, "eta": [0]}]
)
def test_options_of_the_wrong_type_are_refused(kwargs):
    with pytest.raises(ValueError, match="must be"):
        Options(**kwargs)


def test_options_out_of_range_are_left_to_the_server():
    assert Options(steps=-5, sampler="euler", eta=7.0, guidance_scale=-1).steps == -5


# --- batches ----------------------------------------------------------------------------------


@given(st.integers(1, 300), st.integers(1, 64), st.booleans())
def test_batches_cover_the_call_in_order_within_the_limit(n, max_batch_size, labelled):
    seeds = expand_seeds(n, 1000)
    labels = expand_labels(n, [i % 10 for i in range(n)] if labelled else None)
    batches = split_batches(seeds, labels, max_batch_size)
    assert [i for b in batches for i in b.images] == list(range(n))
    assert all(len(b.images) == max_batch_size for b in batches[:-1]) and 1 <= len(batches[-1].images) <= max_batch_size
    assert np.concatenate([b.seeds for b in batches]).tolist() == seeds.tolist()
    for b in batches:
        assert (b.labels is None) == (not labelled)
        if labelled:
            assert b.labels.tolist() == labels[b.images.start : b.images.stop].tolist()


def test_a_model_without_batching_breaks_the_contract():
    with pytest.raises(GenerationError, match="max_batch_size 0"):
        split_batches(expand_seeds(2, 0), None, 0)


# --- request tensors --------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_every_input_has_the_contract_name_dtype_and_shape(protocol):
    batch = batch_of([4, 5, 6], labels=[1, -1, 2])
    tensors = build_inputs(batch, ALL_OPTIONS, protocol)
    assert all(isinstance(t, TRITON[protocol].InferInput) for t in tensors)
    assert [(t.name(), t.datatype(), t.shape()) for t in tensors] == [
        (spec.name, spec.datatype, [3, *spec.dims]) for spec in contract.INPUTS
    ]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_every_input_carries_its_value_for_each_image(protocol):
    tensors = build_inputs(batch_of([4, 5, 6], labels=[1, -1, 2]), ALL_OPTIONS, protocol)
    values = {t.name(): wire_values(t)[:, 0].tolist() for t in tensors}
    assert values == {
        "SEED": [4, 5, 6],
        "STEPS": [20] * 3,
        "SAMPLER": [b"ddim"] * 3,
        "ETA": [0.5] * 3,
        "CLASS_LABEL": [1, -1, 2],
        "GUIDANCE_SCALE": [2.0] * 3,
    }


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_options_not_given_are_not_sent_so_server_defaults_apply(protocol):
    tensors = build_inputs(batch_of([0, 1]), Options(), protocol)
    assert [t.name() for t in tensors] == ["SEED"]
    tensors = build_inputs(batch_of([0, 1]), Options(eta=0.0), protocol)  # 0 is a value, not an absence
    assert [t.name() for t in tensors] == ["SEED", "ETA"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_infer_asks_for_image_with_the_protocols_timeout(protocol):
    endpoint = Endpoint("localhost:1", protocol, "ddpm", timeout_s=7.0)
    arguments = infer_arguments(endpoint, batch_of([0]), Options())
    assert arguments["model_name"] == "ddpm"
    assert [o.name() for o in arguments["outputs"]] == ["IMAGE"]
    assert arguments.get("client_timeout") == (7.0 if protocol == "grpc" else None)


def test_http_asks_for_image_as_binary():
    (output,) = requested_outputs("http")
    assert output._get_tensor()["parameters"]["binary_data"] is True


# --- responses --------------------------------------------------------------------------------

IMAGES = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)


def grpc_result(images: np.ndarray, datatype: str = "UINT8"):
    response = service_pb2.ModelInferResponse(model_name="ddpm")
    output = response.outputs.add(name="IMAGE", datatype=datatype)
    output.shape.extend(images.shape)
    response.raw_output_contents.append(images.tobytes())
    return grpcclient.InferResult(response)


def http_result(images: np.ndarray):
    header = json.dumps(
        {
            "model_name": "ddpm",
            "outputs": [
                {
                    "name": "IMAGE",
                    "datatype": "UINT8",
                    "shape": list(images.shape),
                    "parameters": {"binary_data_size": images.nbytes},
                }
            ],
        }
    ).encode()
    return httpclient.InferResult.from_response_body(header + images.tobytes(), header_length=len(header))


@pytest.mark.parametrize("result", [grpc_result, http_result], ids=PROTOCOLS)
def test_images_are_decoded_from_either_protocol(result):
    np.testing.assert_array_equal(decode_images(result(IMAGES), batch_of([0, 1])), IMAGES)


def test_a_response_against_the_contract_is_a_generation_error():
    with pytest.raises(
        GenerationError, match=r"expected IMAGE uint8 \[3, -1, -1, -1\], got IMAGE uint8 \[2, 4, 4, 3\]"
    ):
        decode_images(grpc_result(IMAGES), batch_of([0, 1, 2]))
    with pytest.raises(GenerationError, match="got IMAGE int8"):
        decode_images(grpc_result(IMAGES.view(np.int8), "INT8"), batch_of([0, 1]))
    with pytest.raises(GenerationError, match="got no IMAGE"):
        decode_images(grpcclient.InferResult(service_pb2.ModelInferResponse()), batch_of([0]))


def test_a_call_returns_numpy_or_pil_in_call_order():
    call = Generation.of(3, 0, None, Options(), "pil")
    pictures = call.result([IMAGES, IMAGES[:1]])
    assert [p.size for p in pictures] == [(4, 4)] * 3 and pictures[2].tobytes() == IMAGES[0].tobytes()
    assert Generation.of(3, 0, None, Options(), "numpy").result([IMAGES, IMAGES[:1]]).shape == (3, 4, 4, 3)


# --- model config -----------------------------------------------------------------------------


def config_message(**parameters: str) -> model_config_pb2.ModelConfig:
    config = model_config_pb2.ModelConfig(name="ddpm", max_batch_size=8)
    for key, value in parameters.items():
        config.parameters[key].string_value = value
    return config


FACTS = {
    "image_size": "28",
    "channels": "1",
    "num_classes": "10",
    "timesteps": "1000",
    "default_steps": "50",
    "default_sampler": "ddim",
}


def test_model_info_types_the_facts_of_a_grpc_config():
    response = service_pb2.ModelConfigResponse(config=config_message(**FACTS, onnx_opset="17"))
    as_json = json.loads(MessageToJson(response, preserving_proto_field_name=True))  # what get_model_config returns
    info = ModelInfo.from_config(Endpoint("h:1", "grpc", "ddpm", 1.0).unwrap_config(as_json))
    assert (info.name, info.max_batch_size, info.image_size, info.channels, info.num_classes) == ("ddpm", 8, 28, 1, 10)
    assert (info.timesteps, info.default_steps, info.default_sampler) == (1000, 50, "ddim")
    assert info.parameters["onnx_opset"] == "17"


def test_model_info_tolerates_missing_facts_in_an_http_config():
    as_json = json.loads(MessageToJson(config_message(image_size="32"), preserving_proto_field_name=True))
    info = ModelInfo.from_config(Endpoint("h:1", "http", "ddpm", 1.0).unwrap_config(as_json))
    assert (info.max_batch_size, info.image_size, info.num_classes, info.default_sampler) == (8, 32, None, None)


def test_a_fact_that_is_not_a_number_is_the_servers_fault():
    as_json = json.loads(MessageToJson(config_message(num_classes="ten"), preserving_proto_field_name=True))
    with pytest.raises(GenerationError, match="parameter num_classes should be an integer, got 'ten'"):
        ModelInfo.from_config(as_json)


# --- retry policy -----------------------------------------------------------------------------

RETRYABLE = [
    InferenceServerException("failed to connect to all addresses", status="StatusCode.UNAVAILABLE"),
    InferenceServerException("Server not ready", status="503"),
    ConnectionRefusedError(111, "Connection refused"),
    ConnectionResetError(104, "Connection reset by peer"),
    aiohttp.ClientConnectorError(None, OSError(111, "Connect call failed")),
    aiohttp.ServerDisconnectedError(),
    HTTPConnectionClosed("connection closed."),  # tritonclient.http: the server went away mid-request
]
FINAL = [
    InferenceServerException("STEPS must be in [1, 1000], got 0", status="StatusCode.INVALID_ARGUMENT"),
    InferenceServerException("STEPS must be in [1, 1000], got 0", status="400"),
    InferenceServerException("Deadline Exceeded", status="StatusCode.DEADLINE_EXCEEDED"),
    InferenceServerException("model failed", status="StatusCode.INTERNAL"),
    InferenceServerException("model failed", status="500"),
    InferenceServerException("Request for unknown model: 'ddpm' is not found", status="StatusCode.NOT_FOUND"),
    TimeoutError("timed out"),
    asyncio.TimeoutError(),
    aiohttp.ServerTimeoutError("read timed out"),  # a connection error too, but a timeout first
]


@pytest.mark.parametrize("error", RETRYABLE, ids=repr)
def test_an_unreachable_server_is_retried(error):
    assert is_retryable(error)


@pytest.mark.parametrize("error", FINAL, ids=repr)
def test_invalid_requests_failures_and_timeouts_are_not_retried(error):
    assert not is_retryable(error)


class Flaky:
    """A request that fails with the given errors, in turn, then succeeds."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors, self.calls = list(errors), 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "images"

    async def coroutine(self) -> str:
        return self()


def test_retries_until_the_server_answers():
    flaky = Flaky(RETRYABLE[0], RETRYABLE[1], RETRYABLE[2])
    assert RetryPolicy(retries=3, backoff_s=0).call(flaky) == "images" and flaky.calls == 4


def test_retries_run_out():
    flaky = Flaky(*[RETRYABLE[0]] * 5)
    with pytest.raises(GenerationError) as caught:
        RetryPolicy(retries=2, backoff_s=0).call(flaky)
    assert flaky.calls == 3 and caught.value.attempts == 3 and caught.value.status == "StatusCode.UNAVAILABLE"


def test_an_invalid_request_fails_at_once_with_the_servers_message_and_the_batch():
    flaky = Flaky(FINAL[0])
    with pytest.raises(GenerationError) as caught:
        RetryPolicy(retries=3, backoff_s=0).call(flaky, batch_of([40, 41]))
    error = caught.value
    assert flaky.calls == 1
    assert error.message == "STEPS must be in [1, 1000], got 0"  # verbatim
    assert (error.status, error.input_name, error.images, error.seeds) == (
        "StatusCode.INVALID_ARGUMENT",
        "STEPS",
        range(2),
        (40, 41),
    )
    assert str(error) == "[StatusCode.INVALID_ARGUMENT] STEPS must be in [1, 1000], got 0 (images 0..1, input STEPS)"


def test_the_async_policy_is_the_same_policy():
    flaky = Flaky(RETRYABLE[4], FINAL[1])
    with pytest.raises(GenerationError, match=r"^\[400\] STEPS must be in") as caught:
        asyncio.run(RetryPolicy(retries=3, backoff_s=0).call_async(flaky.coroutine))
    assert flaky.calls == 2 and caught.value.attempts == 2


def test_a_bug_is_not_dressed_up_as_a_server_error():
    with pytest.raises(KeyError):
        RetryPolicy(backoff_s=0).call(Flaky(KeyError("oops")))


def test_backoff_doubles():
    assert [RetryPolicy(backoff_s=0.5).delay_s(attempt) for attempt in (1, 2, 3)] == [0.5, 1.0, 2.0]


@pytest.mark.parametrize(
    ("message", "input_name"),
    [
        ("GUIDANCE_SCALE must be in [0, 50], got 99", "GUIDANCE_SCALE"),
        ("ETA is for SAMPLER ddim only", "ETA"),
        ("CLASS_LABEL must be in [-1, 9], got 10", "CLASS_LABEL"),
        ("the model failed: out of memory", None),
    ],
)
def test_the_input_named_by_the_server_is_picked_out(message, input_name):
    error = as_generation_error(InferenceServerException(message, status="400"))
    assert (error.message, error.input_name) == (message, input_name)


def test_aiohttp_timeouts_still_say_what_happened():
    assert as_generation_error(asyncio.TimeoutError()).message == "TimeoutError: timed out"


# --- clients against a port where nothing listens ---------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_sync_client_retries_a_refused_connection_then_reports_it(protocol):
    with DDPMClient(f"127.0.0.1:{closed_port()}", protocol, retries=2, backoff_s=0, timeout_s=5) as client:
        assert client.server_ready() is False
        with pytest.raises(GenerationError) as caught:
            client.generate(2)
    assert caught.value.attempts == 3 and "refused" in caught.value.message.lower()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_async_client_retries_a_refused_connection_then_reports_it(protocol):
    async def scenario() -> GenerationError:
        async with AsyncDDPMClient(f"127.0.0.1:{closed_port()}", protocol, retries=1, backoff_s=0) as client:
            assert await client.server_ready() is False
            with pytest.raises(GenerationError) as caught:
                await client.generate(2)
            return caught.value

    error = asyncio.run(scenario())
    assert error.attempts == 2 and "connect" in error.message.lower()


def test_arguments_are_checked_before_anything_is_sent():
    with DDPMClient(f"127.0.0.1:{closed_port()}", retries=0) as client, pytest.raises(ValueError, match="seed"):
        client.generate(3, seed=[1, 2])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"protocol": "grpcs"}, "protocol must be one of grpc, http"),
        ({"url": "http://localhost:8000"}, "without a scheme"),
        ({"timeout_s": 0}, "timeout_s must be > 0"),
        ({"retries": -1}, "retries and backoff_s must be >= 0"),
    ],
)
def test_bad_client_settings_are_value_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DDPMClient(**kwargs)


def test_the_default_url_follows_the_protocol():
    assert (default_url("grpc"), default_url("http")) == ("localhost:8001", "localhost:8000")
    assert DDPMClient(protocol="http").endpoint.url == "localhost:8000"


# --- images and the command line ----------------------------------------------------------------


def test_to_pil_keeps_grayscale_and_color():
    assert [p.mode for p in to_pil(np.zeros((1, 4, 4, 1), np.uint8))] == ["L"]
    assert [p.mode for p in to_pil(np.zeros((1, 4, 4, 3), np.uint8))] == ["RGB"]
    with pytest.raises(ValueError, match="expected uint8"):
        to_pil(np.zeros((4, 4, 3), np.uint8))


def test_a_labelled_grid_has_one_row_per_class():
    images = np.zeros((6, 32, 32, 1), np.uint8)
    plain = grid(images, columns=3, pad=0)
    labelled = grid(images, labels=[2, 0, 2, 0, -1, 2], pad=0)  # rows: -1 (1 image), 0 (2), 2 (3)
    assert plain.size == (3 * 64, 2 * 64)  # 32-pixel images are enlarged to 64
    assert labelled.height == 3 * 64 and labelled.width > 3 * 64  # the class names sit left of the rows


def test_images_are_written_as_pngs(tmp_path):
    images = np.full((2, 8, 8, 3), 200, np.uint8)
    path = save_grid(images, tmp_path / "sub" / "grid.png")
    assert Image.open(path).format == "PNG"
    written = save_each(images, tmp_path / "each", seeds=[7, 8], labels=[3, 3])
    assert [p.name for p in written] == ["0000_seed7_class3.png", "0001_seed8_class3.png"]
    assert np.array(Image.open(written[1])).tolist() == images[1].tolist()


def test_cli_reports_an_unreachable_server(capsys):
    url = f"127.0.0.1:{closed_port()}"
    assert main(["health", "--url", url]) == 1
    assert main(["generate", "-n", "2", "--url", url, "--retries", "0", "--protocol", "http"]) == 1
    assert "ddpm-client: error: ConnectionRefusedError" in capsys.readouterr().err


def test_cli_refuses_two_image_counts(capsys):
    assert main(["generate", "-n", "4", "--per-class", "2", "--url", f"127.0.0.1:{closed_port()}"]) == 2
    assert "-n and --per-class" in capsys.readouterr().err
