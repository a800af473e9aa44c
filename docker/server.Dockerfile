# Triton server image: NVIDIA's Triton container plus this project's package, so that the `ddpm`
# Python-backend model can import ddpm_triton and torch, while the U-Nets run on the container's
# native TensorRT / ONNX Runtime / libtorch backends.
#
# Build from the repository root:  docker build -f docker/server.Dockerfile -t ddpm-triton-server .

# NGC release shared with docker/export.Dockerfile: a TensorRT plan loads only under the TensorRT
# version that built it, and the same NGC month of tensorrt and tritonserver carries the same one
# (Triton's own QA builds its plan models with tensorrt:<its release>-py3).
# 25.10 = Triton 2.62.0, CUDA 13.0.2, Ubuntu 24.04 with Python 3.12; needs an NVIDIA driver >= 580.
ARG NGC_RELEASE=25.10
FROM nvcr.io/nvidia/tritonserver:${NGC_RELEASE}-py3

# torch for the `ddpm` model's denoising loop, shared with docker/export.Dockerfile. 2.9 is the
# libtorch inside Triton 25.10's PyTorch backend (NGC PyTorch 25.10 = 2.9.0a0), so the TorchScript
# U-Nets the export saves are read by the torch minor version that wrote them. The CUDA 13.0 build
# matches the image's CUDA and needs the same driver (>= 580).
ARG TORCH_VERSION=2.9.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130

# The Python backend's stub embeds the image's /usr/bin/python3, so everything goes into that
# interpreter's site-packages through `python3 -m pip` (a virtual environment would be invisible to
# the stub). NVIDIA's image already sets PIP_BREAK_SYSTEM_PACKAGES=1 for Ubuntu's PEP 668 marker.
RUN python3 -m pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

# Only what building the two packages needs (README.md: pyproject's `readme`).
WORKDIR /opt/ddpm-triton
COPY pyproject.toml README.md constraints.txt ./
COPY client/ client/
COPY src/ src/
COPY export/ export/

# The other libraries at the versions CI tests (constraints.txt) less its torch line, which names
# the CPU build. That moves numpy past the 1.x NVIDIA installs; the Python backend's stub handles
# numpy 2 (pybind11 2.12). The import check fails the build here rather than at the first model load.
RUN grep -v '^torch==' constraints.txt > /tmp/constraints.txt \
    && python3 -m pip install --no-cache-dir --constraint /tmp/constraints.txt ./client . \
    && rm /tmp/constraints.txt \
    && python3 -c "import ddpm_client, ddpm_triton, torch; print('torch', torch.__version__)"

COPY docker/tritonserver-entrypoint.sh /usr/local/bin/ddpm-tritonserver

# Triton's ports: HTTP, gRPC, Prometheus metrics.
EXPOSE 8000 8001 8002

WORKDIR /opt/tritonserver
# The wrapper goes in CMD so that the base image's ENTRYPOINT (NVIDIA's start-up script) still runs
# first. docker-compose.yml replaces these arguments to choose the models it loads. Explicit model
# control with every model loaded: the wrapper's watchdog reloads models, which needs the load API.
CMD ["ddpm-tritonserver", "--model-repository=/models", "--model-config-name=container", \
     "--model-control-mode=explicit", "--load-model=*"]
