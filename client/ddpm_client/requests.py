"""A `generate` call as Triton requests, and their responses as images.

Pure functions over real tritonclient objects and no connection, shared by the sync and the
async client so that both put the same tensors on the wire. Only what the caller gave becomes a
tensor: an absent optional input is what lets the server apply its configured default.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from PIL import Image

from . import contract
from .contract import TensorSpec
from .errors import GenerationError
from .images import to_pil
from .transport import Endpoint, Protocol, triton_module

IntOrInts = int | Sequence[int] | np.ndarray
Output = Literal["numpy", "pil"]
OUTPUTS: tuple[Output, ...] = ("numpy", "pil")
_NUMPY_DTYPES = {"INT32": np.int32, "INT64": np.int64, "FP32": np.float32, "BYTES": np.object_}
_INT_LIMITS: dict[str, np.iinfo[Any]] = {"INT32": np.iinfo(np.int32), "INT64": np.iinfo(np.int64)}


@dataclass(frozen=True)
class Options:
    """Settings shared by every image of a call; None leaves the input out of the request."""

    steps: int | None = None
    sampler: str | None = None
    eta: float | None = None
    guidance_scale: float | None = None

    def __post_init__(self) -> None:
        """Types only: the server owns the ranges, but a wrong type would be cast silently (2.5 steps -> 2)."""
        for name, (check, kind) in _OPTION_TYPES.items():
            value = getattr(self, name)
            if value is not None and not check(value):
                raise ValueError(f"{name} must be {kind}, got {value!r}")

    def by_input(self) -> dict[TensorSpec, object]:
        """Each option keyed by the contract input that carries it."""
        return {
            contract.STEPS: self.steps,
            contract.SAMPLER: self.sampler,
            contract.ETA: self.eta,
            contract.GUIDANCE_SCALE: self.guidance_scale,
        }


@dataclass(frozen=True)
class Batch:
    """One request: the images `images` (indices within the call) with their seeds and labels."""

    images: range
    seeds: np.ndarray  # int64 [len(images)]
    labels: np.ndarray | None  # int32 [len(images)]; None leaves CLASS_LABEL out

    def failure(self, message: str, **details: Any) -> GenerationError:
        """A GenerationError saying which images of the call, and which seeds, this request lost."""
        return GenerationError(message, images=self.images, seeds=tuple(self.seeds.tolist()), **details)


def expand_seeds(n: int, seed: IntOrInts) -> np.ndarray:
    """One seed per image: `seed` int -> seed..seed+n-1, so a call's images are reproducible one by one."""
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        return _column(contract.SEED, [int(seed) + i for i in range(n)])
    return _per_image(contract.SEED, n, seed, "seed")


def expand_labels(n: int, class_label: IntOrInts | None) -> np.ndarray | None:
    """One class label per image (an int applies to all), or None to leave CLASS_LABEL out."""
    if class_label is None:
        return None
    if isinstance(class_label, (int, np.integer)) and not isinstance(class_label, bool):
        return _column(contract.CLASS_LABEL, [int(class_label)] * n)
    return _per_image(contract.CLASS_LABEL, n, class_label, "class_label")


def split_batches(seeds: np.ndarray, labels: np.ndarray | None, max_batch_size: int) -> list[Batch]:
    """The images of one call as requests the model accepts: at most max_batch_size images each."""
    if max_batch_size < 1:
        raise GenerationError(
            f"the model's config has max_batch_size {max_batch_size}; the ddpm contract needs > 0 (a batch of images)"
        )
    n = len(seeds)
    spans = [slice(start, min(start + max_batch_size, n)) for start in range(0, n, max_batch_size)]
    return [
        Batch(range(span.start, span.stop), seeds[span], None if labels is None else labels[span]) for span in spans
    ]


@dataclass(frozen=True)
class Generation:
    """The arguments of one `generate` call, checked before anything is sent."""

    seeds: np.ndarray
    labels: np.ndarray | None
    options: Options
    output: Output

    @classmethod
    def of(cls, n: int, seed: IntOrInts, class_label: IntOrInts | None, options: Options, output: Output) -> Generation:
        if not _is_int(n) or n < 1:
            raise ValueError(f"n must be an integer >= 1, got {n!r}")
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")
        return cls(expand_seeds(n, seed), expand_labels(n, class_label), options, output)

    def batches(self, max_batch_size: int) -> list[Batch]:
        return split_batches(self.seeds, self.labels, max_batch_size)

    def result(self, parts: Sequence[np.ndarray]) -> np.ndarray | list[Image.Image]:
        """The batches' images, in call order, as the caller asked for them."""
        images = np.concatenate(parts)
        return images if self.output == "numpy" else to_pil(images)


