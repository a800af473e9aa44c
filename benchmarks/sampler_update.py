"""The sampler update of one denoising step on a GPU, eager against compiled, as the step graph runs it.

After the U-Net, a step draws the images' noise (a counter hash: `noise.SeededNoise`) and applies
`Diffusion.step`. Eager that is some eighty small kernels; on the GPU path `stepper.Stepper`
compiles it (`stepper.compile_update`). Each row times one CUDA-graph replay of the update alone
(`Stepper.sampler_update`) for a batch of CIFAR-10-sized images, with noise (DDPM) and without (DDIM).

    python benchmarks/sampler_update.py --batches 2,64,256
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch

from ddpm_triton.config import preset
from ddpm_triton.diffusion import Diffusion
from ddpm_triton.provenance import stamp, write_result
from ddpm_triton.stepper import Stepper, compile_update
from fp8_speed import graphed_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", default="2,64,256")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("sampler_update.py times CUDA graphs: it needs a GPU")
    config = preset("cifar10")
    device = torch.device("cuda")
    shape = (config.unet.in_channels, config.unet.image_size, config.unet.image_size)
    stepper = Stepper(lambda x, t, labels: x, Diffusion(config.diffusion, device), shape, capacity=1, max_steps=1,
                      null_label=None, device=device)  # fmt: skip
    variants = {"eager": stepper.sampler_update, "compiled": compile_update(stepper.sampler_update)}
    record = {**stamp("cuda", shlex.join(["python", "benchmarks/sampler_update.py", *sys.argv[1:]])), "rows": []}
    for batch in (int(b) for b in args.batches.split(",")):
        x, eps = torch.randn(batch, *shape, device=device), torch.randn(batch, *shape, device=device)
        t = torch.randint(1, config.diffusion.timesteps, (batch,), device=device)
        eta, seeds = torch.ones(batch, device=device), torch.arange(batch, device=device)
        for stochastic in (True, False):
            row = {"batch": batch, "sampler": "ddpm" if stochastic else "ddim"}
            with torch.inference_mode():
                outputs = {name: update(x, eps, t, t - 1, eta, seeds, stochastic) for name, update in variants.items()}
                row["max_abs_difference"] = (outputs["eager"] - outputs["compiled"]).abs().max().item()
                for name, update in variants.items():
                    row[f"{name}_ms"] = graphed_ms(lambda: update(x, eps, t, t - 1, eta, seeds, stochastic), 50)
            record["rows"].append(row)
            print(f"batch {batch:4d} {row['sampler']}: eager {row['eager_ms']:.4f} ms, compiled {row['compiled_ms']:.4f} ms "
                  f"(max difference {row['max_abs_difference']:.1e})", flush=True)  # fmt: skip
    print(f"wrote {write_result(args.out, 'sampler-update', record)}")


if __name__ == "__main__":
    main()
