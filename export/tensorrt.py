"""TensorRT engines (.plan) built from the exported ONNX models, for Triton's tensorrt_plan backend.

NOT RUN HERE: no TensorRT builder installs on these machines (PyPI's TensorRT wheels are stubs or
runtime-only), so this module was written against the TensorRT 10 Python API documentation and has
never built an engine. Inside NVIDIA's TensorRT, PyTorch or Triton container it is expected to work;
elsewhere every entry point raises TensorRTUnavailable saying so.

Precision is read from the ONNX model, not from builder flags: the network is created strongly
typed, so the fp16 engine is built from the fp16 ONNX (its casts included) and the int8 engine from
the calibrated QDQ ONNX (explicit quantization). TensorRT computes what onnxruntime was measured
computing, and the weakly typed FP16/INT8 builder flags, deprecated in TensorRT 10 and removed in 11,
are not needed.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from ddpm_triton.runners import TensorRTUnavailable, import_tensorrt

__all__ = ["TensorRTUnavailable", "build_engine", "tensorrt_available"]

WORKSPACE_BYTES = 4 << 30


def tensorrt_available() -> bool:
    """Whether the TensorRT builder can be imported here."""
    try:
        import_tensorrt()
    except TensorRTUnavailable:
        return False
    return True


def _onnx_precision(onnx_path: Path) -> str:
    """fp32, fp16 or int8, from what the ONNX model holds: Q/DQ nodes, float16 weights, or neither."""
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    if any(node.op_type == "QuantizeLinear" for node in graph.node):
        return "int8"
    if any(init.data_type == onnx.TensorProto.FLOAT16 for init in graph.initializer):
        return "fp16"
    return "fp32"


def build_engine(onnx_path: Path, plan_path: Path, precision: str, max_batch_size: int, opt_batch_size: int) -> Path:
    """Build and write a serialized engine for batch sizes 1..max_batch_size, tuned for opt_batch_size.

    `precision` must match the ONNX model given (fp16 needs the fp16 export, int8 the QDQ model):
    with a strongly typed network a mismatch would silently build the wrong precision.
    """
    trt = import_tensorrt()
    if not 1 <= opt_batch_size <= max_batch_size:
        raise ValueError(f"need 1 <= opt_batch_size ({opt_batch_size}) <= max_batch_size ({max_batch_size})")
    found = _onnx_precision(onnx_path)
    if found != precision:
        raise ValueError(
            f"{onnx_path} is a {found} model; a {precision} engine must be built from the {precision} ONNX"
        )

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        sample_shape = tuple(tensor.shape)[1:]  # X: (C, H, W); T and LABEL: ()
        profile.set_shape(
            tensor.name, (1, *sample_shape), (opt_batch_size, *sample_shape), (max_batch_size, *sample_shape)
        )
    config.add_optimization_profile(profile)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path}; its log above says why")
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    plan_path.write_bytes(serialized)
    return plan_path
