"""Triton Python-backend entry point; the model is ddpm_triton.serving.ddpm_model.TritonPythonModel."""

from ddpm_triton.serving.ddpm_model import TritonPythonModel  # noqa: F401
