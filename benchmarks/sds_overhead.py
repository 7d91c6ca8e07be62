"""SDS overhead: one SDSGuidance call (forward + backward of the injected loss) / the bare CFG UNet forward.

Model: a randomly initialised UNet with the Stable Diffusion 2.1-base configuration (865M parameters), render-as-
latent input (a 64² render fed directly as the 4-channel latent, so no VAE), batch 1 → CFG batch 2. Both
timings are medians over --repeats runs after one warm-up, measured in the same process. Target: ratio ≤ 1.10.

    python benchmarks/sds_overhead.py                       # CPU, fp32, 3 repeats (a few minutes on 2 cores)
    python benchmarks/sds_overhead.py --device cuda --dtype fp16 --repeats 20
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from diffusers import UNet2DConditionModel

from distill.conditions.prompt_embeddings import PromptEmbeddings
from distill.denoisers.diffusers_unet import DiffusersDenoiser
from distill.guidance.sds import SDSConfig, SDSGuidance
from distill.schedule import NoiseSchedule
from geometry.cameras import make_cameras
from geometry.render_output import RenderOutput

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def sd21_base_unet() -> UNet2DConditionModel:
    """UNet2DConditionModel with the SD 2.1-base config (random weights: timing only)."""
    return UNet2DConditionModel(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        down_block_types=(
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=1024,
        attention_head_dim=(5, 10, 20, 20),
        use_linear_projection=True,
    )


def _timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), default=None, help="default: fp16 on cuda, fp32 on cpu"
    )
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype or ("fp16" if device.type == "cuda" else "fp32")]
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")

    torch.manual_seed(0)
    unet = sd21_base_unet().to(device).requires_grad_(False).eval()
    if dtype != torch.float32:
        unet = unet.to(dtype)
    denoiser = DiffusersDenoiser(unet, NoiseSchedule.stable_diffusion(), vae=None, image_size=None)
    denoiser.space = "latent"  # render-as-latent: the 4-channel x0 is the render itself
    guidance = SDSGuidance(SDSConfig(input="latent"), denoiser)
    # Stand-in prompt embeddings (77 × 1024, as SD 2.1's OpenCLIP-H): no text encoder needed for timing.
    prompts = PromptEmbeddings.from_tensors(torch.randn(1, 77, 1024), torch.randn(1, 77, 1024)).to(device)
    cameras = make_cameras(15.0, 0.0, 1.5, 50.0, 64, device=device)
    render = RenderOutput(
        rgb=torch.rand(1, 64, 64, 3, device=device, requires_grad=True),
        opacity=torch.rand(1, 64, 64, 1, device=device, requires_grad=True),
        depth=torch.zeros(1, 64, 64, 1, device=device),
    )
    x_t = torch.randn(2, 4, 64, 64, device=device, dtype=dtype)
    t = torch.full((2,), 500, device=device)
    hidden = torch.cat([prompts.prompt, prompts.uncond]).to(dtype)

    def bare_cfg_forward() -> None:
        with torch.no_grad():
            unet(x_t, t, encoder_hidden_states=hidden)

    def sds_step() -> None:
        out = guidance(render, cameras, prompts, step=0)
        out.losses["guidance"].backward()

    timings: dict[str, list[float]] = {"bare": [], "sds": []}
    for fn in (bare_cfg_forward, sds_step):  # warm-up (allocator, kernels, lazy init)
        fn()
    for _ in range(args.repeats):  # interleaved, so drift in machine load hits both alike
        timings["bare"].append(_timed(bare_cfg_forward, device))
        timings["sds"].append(_timed(sds_step, device))
    bare, sds = statistics.median(timings["bare"]), statistics.median(timings["sds"])
    print(f"device={device} dtype={dtype} repeats={args.repeats}")
    print(f"bare CFG UNet forward (batch 2): {bare * 1000:.1f} ms (median)")
    print(f"SDS guidance call + backward:     {sds * 1000:.1f} ms (median)")
    print(f"ratio (SDS / bare CFG forward):   {sds / bare:.3f}  (target <= 1.10)")


if __name__ == "__main__":
    main()
