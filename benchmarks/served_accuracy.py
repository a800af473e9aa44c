"""Issue 4's acceptance check: 100 digits from the running server (10 per class, 50 DDIM steps,
default guidance), read back by the project's MNIST classifier. Run from the repository root after
`make repository server`: `.venv/bin/python benchmarks/served_accuracy.py`.
Seen 2026-11-23 on 2 CPU cores: "correct 100 of 100; seconds 261".
"""

import time
from pathlib import Path

import numpy as np
from ddpm_client import DDPMClient

from ddpm_triton.classifier import load_classifier
from ddpm_triton.tritonserver import ServerFiles, TritonServer, free_port

server = TritonServer(Path("model_repository"), ServerFiles(Path(".cache/tritonserver")), http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(), log_path=Path("/tmp/check100.log"))
labels = [k for k in range(10) for _ in range(10)]
started = time.time()
with server, DDPMClient(server.grpc_url, timeout_s=900) as client:
    images = client.generate(100, seed=1000, steps=50, sampler="ddim", class_label=labels)
read = load_classifier().predict(images)
print("correct", int((np.asarray(read) == np.asarray(labels)).sum()), "of 100; seconds", round(time.time() - started))
