"""The wire contract of the `ddpm` Triton model: the one place that names its tensors.

The server's config generator, the server-side validation and this client all import these
definitions, so a renamed input or a changed dtype cannot drift between them. The module is
dependency-free on purpose: the client package must install without torch.
"""

from __future__ import annotations

from dataclasses import dataclass

MODEL_NAME = "ddpm"

SAMPLERS = ("ddpm", "ddim")
"""`ddpm`: ancestral sampling (Ho et al.); `ddim`: Song et al., stochastic for ETA > 0."""

NO_LABEL = -1
"""CLASS_LABEL value asking a class-conditional model for an unconditional sample."""


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of the contract, per image (Triton adds the batch dimension in front)."""

    name: str
    datatype: str  # Triton wire datatype, as tritonclient spells it
    dims: tuple[int, ...]
    optional: bool
    doc: str

    @property
    def config_type(self) -> str:
        """The `data_type` spelling of config.pbtxt (BYTES travels as TYPE_STRING)."""
        return "TYPE_STRING" if self.datatype == "BYTES" else f"TYPE_{self.datatype}"


SEED = TensorSpec("SEED", "INT64", (1,), False, "Seed of this image's noise; the image depends on nothing else.")
STEPS = TensorSpec("STEPS", "INT32", (1,), True, "Number of denoising steps, 1..T (T: training timesteps).")
SAMPLER = TensorSpec("SAMPLER", "BYTES", (1,), True, "'ddpm' or 'ddim'.")
ETA = TensorSpec("ETA", "FP32", (1,), True, "DDIM stochasticity in [0, 1]; only with SAMPLER=ddim.")
CLASS_LABEL = TensorSpec(
    "CLASS_LABEL", "INT32", (1,), True, "Class to draw, 0..num_classes-1, or -1 for unconditional."
)
GUIDANCE_SCALE = TensorSpec(
    "GUIDANCE_SCALE", "FP32", (1,), True, "Classifier-free guidance weight w >= 0 (1 = conditional model alone)."
)
IMAGE = TensorSpec("IMAGE", "UINT8", (-1, -1, -1), False, "Generated image, height x width x channels.")

INPUTS = (SEED, STEPS, SAMPLER, ETA, CLASS_LABEL, GUIDANCE_SCALE)
OUTPUTS = (IMAGE,)

MAX_GUIDANCE_SCALE = 50.0
"""Upper bound of GUIDANCE_SCALE: far above any useful value, low enough to keep outputs finite."""