def build_inputs(batch: Batch, options: Options, protocol: Protocol) -> list[Any]:
    """The request tensors of one batch, [batch, *dims] per contract.py; an option only when given."""
    size = len(batch.images)
    shared = {spec: None if v is None else _column(spec, [v] * size) for spec, v in options.by_input().items()}
    columns = {contract.SEED: batch.seeds, contract.CLASS_LABEL: batch.labels, **shared}
    return [_infer_input(spec, values, protocol) for spec in contract.INPUTS if (values := columns[spec]) is not None]


def infer_arguments(endpoint: Endpoint, batch: Batch, options: Options) -> dict[str, Any]:
    """Keyword arguments of the `infer` call of one batch, the same for all four tritonclient clients."""
    return {
        "model_name": endpoint.model,
        "inputs": build_inputs(batch, options, endpoint.protocol),
        "outputs": requested_outputs(endpoint.protocol),
        **endpoint.call_options,
    }


def requested_outputs(protocol: Protocol) -> list[Any]:
    """IMAGE, asked for explicitly so that HTTP returns it as binary rather than as JSON numbers."""
    return [triton_module(protocol).InferRequestedOutput(contract.IMAGE.name)]


def decode_images(result: Any, batch: Batch) -> np.ndarray:
    """uint8 [batch, H, W, C] from an InferResult of either protocol, checked against the contract."""
    images = result.as_numpy(contract.IMAGE.name)
    expected = (len(batch.images), *contract.IMAGE.dims)
    if images is None or images.dtype != np.uint8 or not _matches(images.shape, expected):
        got = "no IMAGE" if images is None else f"IMAGE {images.dtype} {list(images.shape)}"
        raise batch.failure(f"the server broke the contract: expected IMAGE uint8 {list(expected)}, got {got}")
    return images


def _per_image(spec: TensorSpec, n: int, values: object, argument: str) -> np.ndarray:
    """A caller's sequence of per-image values, checked to hold one integer per image."""
    array = np.asarray(values, dtype=object)  # Python objects, so that bools and floats are told from ints
    if array.shape != (n,):
        raise ValueError(f"{argument} must be an int or a sequence of n={n} ints, got shape {list(array.shape)}")
    items = array.tolist()
    if not all(_is_int(item) for item in items):
        raise ValueError(f"{argument} must hold integers, got {items!r}")
    return _column(spec, items)


def _column(spec: TensorSpec, values: list[Any]) -> np.ndarray:
    """Values cast to the input's wire dtype, refusing (rather than wrapping) integers it cannot hold."""
    limits = _INT_LIMITS.get(spec.datatype)
    if limits is not None:
        for value in values:
            if not limits.min <= value <= limits.max:
                raise ValueError(f"{spec.name} value {value} does not fit its wire type {spec.datatype}")
    return np.array(values, dtype=_NUMPY_DTYPES[spec.datatype])


def _matches(shape: tuple[int, ...], expected: tuple[int, ...]) -> bool:
    """Shapes agree, -1 in `expected` matching any size."""
    return len(shape) == len(expected) and all(want in (-1, got) for got, want in zip(shape, expected))


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


_OPTION_TYPES = {
    "steps": (_is_int, "an integer"),
    "sampler": (lambda value: isinstance(value, str), f"a string ({' or '.join(contract.SAMPLERS)})"),
    "eta": (_is_real, "a number"),
    "guidance_scale": (_is_real, "a number"),
}


def _infer_input(spec: TensorSpec, values: np.ndarray, protocol: Protocol) -> Any:
    """A real tritonclient InferInput of shape [batch, *spec.dims] holding `values`."""
    data = values.reshape((len(values), *spec.dims))
    tensor = triton_module(protocol).InferInput(spec.name, list(data.shape), spec.datatype)
    tensor.set_data_from_numpy(data)
    return tensor
