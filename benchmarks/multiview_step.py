"""One multi-view guidance step vs four single-view SDS steps at the same resolution, at MVDream's size.

Model: a randomly initialised UNet with the published sd-v2.1-base-4view architecture (SD 2.1-base + the 16 → 1280
camera embedding; distill.denoisers.mvdream_convert.MVDREAM_UNET_CONFIG) and a random AutoencoderKL with SD's VAE
config, in an MVDreamDenoiser; random (1, 77, 1024) cond / uncond embeddings. Inputs: learnable 64² images (what
a NeRF renders in MVDream's first 5000 steps), upsampled to 256² and encoded to 32² latents, as MVDream does.

- multi-view: MultiViewSDSGuidance (CFG 50, x0-reconstruction, rescale 0.5) on the 4 views of one object: ONE
  UNet call of 8 (4 views × cond/uncond) with cross-view self-attention → backward → Adam step.
- 4 × single-view: the same UNet with per-view attention (num_views 1), SDSGuidance (CFG 50) on one view per step,
  four steps (4 UNet calls of 2).

Both sides run in this one process, each after --warmup steps; the figure is the median over --steps of (one
multi-view step) / (four single-view steps). Target (issue 13): ≤ 1.2.

    python benchmarks/multiview_step.py                          # CPU, fp32 (~5 minutes on 2 cores)
    python benchmarks/multiview_step.py --device cuda --dtype fp16 --steps 20
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from diffusers import UNet2DConditionModel
from sds_overhead import DTYPES  # benchmarks/, beside this script
from vsd_step import sd_vae

from distill.conditions.prompt_embeddings import PromptEmbeddings
from distill.denoisers.mv_attention import set_num_views
from distill.denoisers.mvdream import MVDreamDenoiser
from distill.denoisers.mvdream_convert import MVDREAM_UNET_CONFIG
from distill.guidance.multiview import MultiViewSDSConfig, MultiViewSDSGuidance
from distill.guidance.sds import SDSConfig, SDSGuidance
from distill.schedule import NoiseSchedule
from geometry.cameras import make_cameras
from geometry.render_output import RenderOutput


def timed_steps(guidance, prompts, cameras, device, views: int, steps: int, warmup: int, per_sample: int):
    """Seconds per call of `per_sample` guidance steps (each on `views` images), median over `steps`."""
    images = torch.rand(views, 64, 64, 3, device=device, requires_grad=True)
    render = RenderOutput(
        rgb=images,
        opacity=torch.ones(views, 64, 64, 1, device=device),
        depth=torch.zeros(views, 64, 64, 1, device=device),
    )
    optimizer = torch.optim.Adam([images], lr=1e-2)
    count = {"step": 0}

    def one() -> None:
        out = guidance(render, cameras, prompts, step=count["step"])
        optimizer.zero_grad(set_to_none=True)
        out.losses["guidance"].backward()
        optimizer.step()
        count["step"] += 1

    def group() -> float:
        start = time.perf_counter()
        for _ in range(per_sample):
            one()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    for _ in range(warmup):
        group()
    times = [group() for _ in range(steps)]
    return statistics.median(times), times


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
    parser.add_argument("--steps", type=int, default=3, help="timed repetitions per side")
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype or ("fp16" if device.type == "cuda" else "fp32")]
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(dict(MVDREAM_UNET_CONFIG)).to(device, dtype)
    denoiser = MVDreamDenoiser(
        unet, NoiseSchedule.stable_diffusion(), vae=sd_vae().to(device, dtype), num_views=4
    )
    prompts = PromptEmbeddings.from_tensors(torch.randn(1, 77, 1024), torch.randn(1, 77, 1024)).to(device)
    prompts.options.view_dependent_prompting = False
    cameras = make_cameras(15.0, torch.tensor([0.0, 90.0, 180.0, -90.0]), 2.0, 40.0, 64, device=device)
    print(
        f"device={device} dtype={dtype} steps={args.steps} warmup={args.warmup} threads={torch.get_num_threads()}"
    )

    multiview = MultiViewSDSGuidance(MultiViewSDSConfig(guidance_scale=50.0), denoiser)
    mv_time, mv_times = timed_steps(multiview, prompts, cameras, device, 4, args.steps, args.warmup, 1)
    print(f"  multi-view step (4 views): {[round(t, 2) for t in mv_times]} s", flush=True)

    set_num_views(denoiser.unet, 1)
    denoiser.num_views = 1
    single = SDSGuidance(SDSConfig(guidance_scale=50.0), denoiser)
    sv_time, sv_times = timed_steps(single, prompts, cameras[:1], device, 1, args.steps, args.warmup, 4)
    print(f"  4 single-view steps:       {[round(t, 2) for t in sv_times]} s", flush=True)

    print(f"\n{'':34}{'seconds':>10}")
    print(f"{'1 multi-view step (4 views)':34}{mv_time:10.2f}")
    print(f"{'4 single-view SDS steps':34}{sv_time:10.2f}")
    print(f"\nmulti-view / (4 × single-view): {mv_time / sv_time:.3f}  (target <= 1.2)")


if __name__ == "__main__":
    main()
