# The project's front door. `make demo` and `make test` set everything up themselves on a fresh clone.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON      ?= python3
VENV        ?= .venv
PY          := $(VENV)/bin/python
TRITON_HOME ?= .cache/tritonserver
REPOSITORY  ?= model_repository
CHECKPOINT  ?= models/mnist/ema.safetensors
# The MNIST test set lives in ../shared beside the checkout, never in the repository. A clone made
# elsewhere (CI's temporary directory) finds it beside the repository it was cloned from.
ORIGIN      := $(shell git config --get remote.origin.url 2>/dev/null)
DATA_DIR    ?= $(firstword $(wildcard ../shared/data/mnist $(ORIGIN)/../shared/data/mnist) ../shared/data/mnist)
HTTP_PORT   ?= 8000
GRPC_PORT   ?= 8001
METRICS_PORT?= 8002
WATCHDOG_INTERVAL ?= 1
DEVICE      ?= cpu
EXPORT_ARGS ?= --formats onnx,torchscript --precisions fp32,int8
PYTEST_ARGS ?=

SOURCES := $(shell find src export client/ddpm_client -name '*.py')
STAMP_VENV := $(VENV)/.installed
STAMP_SERVER := $(TRITON_HOME)/.installed
STAMP_REPOSITORY := $(REPOSITORY)/.exported

BENCH_GPU   := --preset cifar10 --batches 1,64,256
BENCH_CPU   := --preset tiny --steps 2 --batches 1,2 --concurrency 1,2 --long-steps 3 --long-batch 2 --peer-batch 1 --repeats 1 --stability 500
BENCH_ARGS  ?= $(if $(filter gpu,$(DEVICE)),$(BENCH_GPU),$(BENCH_CPU))

.PHONY: help venv server repository docker-compose serve demo test bench clean

help:
	@echo "make demo        set up, serve the shipped model, write demo.png"
	@echo "make test        set up, run every test (real tritonserver, real perf_analyzer)"
	@echo "make serve       run tritonserver on $(REPOSITORY) (HTTP_PORT, GRPC_PORT, METRICS_PORT, DEVICE=cpu|gpu,"
	@echo "                 WATCHDOG_INTERVAL=seconds between stub checks, 0: off)"
	@echo "make repository  export $(CHECKPOINT) into $(REPOSITORY)"
	@echo "make bench       benchmark through Triton, in-process and diffusers (DEVICE=gpu: the CIFAR-10 U-Net)"

venv: $(STAMP_VENV)
$(STAMP_VENV): pyproject.toml client/pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ./client -e '.[dev]'
	touch $@

server: $(STAMP_SERVER)
$(STAMP_SERVER): | $(STAMP_VENV)
	$(PY) -m ddpm_triton install-server --home $(TRITON_HOME)
	touch $@

repository: $(STAMP_REPOSITORY)
$(STAMP_REPOSITORY): $(CHECKPOINT) $(SOURCES) | $(STAMP_VENV)
	$(PY) -m ddpm_triton export --checkpoint $(CHECKPOINT) --repository $(REPOSITORY) --data-dir $(DATA_DIR) $(EXPORT_ARGS)
	touch $@

# Compose v1 from Debian validates docker-compose.yml in the tests (no Docker engine is needed for that).
docker-compose:
	@command -v docker-compose >/dev/null || { \
		echo "installing Debian's docker-compose (to validate docker-compose.yml)"; \
		{ apt-get update -qq && apt-get install -y -qq --no-install-recommends docker-compose >/dev/null; } \
		|| { echo "could not install docker-compose: run 'apt-get install docker-compose' as root"; exit 1; }; }

bench: $(STAMP_VENV) $(STAMP_SERVER)
	$(PY) -m ddpm_triton bench --device $(DEVICE) $(BENCH_ARGS)

serve: $(STAMP_VENV) $(STAMP_SERVER) $(STAMP_REPOSITORY)
	$(PY) -m ddpm_triton serve --repository $(REPOSITORY) --device $(DEVICE) \
		--http-port $(HTTP_PORT) --grpc-port $(GRPC_PORT) --metrics-port $(METRICS_PORT) \
		--watchdog-interval $(WATCHDOG_INTERVAL)

demo: $(STAMP_VENV) $(STAMP_SERVER) $(STAMP_REPOSITORY)
	$(PY) -m ddpm_triton demo --repository $(REPOSITORY) --out demo.png \
		--http-port $(HTTP_PORT) --grpc-port $(GRPC_PORT) --metrics-port $(METRICS_PORT)

test: $(STAMP_VENV) $(STAMP_SERVER) $(STAMP_REPOSITORY) docker-compose
	DDPM_TRITON_DATA_DIR=$(abspath $(DATA_DIR)) $(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .cache $(STAMP_REPOSITORY) $(REPOSITORY)/*/1/model.{onnx,pt,plan}
