"""Side-by-side timing of Stable Diffusion sampling: diffusion_jax vs diffusers (PyTorch) on the same machine.

    python benchmarks/sample_vs_diffusers.py            # tiny config, then the SD-1.x architecture
    python benchmarks/sample_vs_diffusers.py --quick    # tiny config only
    python benchmarks/sample_vs_diffusers.py --configs sd1 --steps 2 --torch_device cpu

Both sides load the same diffusers folder with random weights (written once by diffusers into --workdir) and
run batch 1 with classifier-free guidance (the UNet sees batch 2). Measured per side, each in its own
subprocess so peak memory is that side's alone:
- one denoising step: the guided UNet evaluation plus the scheduler step (median of --repeats runs after a
  warm-up); for JAX the jit compile time is reported apart;
- a whole sampling call (--steps DDIM steps + VAE decode; text encoding included), after a warm-up call;
  for JAX the compile of the whole sampler is reported apart;
- peak memory: process peak RSS on CPU (_measure.peak_rss_gib: VmHWM), device peak bytes on GPU.
The SD-1.x architecture is 512 x 512 images (64 x 64 latents), UNet (320, 640, 1280, 1280), CLIP ViT-L text.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _measure import fmt, machine, median, peak_rss_gib, run_child, timed  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPT = "a red cat sitting on a bench"


def _fixtures():
  """tests/diffusion_fixtures.py: the tiny SD-1.x-style test folder's sizes and its small CLIP tokenizer."""
  sys.path.insert(0, os.path.join(ROOT, "tests"))
  import diffusion_fixtures
  return diffusion_fixtures


def _configs(name: str) -> dict:
  """diffusers constructor kwargs of the UNet, VAE and CLIP text model of a benchmark configuration."""
  tiny = _fixtures().tiny_configs("sd1")
  if name == "tiny":
    return tiny
  if name == "sd1":
    unet = dict(sample_size=64, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=768,
                attention_head_dim=8)
    vae = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, sample_size=512,
               down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    # CLIP ViT-L/14 text tower; the vocabulary keeps CLIP's size (the tokenizer is the tiny test one).
    text = dict(tiny["text"], vocab_size=49408, hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                num_hidden_layers=12, projection_dim=768)
    return dict(tiny, unet=unet, vae=vae, text=text)
  raise SystemExit(f"unknown config {name!r}; use tiny or sd1.")


