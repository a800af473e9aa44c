"""Export: checkpoint -> U-Net artifacts (TorchScript, ONNX, int8 QDQ ONNX, TensorRT) in a Triton model repository."""
