"""The step scheduler with the real Stepper and the real tiny U-Net (random non-zero weights) on CPU.

What the server promises and these tests hold it to: an image made by the step scheduler is the
image `Pipeline.sample` makes from the same options, whatever else shares its U-Net calls; a short
request overtakes a long one; images are stepped oldest request first and nothing starves; at most
`capacity` images are admitted; a failed step fails only the requests in it; `stop` fails what is
left with its reason.

The U-Net is wrapped, never replaced: `PerImage` runs the real module one image at a time, because
CPU convolution kernels round differently at different batch sizes (differences of about 1e-9,
see `test_image_alone_matches_image_in_batch`) and a byte-for-byte comparison must test the
scheduler, not the kernels' batch invariance. `Recording` notes what each call saw and can pause
or fail a chosen call, which is how the threaded tests control timing without sleeping.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

from ddpm_triton.config import preset
from ddpm_triton.diffusion import Diffusion
from ddpm_triton.pipeline import Pipeline
from ddpm_triton.scheduler import Busy, ImageOptions, Job, StepScheduler
from ddpm_triton.stepper import Stepper, buckets, compile_update
from ddpm_triton.unet import UNet

CONFIG = preset("tiny")
NULL_LABEL = CONFIG.unet.num_classes  # the scheduler's "unconditional"; Pipeline.sample takes -1
SHAPE = (CONFIG.unet.in_channels, CONFIG.unet.image_size, CONFIG.unet.image_size)
TIMEOUT = 60.0  # seconds any wait may take before the test fails instead of hanging


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread here: on a small shared machine, two threads that wait for each other make
    each tiny forward up to 40 times slower (measured: 0.02 s against 0.9 s beside a busy server)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def model(tiny_unet: UNet) -> UNet:
    """The tiny U-Net with PyTorch's default random init in every layer, its output scaled to about
    unit variance. The project's zero-initialised layers would make eps 0; small random weights make
    it nearly ignore the label, so that guidance, labels and a dropped guidance flag all give the
    same bytes. Here a label or a guidance scale of 2 changes a sizeable share of the pixels."""
    torch.manual_seed(1)
    for module in tiny_unet.modules():
        if module is not tiny_unet and hasattr(module, "reset_parameters"):
            module.reset_parameters()
    with torch.no_grad():
        tiny_unet.conv_out.weight.mul_(3.0)
        tiny_unet.conv_out.bias.mul_(3.0)
    return tiny_unet


class PerImage:
    """The real U-Net, one image per forward: each image's eps is then independent of its batch."""

    def __init__(self, model: UNet) -> None:
        self.model = model

    def __call__(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        rows = [
            self.model(x[i : i + 1], t[i : i + 1], None if labels is None else labels[i : i + 1]) for i in range(len(x))
        ]
        return torch.cat(rows).float()


@dataclass
class Recording:
    """A U-Net callable that records each call's labels, and can pause at or fail one call (1-based)."""

    unet: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
    pause_at: int | None = None
    fail_at: int | None = None
    on_call: Callable[[int], None] | None = None
    labels: list[list[int]] = field(default_factory=list)
    paused: threading.Event = field(default_factory=threading.Event)
    resume: threading.Event = field(default_factory=threading.Event)

    @property
    def calls(self) -> int:
        return len(self.labels)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        self.labels.append([] if labels is None else labels.tolist())
        if self.on_call is not None:
            self.on_call(self.calls)
        if self.calls == self.pause_at:
            self.paused.set()
            assert self.resume.wait(TIMEOUT), "the test never resumed the paused U-Net call"
        if self.calls == self.fail_at:
            raise RuntimeError(f"poisoned batch at call {self.calls}")
        return self.unet(x, t, labels)


def make_scheduler(unet: Callable, capacity: int = 8, max_batch: int = 8) -> StepScheduler:
    stepper = Stepper(
        unet, Diffusion(CONFIG.diffusion), SHAPE, capacity=capacity, max_steps=CONFIG.diffusion.timesteps,
        null_label=NULL_LABEL, device=torch.device("cpu"), max_batch=max_batch,
    )  # fmt: skip
    return StepScheduler(stepper)


@dataclass
class Request:
    """One request's options, per image, as a client would give them, and what became of it."""

    name: str
    seeds: list[int]
    steps: list[int]
    eta: list[float]  # 0 = DDIM, 1 = DDPM
    labels: list[int]  # -1 = unconditional
    guidance: list[float]
    images: np.ndarray | None = None
    error: str | None = None
    answers: int = 0  # checked by wait_all: the worker swallows a callback's exceptions
    finished: threading.Event = field(default_factory=threading.Event)

    def job(self, log: list | None = None, note: Callable[[], object] | None = None) -> Job:
        """The Job to submit; on its answer, `log` gets the name (with `note()` if given)."""

        def done(images: np.ndarray) -> None:
            self.images = images
            self._end(log, note)

        def failed(message: str) -> None:
            self.error = message
            self._end(log, note)

        labels = np.array([NULL_LABEL if label < 0 else label for label in self.labels], np.int64)
        options = ImageOptions(
            np.array(self.seeds, np.int64), np.array(self.steps, np.int64), np.array(self.eta, np.float32),
            labels, np.array(self.guidance, np.float32),
        )  # fmt: skip
        return Job(options, done=done, failed=failed)

    def _end(self, log: list | None, note: Callable[[], object] | None) -> None:
        self.answers += 1
        if log is not None:
            log.append(self.name if note is None else (self.name, note()))
        self.finished.set()

    def reference(self, pipeline: Pipeline) -> np.ndarray:
        """The offline images: one Pipeline.sample per image, each with that image's options."""
        images = []
        for seed, steps, eta, label, scale in zip(self.seeds, self.steps, self.eta, self.labels, self.guidance):
            sampler, sampler_eta = ("ddpm", None) if eta == 1 else ("ddim", eta)
            images.append(pipeline.sample([seed], steps, sampler, sampler_eta, labels=[label], guidance_scale=scale))
        return np.concatenate(images)


def simple(name: str, n: int, steps: int, label: int = 1, seed: int = 0) -> Request:
    """n unguided DDIM images of one label and step count."""
    return Request(name, list(range(seed, seed + n)), [steps] * n, [0.0] * n, [label] * n, [1.0] * n)


def wait_all(*requests: Request) -> None:
    for r in requests:
        assert r.finished.wait(TIMEOUT), f"{r.name} was never answered"
        assert r.answers == 1, f"{r.name} was answered {r.answers} times"


def stop_within(scheduler: StepScheduler, reason: str) -> None:
    """stop(), failing the test rather than hanging if the worker does not end."""
    stopper = threading.Thread(target=scheduler.stop, args=(reason,), daemon=True)
    stopper.start()
    stopper.join(TIMEOUT)
    assert not stopper.is_alive(), "stop() did not return: the worker is stuck"


# ---- 1. exactness under merged steps -------------------------------------------------------------


def test_merged_steps_give_the_offline_pipeline_images_byte_for_byte(model):
    requests = [
        # Deterministic DDIM; guidance 1 and 2 in one request; an unconditional image.
        Request("ddim", [1, 2], [3, 3], [0.0, 0.0], [0, -1], [1.0, 2.0]),
        # Ancestral DDPM, guidance mixed the other way round.
        Request("ddpm", [10, 11], [2, 2], [1.0, 1.0], [3, 5], [2.0, 1.0]),
        # Samplers and step counts mixed inside one request, unguided: a 1-step image too.
        Request("mixed", [20, 21], [4, 1], [0.0, 1.0], [7, 2], [1.0, 1.0]),
    ]
    scheduler = make_scheduler(PerImage(model), capacity=8, max_batch=8)
    for r in requests:
        scheduler.submit(r.job())
    scheduler.run_until_idle()

    pipeline = Pipeline(PerImage(model), CONFIG)
    for r in requests:
        assert r.error is None, f"{r.name} failed: {r.error}"
        assert r.images is not None and r.images.dtype == np.uint8 and r.images.shape == (len(r.seeds), 28, 28, 1)
        np.testing.assert_array_equal(r.images, r.reference(pipeline), err_msg=f"{r.name} differs from Pipeline.sample")
    # Not trivially equal: the options make different images.
    assert len({r.images[i].tobytes() for r in requests for i in range(len(r.seeds))}) == 6

    image_steps = sum(sum(r.steps) for r in requests)
    request_steps = sum(max(r.steps) for r in requests)  # what running each request's loop alone would cost
    assert scheduler.counters.images_stepped == image_steps
    assert scheduler.counters.unet_calls == max(max(r.steps) for r in requests) < request_steps
    assert scheduler.counters.requests_done == len(requests) and scheduler.counters.requests_failed == 0
    assert scheduler.in_progress == 0


# ---- 2. a short request overtakes a long one -----------------------------------------------------


def test_a_short_request_submitted_mid_way_finishes_first(model):
    unet = Recording(PerImage(model), pause_at=1)
    scheduler = make_scheduler(unet, capacity=4, max_batch=4)
    long = Request("long", [5], [6], [0.0], [2], [1.0])
    short = Request("short", [6], [2], [1.0], [4], [2.0])
    order: list[tuple[str, int]] = []
    scheduler.submit(long.job(order, lambda: unet.calls))
    scheduler.start()
    try:
        assert unet.paused.wait(TIMEOUT), "the long request never started"
        scheduler.submit(short.job(order, lambda: unet.calls))  # while the long one's first step runs
        unet.resume.set()
        wait_all(short, long)
    finally:
        stop_within(scheduler, "test over")

    # The short one joined at the next step and took its 2 steps beside the long one's steps 2 and 3;
    # it was answered before the long one's step 4 began.
    assert order == [("short", 3), ("long", 6)]
    assert scheduler.counters.unet_calls == 6 and scheduler.counters.images_stepped == 8
    # Joining a running batch at another position of another schedule still gives the offline image.
    np.testing.assert_array_equal(short.images, short.reference(Pipeline(PerImage(model), CONFIG)))


# ---- 3. fairness ---------------------------------------------------------------------------------


def test_oldest_request_is_stepped_first_when_the_batch_is_full(model):
    unet = Recording(model)
    scheduler = make_scheduler(unet, capacity=8, max_batch=2)
    # Same step count, label = request index: the U-Net's labels say whose images each call stepped.
    a, b, c = simple("a", 3, 3, label=0), simple("b", 2, 3, label=1, seed=10), simple("c", 2, 3, label=2, seed=20)
    order: list[tuple[str, int]] = []
    for r in (a, b, c):  # all queued before the worker starts: admitted together
        scheduler.submit(r.job(order, lambda: unet.calls))
    scheduler.start()
    try:
        wait_all(a, b, c)
    finally:
        stop_within(scheduler, "test over")

    # a's first two images, then a's third beside b's first, then b's second beside c's first, then c's second.
    assert unet.labels == [[0, 0]] * 3 + [[0, 1]] * 3 + [[1, 2]] * 3 + [[2]] * 3
    assert order == [("a", 6), ("b", 9), ("c", 12)]  # each answered as soon as its last image finished
    assert all(r.error is None for r in (a, b, c)) and scheduler.in_progress == 0


def test_a_stream_of_newer_requests_cannot_starve_an_older_one(model):
    """While every step brings a new request, the oldest one still takes exactly its own steps."""
    newcomers: list[Request] = []
    order: list[tuple[str, int]] = []
    arrived = threading.Event()
    scheduler: StepScheduler

    def arrive(call: int) -> None:  # a client submitting during each of the first 6 U-Net calls
        if call <= 6:
            r = simple(f"new{call}", 1, 3, label=call, seed=100 + call)
            newcomers.append(r)
            scheduler.submit(r.job(order, lambda: unet.calls))
            if call == 6:
                arrived.set()

    unet = Recording(model, on_call=arrive)
    scheduler = make_scheduler(unet, capacity=8, max_batch=2)
    old = simple("old", 2, 4, label=0)
    scheduler.submit(old.job(order, lambda: unet.calls))
    scheduler.start()
    try:
        assert arrived.wait(TIMEOUT), "the U-Net was called fewer than 6 times"
        wait_all(old, *newcomers)
    finally:
        stop_within(scheduler, "test over")

    assert len(newcomers) == 6
    assert order[0] == ("old", 4)  # newer work queued from call 1 on and never displaced it
    assert unet.labels[:4] == [[0, 0]] * 4
    # Equal step counts: answered in arrival order, two at a time, each within 3 steps of its turn.
    assert order[1:] == [("new1", 7), ("new2", 7), ("new3", 10), ("new4", 10), ("new5", 13), ("new6", 13)]
    assert all(r.error is None and r.images is not None for r in [old, *newcomers])
    assert scheduler.counters.images_stepped == 2 * 4 + 6 * 3 and scheduler.in_progress == 0


# ---- 4. the bound on admitted images --------------------------------------------------------------


def test_capacity_bounds_admitted_images_and_is_freed_when_requests_finish(model):
    scheduler = make_scheduler(model, capacity=4, max_batch=4)
    first, second = simple("first", 3, 2), simple("second", 1, 2, seed=5)
    scheduler.submit(first.job())
    assert scheduler.in_progress == 3

    refused = simple("refused", 2, 2, seed=9)
    with pytest.raises(Busy, match=r"\(limit 4\)") as busy:
        scheduler.submit(refused.job())
    assert "3 images in progress" in str(busy.value) and "asks for 2" in str(busy.value)
    assert scheduler.in_progress == 3  # the refusal admitted nothing
    with pytest.raises(Busy, match=r"limit 4"):
        scheduler.submit(simple("too-big", 5, 2).job())

    scheduler.submit(second.job())  # exactly at the limit is allowed
    assert scheduler.in_progress == 4
    scheduler.run_until_idle()
    assert first.images is not None and second.images is not None and scheduler.in_progress == 0
    assert not refused.finished.is_set()  # a refused request is never answered by the worker

    again = simple("again", 4, 1, seed=40)  # the whole capacity is usable again
    scheduler.submit(again.job())
    scheduler.run_until_idle()
    assert again.images is not None and again.images.shape[0] == 4 and scheduler.in_progress == 0


# ---- 5. a failed step fails only the requests in it ------------------------------------------------


def test_a_failing_step_fails_only_its_requests_and_the_worker_goes_on(model):
    unet = Recording(PerImage(model), fail_at=2)
    scheduler = make_scheduler(unet, capacity=6, max_batch=2)
    # Calls 1-2 step a and b's first image; call 2 fails. b's second image and c were waiting.
    a, b, c = simple("a", 1, 3, label=1), simple("b", 2, 3, label=2, seed=10), simple("c", 1, 3, label=3, seed=20)
    for r in (a, b, c):
        scheduler.submit(r.job())
    scheduler.start()
    try:
        wait_all(a, b, c)
        assert unet.labels[:2] == [[1, 2], [1, 2]] and unet.labels[2:] == [[3]] * 3
        for r in (a, b):
            assert r.images is None and r.error is not None
            assert "denoising failed" in r.error and "poisoned batch at call 2" in r.error, r.error
        assert c.error is None
        pipeline = Pipeline(PerImage(model), CONFIG)
        np.testing.assert_array_equal(c.images, c.reference(pipeline))

        # The worker is still serving, and the failed requests' slots are free again.
        d = Request("d", [40, 41], [2, 2], [1.0, 0.0], [5, -1], [2.0, 1.0])
        scheduler.submit(d.job())
        wait_all(d)
        assert d.error is None
        np.testing.assert_array_equal(d.images, d.reference(pipeline))
    finally:
        stop_within(scheduler, "test over")
    counters = scheduler.counters
    assert (counters.requests_done, counters.requests_failed) == (2, 2) and scheduler.in_progress == 0
    assert counters.unet_calls == 1 + 3 + 2  # the failed call is not counted


# ---- 6. stop -------------------------------------------------------------------------------------


def test_stop_fails_requests_in_progress_with_its_reason(model):
    unet = Recording(model, pause_at=2)
    scheduler = make_scheduler(unet, capacity=6, max_batch=4)
    quick, running, queued = simple("quick", 1, 1), simple("running", 2, 50, seed=10), simple("queued", 1, 3, seed=20)
    scheduler.submit(quick.job())
    scheduler.submit(running.job())
    scheduler.start()
    assert unet.paused.wait(TIMEOUT), "the second step never ran"
    scheduler.submit(queued.job())  # arrives while the worker is inside a step
    stopper = threading.Thread(target=scheduler.stop, args=("the ddpm model is being unloaded",), daemon=True)
    stopper.start()
    threading.Event().wait(0.2)  # let stop() queue its end marker before the step finishes
    unet.resume.set()
    stopper.join(TIMEOUT)
    assert not stopper.is_alive(), "stop() did not return"

    wait_all(quick, running, queued)
    assert quick.error is None and quick.images is not None  # finished before stop: answered normally
    for r in (running, queued):
        assert r.images is None and r.error == "the ddpm model is being unloaded"
    assert scheduler.in_progress == 0 and unet.calls < 50


def test_stop_without_a_worker_fails_queued_requests(model):
    scheduler = make_scheduler(model)  # never called: nothing runs without a worker
    waiting = [simple("w0", 2, 3), simple("w1", 1, 3, seed=5)]
    for r in waiting:
        scheduler.submit(r.job())
    scheduler.stop("shutting down")
    assert [r.error for r in waiting] == ["shutting down", "shutting down"]
    assert scheduler.in_progress == 0 and scheduler.counters.requests_failed == 2


# ---- 7. buckets ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("max_size", "expected"),
    [
        (1, [2]),
        (2, [2]),
        (3, [2, 3]),
        (8, [2, 4, 8]),
        (64, [2, 4, 8, 16, 32, 64]),
        (100, [2, 4, 8, 16, 32, 64, 100]),
    ],
)
def test_buckets_are_powers_of_two_up_to_the_maximum(max_size, expected):
    sizes = buckets(max_size)
    assert sizes == expected
    # Every selection of 1..max_size images fits a bucket with at most 2x padding (and none of size 1).
    for n in range(1, max_size + 1):
        fit = next(b for b in sizes if b >= n)
        assert fit <= max(2 * n, 2)