def write_folder(name: str, workdir: str) -> str:
  """A diffusers StableDiffusionPipeline folder with random weights (reused if already written)."""
  folder = os.path.join(workdir, f"bench_{name}")
  if os.path.isfile(os.path.join(folder, "model_index.json")):
    return folder
  import torch
  from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
  from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
  cfg = _configs(name)
  torch.manual_seed(0)
  tok_dir = _fixtures().write_tiny_tokenizer(os.path.join(workdir, f"tok_{name}"), cfg["pad_token"])
  sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                        set_alpha_to_one=False, steps_offset=1)
  pipe = StableDiffusionPipeline(
      vae=AutoencoderKL(**cfg["vae"]), text_encoder=CLIPTextModel(CLIPTextConfig(**cfg["text"])),
      tokenizer=CLIPTokenizer.from_pretrained(tok_dir), unet=UNet2DConditionModel(**cfg["unet"]),
      scheduler=sched, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
  pipe.save_pretrained(folder)
  # transformers 5 saves only tokenizer.json; SD folders (and diffusion_jax) carry vocab.json + merges.txt.
  _fixtures().write_tiny_tokenizer(os.path.join(folder, "tokenizer"), cfg["pad_token"])
  return folder


def bench_torch(folder: str, steps: int, repeats: int, device: str) -> dict:
  import torch
  from diffusers import StableDiffusionPipeline
  torch.set_grad_enabled(False)
  pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
  pipe = pipe.to(device)
  pipe.set_progress_bar_config(disable=True)
  unet, sched = pipe.unet, pipe.scheduler
  size = unet.config.sample_size
  sched.set_timesteps(steps)
  latents = torch.randn(1, 4, size, size, device=device)
  emb = torch.randn(2, 77, unet.config.cross_attention_dim, device=device)
  t = sched.timesteps[0]

  def one_step():
    out = unet(torch.cat([latents] * 2), t, encoder_hidden_states=emb).sample
    uncond, cond = out.chunk(2)
    res = sched.step(uncond + 7.5 * (cond - uncond), t, latents).prev_sample
    if device == "cuda":
      torch.cuda.synchronize()
    return res

  one_step()
  times = timed(one_step, repeats)

  def sample():
    return pipe(PROMPT, num_inference_steps=steps, guidance_scale=7.5, output_type="np",
                generator=torch.Generator(device).manual_seed(0)).images

  sample()  # warm-up (allocator, lazy inits), as the JAX side's compile call
  start = time.perf_counter()
  sample()
  run = time.perf_counter() - start
  out = {"step_compile_s": None, "step_s": median(times), "sample_compile_s": None, "sample_s": run,
         "peak_rss_gib": peak_rss_gib()}
  if device == "cuda":
    out["device_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
  return out


def bench_jax(folder: str, steps: int, repeats: int) -> dict:
  import jax
  import jax.numpy as jnp
  import diffusion_jax
  pipe = diffusion_jax.from_pretrained(folder, dtype=jnp.float32, scheduler="ddim")
  size = pipe.unet.config.sample_size
  state = pipe.scheduler.set_timesteps(steps, (1, size, size, 4))
  dev = jax.devices()[0]
  params = pipe._placed_params(pipe._mesh_for(1))  # the copy the sampler uses too (no second copy)
  latents = jax.device_put(jax.random.normal(jax.random.key(0), (1, size, size, 4)), dev)
  emb = jax.device_put(jax.random.normal(jax.random.key(1), (2, 77, pipe.unet.config.cross_attention_dim)), dev)

  def one_step(params, latents, emb, state):
    out = pipe.unet_apply(params, jnp.concatenate([latents] * 2), state.timesteps[0], emb)
    uncond, cond = jnp.split(out, 2)
    return pipe.scheduler.step(state, uncond + 7.5 * (cond - uncond), 0, latents)[0]

  start = time.perf_counter()
  step_fn = jax.jit(one_step).lower(params, latents, emb, state).compile()
  step_compile = time.perf_counter() - start
  jax.block_until_ready(step_fn(params, latents, emb, state))
  times = timed(lambda: jax.block_until_ready(step_fn(params, latents, emb, state)), repeats)
  del step_fn
  pipe(PROMPT, num_inference_steps=steps, guidance_scale=7.5, seeds=[0])  # compiles, then runs once
  compile_s = pipe.last_timings["compile_s"]
  pipe(PROMPT, num_inference_steps=steps, guidance_scale=7.5, seeds=[0])
  out = {"step_compile_s": step_compile, "step_s": median(times), "sample_compile_s": compile_s,
         "sample_s": pipe.last_timings["run_s"], "peak_rss_gib": peak_rss_gib()}
  stats = dev.memory_stats() if dev.platform != "cpu" else None
  if stats and "peak_bytes_in_use" in stats:
    out["device_peak_gib"] = stats["peak_bytes_in_use"] / 2**30
  return out


def _run_side(side: str, folder: str, args: argparse.Namespace) -> dict:
  """Runs one side in a fresh process (clean peak memory, no shared allocator state)."""
  cmd = [sys.executable, os.path.abspath(__file__), "--_side", side, "--_folder", folder, "--steps",
         str(args.steps), "--repeats", str(args.repeats), "--torch_device", args.torch_device]
  return run_child(cmd, side)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--quick", action="store_true", help="tiny config only")
  p.add_argument("--configs", default=None, help="comma-separated: tiny, sd1 (default tiny,sd1)")
  p.add_argument("--steps", type=int, default=None, help="sampling steps (default: 10 tiny, 2 sd1)")
  p.add_argument("--repeats", type=int, default=3, help="timed repetitions of the single step")
  p.add_argument("--torch_device", default=None, help="cpu or cuda (default: cuda if available)")
  p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "sd_bench"),
                 help="where the random-weight diffusers folders are written (reused)")
  p.add_argument("--_side", help=argparse.SUPPRESS)
  p.add_argument("--_folder", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.torch_device is None:
    import torch
    args.torch_device = "cuda" if torch.cuda.is_available() else "cpu"
  if args._side:  # child process: one measurement, JSON on the last stdout line
    sys.path.insert(0, ROOT)
    fn = bench_torch if args._side == "diffusers" else bench_jax
    kwargs = {"device": args.torch_device} if args._side == "diffusers" else {}
    print(json.dumps(fn(args._folder, args.steps, args.repeats, **kwargs)))
    return
  names = ["tiny"] if args.quick else (args.configs or "tiny,sd1").split(",")
  print(f"machine: {machine()}")
  rows = []
  for name in names:
    steps = args.steps or (10 if name == "tiny" else 2)
    folder = write_folder(name, args.workdir)
    sub = argparse.Namespace(**{**vars(args), "steps": steps})
    res = {side: _run_side(side, folder, sub) for side in ("diffusers", "diffusion_jax")}
    rows.append((name, steps, res))
    print(f"{name}: {json.dumps(res)}", flush=True)
  mem_key = "device_peak_gib" if any("device_peak_gib" in r[2]["diffusion_jax"] for r in rows) else "peak_rss_gib"
  header = ("| config | steps | side | step compile s | step s | sample compile s | sample s | steps/s | "
            f"peak {'device' if mem_key == 'device_peak_gib' else 'RSS'} GiB |")
  print("\n" + header + "\n|" + "---|" * 9)
  for name, steps, res in rows:
    for side in ("diffusers", "diffusion_jax"):
      r = res[side]
      print(f"| {name} | {steps} | {side} | {fmt(r['step_compile_s'], '.1f')} | {fmt(r['step_s'])} | "
            f"{fmt(r['sample_compile_s'], '.1f')} | {fmt(r['sample_s'])} | {steps / r['sample_s']:.3g} | "
            f"{fmt(r.get(mem_key), '.2f')} |")
    d, j = res["diffusers"], res["diffusion_jax"]
    print(f"| {name} | {steps} | ratio jax/diffusers | | {j['step_s'] / d['step_s']:.2f} | | "
          f"{j['sample_s'] / d['sample_s']:.2f} | | {fmt(j.get(mem_key) / d.get(mem_key), '.2f')} |")


if __name__ == "__main__":
  main()
