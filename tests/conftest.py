"""Shared fixtures: the MNIST data beside the checkout, and tiny models that train in seconds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from ddpm_triton.config import preset
from ddpm_triton.unet import UNet

ROOT = Path(__file__).resolve().parents[1]
# `make test` passes the directory it resolved (DATA_DIR); run directly, pytest looks beside the checkout.
MNIST_DIR = Path(os.environ.get("DDPM_TRITON_DATA_DIR") or ROOT.parent / "shared" / "data" / "mnist")
SHIPPED_CHECKPOINT = ROOT / "models" / "mnist" / "ema.safetensors"


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    if not MNIST_DIR.is_dir():
        pytest.fail(
            f"the MNIST test set is expected at {MNIST_DIR} (../shared/data/mnist beside the checkout, or "
            "DDPM_TRITON_DATA_DIR)"
        )
    return MNIST_DIR


@pytest.fixture(scope="session", autouse=True)
def _two_threads() -> None:
    torch.set_num_threads(2)


@pytest.fixture
def tiny_unet() -> UNet:
    torch.manual_seed(0)
    return UNet(preset("tiny").unet).eval()


REPOSITORY = ROOT / "model_repository"
TRITON_HOME = ROOT / ".cache" / "tritonserver"
# DDPM_TRITON_TEST_DEVICE=gpu runs the same server tests with configs/gpu.pbtxt (KIND_GPU instances).
SERVER_DEVICE = os.environ.get("DDPM_TRITON_TEST_DEVICE", "cpu")


@pytest.fixture(scope="session")
def triton_home() -> Path:
    from ddpm_triton.tritonserver import ServerFiles

    if not ServerFiles(TRITON_HOME).installed():
        pytest.fail(f"no Triton server in {TRITON_HOME}: run `make server` (make test does)")
    return TRITON_HOME


@pytest.fixture(scope="session")
def server(tmp_path_factory, triton_home):
    """The real tritonserver on the project's model repository (as `make serve` runs it), on free ports."""
    from ddpm_triton.tritonserver import ServerFiles, TritonServer, free_port

    if not (REPOSITORY / ".exported").is_file():
        pytest.fail(f"{REPOSITORY} has no exported artifacts: run `make repository` (make test does)")
    files = ServerFiles(triton_home)
    log = tmp_path_factory.mktemp("triton") / "server.log"
    instance = TritonServer(
        REPOSITORY, files, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(), log_path=log,
        model_config_name=None if SERVER_DEVICE == "cpu" else SERVER_DEVICE,
    )  # fmt: skip
    with instance:
        yield instance
