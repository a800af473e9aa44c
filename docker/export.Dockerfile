# Export image: turns a checkpoint into the Triton model repository (TorchScript, ONNX, and TensorRT
# plans built on the GPU this container runs on), for the server image of the same NGC release.
#
# Build from the repository root:  docker build -f docker/export.Dockerfile -t ddpm-triton-export .

# Must equal docker/server.Dockerfile's NGC_RELEASE: TensorRT rejects a plan built by any other
# TensorRT version, and NVIDIA's tensorrt and tritonserver images of one month carry the same one.
# 25.10 = TensorRT 10.13, CUDA 13.0.2, Ubuntu 24.04 with Python 3.12 and TensorRT's Python bindings.
ARG NGC_RELEASE=25.10
FROM nvcr.io/nvidia/tensorrt:${NGC_RELEASE}-py3

# The server image's torch: 2.9, the libtorch minor version that Triton 25.10 loads TorchScript with.
ARG TORCH_VERSION=2.9.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130

# Install into the system Python, where the image's `tensorrt` module lives; Ubuntu 24.04 marks it
# externally managed (PEP 668), which this throwaway single-purpose image may override.
ENV PIP_BREAK_SYSTEM_PACKAGES=1
RUN python3 -m pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

WORKDIR /opt/ddpm-triton
COPY pyproject.toml README.md constraints.txt ./
COPY client/ client/
COPY src/ src/
COPY export/ export/

# ONNX, ONNX Runtime (int8 calibration) and numpy at the versions CI tests, less constraints.txt's
# torch line (the CPU build). The import check fails the build, not the first export, if the
# TensorRT bindings or the package do not import beside them.
RUN grep -v '^torch==' constraints.txt > /tmp/constraints.txt \
    && python3 -m pip install --no-cache-dir --constraint /tmp/constraints.txt ./client . \
    && rm /tmp/constraints.txt \
    && python3 -c "import ddpm_triton, tensorrt, torch; print('tensorrt', tensorrt.__version__, 'torch', torch.__version__)"

COPY docker/export-entrypoint.sh /usr/local/bin/ddpm-export

# Checkpoints are mounted here (docker-compose.yml binds ./models), so no weights are baked in.
WORKDIR /workspace
# In CMD, not ENTRYPOINT, so the base image's start-up script still runs first; docker-compose.yml
# replaces `--help` with the export arguments.
CMD ["ddpm-export", "--help"]
