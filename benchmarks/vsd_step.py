"""VSD step vs SDS step: time and peak memory of one full optimisation step of each, at Stable Diffusion size.

Model: a randomly initialised UNet with the SD 2.1-base config (865M parameters) and a random AutoencoderKL with
SD's VAE config, in a DiffusersDenoiser with SD's noise schedule; random (1, 77, 1024) cond / uncond embeddings.
Input: a learnable 64² RGB image (what a NeRF render would be) that the guidance upsamples to 512² and encodes.

- SDS step: SDSGuidance (CFG 7.5) → backward → Adam step on the image.
- VSD step: VSDGuidance (CFG 7.5, particle_score=lora: LoRA rank 4 + camera embedding, gradient checkpointing as
  configured) → backward of the guidance + particle losses → one Adam step on the image and (its AdamW group)
  the particle model.

Both sides run in this one process, SDS first (before the LoRA exists), each after --warmup steps; step time is
the median over --steps. Peak memory during a step: the process RSS sampled every --sample-ms by a thread (CPU),
or torch.cuda.max_memory_allocated reset per side (CUDA). Targets: VSD/SDS peak memory <= 1.15, time <= 2.0.

    python benchmarks/vsd_step.py --steps 2                     # CPU, fp32 (~10 minutes on 2 cores)
    python benchmarks/vsd_step.py --device cuda --dtype fp16 --steps 20
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import statistics
import threading
import time
from collections.abc import Callable

import psutil
import torch
from diffusers import AutoencoderKL
from sds_overhead import DTYPES, sd21_base_unet  # benchmarks/sds_overhead.py, beside this script

from distill.conditions.prompt_embeddings import PromptEmbeddings
from distill.denoisers.diffusers_unet import DiffusersDenoiser
from distill.guidance.particle_score import ParticleModelConfig
from distill.guidance.sds import SDSConfig, SDSGuidance
from distill.guidance.vsd import VSDConfig, VSDGuidance
from distill.schedule import NoiseSchedule
from geometry.cameras import make_cameras
from geometry.render_output import RenderOutput

GiB = 2**30


def sd_vae() -> AutoencoderKL:
    """AutoencoderKL with Stable Diffusion's VAE config (random weights: timing and memory only)."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
        scaling_factor=0.18215,
    )


class PeakMemory:
    """Peak memory of what runs inside `measure(fn)`: CUDA's allocator peak, or the RSS sampled by a thread."""

    def __init__(self, device: torch.device, period_s: float) -> None:
        self.device, self.period_s = device, period_s
        self.process = psutil.Process()

    def now(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.memory_allocated(self.device)
        return self.process.memory_info().rss

    def measure(self, fn: Callable[[], None]) -> int:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            fn()
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device)
        peak, done = [self.now()], threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], self.now())
                time.sleep(self.period_s)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            fn()
        finally:
            done.set()
            sampler.join()
        return max(peak[0], self.now())


def release_cpu_memory() -> None:
    """Hand freed heap back to the OS between the sides (glibc keeps it otherwise, inflating the later RSS)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def run_side(name, guidance, prompts, cameras, device, memory: PeakMemory, warmup: int, steps: int) -> dict:
    """Warm-up steps, then `steps` timed steps of (guidance → backward of all its losses → optimizer step)."""
    image = torch.rand(1, 64, 64, 3, device=device, requires_grad=True)
    render = RenderOutput(
        rgb=image,
        opacity=torch.ones(1, 64, 64, 1, device=device),
        depth=torch.zeros(1, 64, 64, 1, device=device),
    )
    optimizer = torch.optim.Adam([{"params": [image], "lr": 1e-2}, *guidance.param_groups()])
    state = {"step": 0}

    def step() -> None:
        out = guidance(render, cameras, prompts, step=state["step"])
        optimizer.zero_grad(set_to_none=True)
        sum(out.losses.values()).backward()
        optimizer.step()
        state["step"] += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        step()
    resting = memory.now()
    times, peaks = [], []
    for _ in range(steps):
        start = time.perf_counter()
        peaks.append(memory.measure(step))
        times.append(time.perf_counter() - start)
        print(f"  {name} step: {times[-1]:.2f} s, peak {peaks[-1] / GiB:.2f} GiB", flush=True)
    return {"time": statistics.median(times), "peak": max(peaks), "resting": resting, "times": times}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), default=None, help="default: fp16 on cuda, fp32 on cpu"
    )
    parser.add_argument("--steps", type=int, default=3, help="timed steps per side")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per side first")
    parser.add_argument("--sample-ms", type=float, default=5.0, help="RSS sampling period on CPU")
    parser.add_argument(
        "--no-checkpointing", action="store_true", help="particle model without gradient checkpointing"
    )
    args = parser.parse_args()
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype or ("fp16" if device.type == "cuda" else "fp32")]

    torch.manual_seed(0)
    unet, vae = sd21_base_unet().to(device, dtype), sd_vae().to(device, dtype)
    denoiser = DiffusersDenoiser(unet, NoiseSchedule.stable_diffusion(), vae=vae)
    # Stand-in prompt embeddings (77 × 1024, as SD 2.1's OpenCLIP-H): no text encoder needed.
    prompts = PromptEmbeddings.from_tensors(torch.randn(1, 77, 1024), torch.randn(1, 77, 1024)).to(device)
    cameras = make_cameras(15.0, 0.0, 1.5, 50.0, 64, device=device)
    memory = PeakMemory(device, args.sample_ms / 1000)
    print(
        f"device={device} dtype={dtype} steps={args.steps} warmup={args.warmup} threads={torch.get_num_threads()}"
    )
    print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)

    sds = run_side(
        "SDS", SDSGuidance(SDSConfig(guidance_scale=7.5), denoiser), prompts, cameras, device, memory,
        args.warmup, args.steps,
    )  # fmt: skip
    release_cpu_memory()
    particle = ParticleModelConfig(gradient_checkpointing=not args.no_checkpointing)
    vsd_guidance = VSDGuidance(
        VSDConfig(guidance_scale=7.5, particle_score="lora", particle=particle), denoiser
    )
    vsd = run_side("VSD", vsd_guidance, prompts, cameras, device, memory, args.warmup, args.steps)

    print(f"load average after: {os.getloadavg()[0]:.2f}")
    unit = "max_memory_allocated" if device.type == "cuda" else "RSS"
    print(f"\n{'':28}{'SDS':>12}{'VSD':>12}")
    print(f"{'step time, median (s)':28}{sds['time']:12.2f}{vsd['time']:12.2f}")
    print(f"{'peak ' + unit + ' (GiB)':28}{sds['peak'] / GiB:12.2f}{vsd['peak'] / GiB:12.2f}")
    print(f"{'resting before steps (GiB)':28}{sds['resting'] / GiB:12.2f}{vsd['resting'] / GiB:12.2f}")
    print(
        f"{'peak − resting (GiB)':28}{(sds['peak'] - sds['resting']) / GiB:12.2f}{(vsd['peak'] - vsd['resting']) / GiB:12.2f}"
    )
    print(f"\npeak memory VSD/SDS: {vsd['peak'] / sds['peak']:.3f}  (target <= 1.15)")
    print(f"step time   VSD/SDS: {vsd['time'] / sds['time']:.3f}  (target <= 2.0)")


if __name__ == "__main__":
    main()