def test_a_reused_slot_keeps_nothing_of_its_previous_image(model):
    """Options left out (no label, no guidance) reset the slot rather than inherit the last image's."""
    scheduler = make_scheduler(model, capacity=1, max_batch=1)
    images: list[np.ndarray] = []
    zero = np.zeros(1, np.float32)
    scheduler.submit(Job(ImageOptions(np.array([1]), np.array([2]), zero, np.array([3]), np.array([2.0], np.float32)),
                         images.append, pytest.fail))  # fmt: skip
    scheduler.run_until_idle()
    scheduler.submit(Job(ImageOptions(np.array([7]), np.array([2]), zero), images.append, pytest.fail))
    scheduler.run_until_idle()
    reference = Pipeline(model, CONFIG).sample([7], 2, "ddim")  # no labels: unconditional, no guidance
    assert np.array_equal(images[1], reference)


def test_the_compiled_sampler_update_is_the_eager_one():
    """The GPU step path runs the sampler update through torch.compile (`compile_update`): the noise
    hash must give the same integers there, and the update the same floats up to rounding."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    stepper = Stepper(lambda x, t, labels: x, Diffusion(CONFIG.diffusion, device), SHAPE, capacity=4,
                      max_steps=CONFIG.diffusion.timesteps, null_label=None, device=device)  # fmt: skip
    generator = torch.Generator().manual_seed(3)
    x, eps = (torch.randn(5, *SHAPE, generator=generator).to(device) for _ in range(2))
    t = torch.tensor([999, 500, 20, 1, 0], device=device)
    t_prev = torch.tensor([998, 400, 10, 0, -1], device=device)
    eta = torch.tensor([1.0, 1.0, 0.5, 0.0, 1.0], device=device)
    seeds = torch.tensor([0, 1, 2**40 + 5, 7, 123456789], device=device)
    compiled = compile_update(stepper.sampler_update)
    for stochastic in (True, False):
        expected = stepper.sampler_update(x, eps, t, t_prev, eta, seeds, stochastic)
        torch.testing.assert_close(compiled(x, eps, t, t_prev, eta, seeds, stochastic), expected, rtol=1e-5, atol=1e-5)
