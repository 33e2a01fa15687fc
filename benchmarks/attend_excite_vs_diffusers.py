"""Side-by-side timing of Attend-and-Excite sampling: diffusion_jax vs diffusers' StableDiffusionAttendAndExcite-
Pipeline (PyTorch, pipelines/deprecated) on the same machine and the same random-weight folders.

    python benchmarks/attend_excite_vs_diffusers.py                 # tiny config, then SD-1.x at 256 px
    python benchmarks/attend_excite_vs_diffusers.py --quick         # tiny config only
    python benchmarks/attend_excite_vs_diffusers.py --configs sd1 --batches 1,4
    python benchmarks/attend_excite_vs_diffusers.py --memory 512 --batches 4   # compile-only memory analysis

Both sides sample "a cat and a frog" (token indices 2, 5) for a batch of 1 and of 4 images with DDIM, guidance
7.5, --steps steps, max_iter_to_alter 2 and one iterative-refinement step (thresholds {0: 0.9}, which random
weights never reach, so every image runs --refinement iterations; diffusers' hard-coded cap of 20 is set to the
same number by wrapping its refinement method). Each side runs in its own subprocess (clean peak memory):
- whole call after a warm-up call (text encoding, the loop with its gradient passes, VAE decode); for JAX the
  compile of the whole sampler is reported apart;
- UNet evaluations: diffusers' counted at its UNet's forward (its gradient passes run per image, batch 1; its
  guided passes on batch 2B); ours from the pipeline's counters (gradient passes on the whole batch B, guided
  passes on 2B);
- peak memory: process peak RSS on CPU, device peak bytes on GPU; also for our plain sampling of the same
  batch (on CPU the RSS includes XLA's compile).
--memory SIZE compiles (without running, with unallocated weights) our plain and Attend-and-Excite samplers
for the SD-1.x architecture at SIZE px and prints XLA's memory analysis (temporary buffers, arguments): the
memory question "does A&E at batch 4 fit where plain sampling at batch 4 fits" without a machine that runs it.

Memory (--memory 256 / 512 --batches 4,1; XLA:CPU temporary memory in GiB, 3 DDIM steps, one refinement step;
arguments 3.84 GiB in every row; compile-only, so the load of the machine does not change the figures). "now":
with the CPU fast paths (t2i_common/cpu_conv.py, models/attention.py cpu_attention: its chunks of 128 queries no
longer hold the [B, heads, 4096, 4096] logits of the 512 px self-attention); the other columns were measured
before them:

| size px | batch | plain | A&E before | A&E, gradient_chunk=1 (default) | A&E, gradient_chunk=None | now: plain / A&E (chunk 1) / A&E (None) |
|---|---|---|---|---|---|---|
| 256 | 1 | 0.239 | 2.330 | 0.642 | (= 1) | 0.219 / 0.477 / - |
| 256 | 4 | 0.954 | 4.043 | 0.957 | 2.327 | 0.875 / 0.875 / 1.622 |
| 512 | 1 | 3.169 | 7.528 | 5.819 | (= 1) | 0.875 / 2.344 / - |
| 512 | 4 | 12.675 | 24.904 | 12.678 | 23.140 | 3.500 / 3.500 / 9.167 |

"Before": one gradient pass over the whole batch with jax's own convolution gradient (the code before
gradient_chunk). Two things made it large. (1) The input gradient of a convolution needs the flipped,
in/out-swapped kernel; XLA:CPU materialises it, and since it depends on the weights only its scheduler built all
of them at the start of the program and kept them: 1.7 GiB of weight copies for the SD 1.x UNet, whatever the
batch (the flipped kernels of every convolution the loss's gradient passes through). The gradient pass now
builds each one from a zero computed from its cotangent (models/resnet.py late_kernel_conv), so one lives at a
time. (2) The backward pass keeps the forward's activations, above all the 64 x 64 self-attention probabilities
at 512 px (8 heads x 4096^2 floats, 512 MiB per layer and image); gradient_chunk=1 runs the pass image by image
(lax.map; the images are independent), so that is one image's worth. At batch 4 Attend-and-Excite now needs what
plain sampling needs, within 3 MiB (0.3 % at 256 px, 0.02 % at 512 px), instead of 4.2x / 2.0x before (the
gradient pass now needs less than the rest of the program: 0.54 / 4.70 GiB alone for its 4 images at 256 / 512 px,
3.69 GiB at 256 px before; compiled by itself). At batch 1 one image's gradient pass
still exceeds a guided pass on 2 images (2.7x / 1.8x plain's temporary memory), but it stays below plain sampling
at batch 4. remat (jax.checkpoint per block) saves nothing on XLA:CPU, before or now: jax keeps the recomputation
apart with optimization barriers, XLA:CPU removes them (26 before optimisation, 0 after, for the 256 px pass of one
image) and the recomputation then runs without waiting for the cotangent (the same temporary memory with remat on
and off, 4.70 GiB for the 512 px pass of one image).
Speed of gradient_chunk=1 against the whole batch in one pass: tiny config, batch 4, 10 DDIM steps (5 altered,
2 refinement steps of 3 iterations), 1 CPU device: 6.11 s vs 5.32 s per call (1.15x), measured with other work on
the 2 cores (load about 4). On a GPU with memory to spare gradient_chunk=None (or the per-device batch) is the
faster choice.
The folders and the machine description come from benchmarks/sample_vs_diffusers.py (the SD-1.x architecture:
UNet (320, 640, 1280, 1280), CLIP ViT-L text tower, random weights); at 256 px the 16 x 16 maps of 512 px
become 8 x 8 (attn_res (8, 8), diffusers' own default for that size).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _measure import fmt, machine, peak_rss_gib  # noqa: E402
from sample_vs_diffusers import ROOT, write_folder  # noqa: E402

PROMPT, INDICES = "a cat and a frog", [2, 5]
# (image size (None: the folder's), attention map side) per configuration
CONFIGS = {"tiny": (None, 16), "sd1": (256, 8)}
SIDES = ("diffusers", "diffusion_jax", "diffusion_jax plain")
# Batches > 1 also time our call with the whole batch in one gradient pass (more memory, larger matmuls).
WHOLE_BATCH = "diffusion_jax, gradient_chunk=None"


def _settings(args) -> dict:
  return dict(num_inference_steps=args.steps, guidance_scale=7.5, max_iter_to_alter=2, thresholds={0: 0.9},
              scale_factor=20.0)


def _latents(batch: int, channels: int, size: int):
  import numpy as np
  return np.random.default_rng(0).standard_normal((batch, channels, size, size)).astype(np.float32)


def bench_diffusers(folder: str, args) -> dict:
  import torch
  from diffusers.pipelines.deprecated.stable_diffusion_attend_and_excite import (
      StableDiffusionAttendAndExcitePipeline)
  pipe = StableDiffusionAttendAndExcitePipeline.from_pretrained(folder, safety_checker=None,
                                                                requires_safety_checker=False).to(args.torch_device)
  pipe.set_progress_bar_config(disable=True)
  pipe._perform_iterative_refinement_step = functools.partial(pipe._perform_iterative_refinement_step,
                                                              max_refinement_steps=args.refinement)
  calls = {"n": 0}
  forward = pipe.unet.forward

  def counted(*a, **kw):
    calls["n"] += 1
    return forward(*a, **kw)

  pipe.unet.forward = counted
  height = args.height or pipe.unet.config.sample_size * pipe.vae_scale_factor
  size = height // pipe.vae_scale_factor
  latents = torch.from_numpy(_latents(args.batch, pipe.unet.config.in_channels, size)).to(args.torch_device)
  attn_res = (args.attn_res, args.attn_res)

  def run():
    return pipe([PROMPT] * args.batch, token_indices=[INDICES] * args.batch, latents=latents, height=height,
                width=height, attn_res=attn_res, output_type="np", **_settings(args)).images

  run()  # warm-up
  calls["n"] = 0
  start = time.perf_counter()
  run()
  if args.torch_device == "cuda":
    torch.cuda.synchronize()
  out = {"compile_s": None, "sample_s": time.perf_counter() - start, "unet_calls": calls["n"],
         "peak_rss_gib": peak_rss_gib()}
  if args.torch_device == "cuda":
    out["device_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
  return out


def bench_jax(folder: str, args, plain: bool = False, gradient_chunk: int | None = 1) -> dict:
  """Our Attend-and-Excite call; plain=True: plain sampling of the same batch (the memory baseline)."""
  import jax
  import diffusion_jax
  pipe = diffusion_jax.from_pretrained(folder, dtype=args.dtype, scheduler="ddim")
  height = args.height or pipe.default_size
  latents = _latents(args.batch, pipe.latent_channels, height // pipe.vae_scale_factor)
  attn_res = (args.attn_res, args.attn_res)
  settings = _settings(args)
  if plain:  # the same call without Attend-and-Excite
    settings = dict(num_inference_steps=args.steps, guidance_scale=settings["guidance_scale"])
  else:
    settings.update(token_indices=INDICES, attn_res=attn_res, max_refinement_steps=args.refinement,
                    gradient_chunk=gradient_chunk)

  def run():
    return pipe([PROMPT] * args.batch, latents=latents, height=height, width=height, **settings)

  run()  # compiles, then runs once
  compile_s = pipe.last_timings["compile_s"]
  run()
  t = pipe.last_timings
  per = "per image per device: gradient_chunk=1" if gradient_chunk == 1 else "whole batch in one pass"
  grads = "" if plain else f" + {t['num_gradient_evals']} gradient ({per})"
  out = {"compile_s": compile_s, "sample_s": t["run_s"], "unet_calls": f"{t['num_model_evals']} guided{grads}",
         "peak_rss_gib": peak_rss_gib()}
  dev = jax.devices()[0]
  stats = dev.memory_stats() if dev.platform != "cpu" else None
  if stats and "peak_bytes_in_use" in stats:
    out["device_peak_gib"] = stats["peak_bytes_in_use"] / 2**30
  return out


def memory_analysis(size: int, batch: int, steps: int = 3, whole_batch: bool = True) -> None:
  """Prints XLA's memory analysis of the compiled plain and A&E samplers: A&E with the default gradient_chunk
  (one image at a time), and (batch > 1, whole_batch) with the whole batch in one gradient pass."""
  import jax
  import jax.numpy as jnp
  from diffusion_jax import convert
  from diffusion_jax.attend_excite.indices import padded_indices
  from diffusion_jax.attend_excite.update import AttendExciteInputs, AttendExciteSettings
  from diffusion_jax.model_configs import TextConfig, UNetConfig, VAEConfig
  from diffusion_jax.models import AutoencoderKL, CLIPTextTransformer, UNet2DConditionModel
  from diffusion_jax.pipeline import Pipeline
  from diffusion_jax.schedulers import load_scheduler
  from diffusion_jax.tokenizer import CLIPTokenizer
  from sample_vs_diffusers import _configs, _fixtures
  cfg = _configs("sd1")
  unet = UNet2DConditionModel(UNetConfig.from_diffusers(dict(cfg["unet"])))
  vae = AutoencoderKL(VAEConfig.from_diffusers(dict(cfg["vae"])))
  text = CLIPTextTransformer(TextConfig.from_transformers(dict(cfg["text"])))
  tokenizer = CLIPTokenizer.from_folder(_fixtures().write_tiny_tokenizer(tempfile.mkdtemp()))
  sched = load_scheduler(dict(_class_name="DDIMScheduler", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                              beta_schedule="scaled_linear", set_alpha_to_one=False, steps_offset=1))
  params = {name: convert.abstract_variables(m) for name, m in (("unet", unet), ("vae", vae), ("text_encoder", text))}
  pipe = Pipeline(tokenizer=tokenizer, text_encoder=text, unet=unet, vae=vae, scheduler=sched, params=params,
                  devices=jax.devices()[:1])
  lat = size // 8
  state = sched.set_timesteps(steps, (batch, lat, lat, 4))
  ids = jax.ShapeDtypeStruct((batch, 77), jnp.int32)
  latents = jax.ShapeDtypeStruct((batch, 4, lat, lat), jnp.float32)
  idx, mask = padded_indices([INDICES] * batch)
  inputs = AttendExciteInputs.build(idx, mask, [76] * batch, state.num_steps, thresholds={0: 0.9},
                                    max_iter_to_alter=2, scale_factor=20.0, scale_range=(1.0, 0.5))
  res = (size // 32, size // 32)
  samplers = [("plain", None), ("A&E, gradient_chunk=1 (default)", AttendExciteSettings(attn_res=res))]
  if batch > 1 and whole_batch:
    samplers.append(("A&E, gradient_chunk=None", AttendExciteSettings(attn_res=res, gradient_chunk=None)))
  for name, settings in samplers:
    args = (params, ids, ids, latents, state, jnp.float32(7.5), jax.random.key(0), settings and inputs)
    compiled, compile_s = pipe._sampler((name, batch, size), pipe._mesh_for(batch), args, True, None, settings)
    m = compiled.memory_analysis()
    print(f"| {size} | {batch} | {name} | {m.temp_size_in_bytes / 2**30:.3f} | {m.argument_size_in_bytes / 2**30:.2f} "
          f"| {compile_s:.0f} |", flush=True)


def _run_side(side: str, folder: str, args, batch: int, height, attn_res) -> dict:
  cmd = [sys.executable, os.path.abspath(__file__), "--_side", side, "--_folder", folder, "--steps", str(args.steps),
         "--refinement", str(args.refinement), "--torch_device", args.torch_device, "--_batch", str(batch),
         "--dtype", args.dtype]
  if height:
    cmd += ["--_height", str(height)]
  cmd += ["--_attn_res", str(attn_res)]
  res = subprocess.run(cmd, capture_output=True, text=True)
  if res.returncode != 0:
    raise SystemExit(f"{side} side failed:\n{res.stderr[-4000:]}")
  return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--quick", action="store_true", help="tiny config only")
  p.add_argument("--configs", default=None, help="comma-separated: tiny, sd1 (default tiny,sd1)")
  p.add_argument("--batches", default="1,4", help="comma-separated batch sizes")
  p.add_argument("--steps", type=int, default=3, help="DDIM steps")
  p.add_argument("--refinement", type=int, default=2, help="refinement iterations at step 0")
  p.add_argument("--dtype", default="float32", help="diffusion_jax compute dtype")
  p.add_argument("--torch_device", default=None, help="cpu or cuda (default: cuda if available)")
  p.add_argument("--memory", type=int, default=None, help="compile-only memory analysis at this image size")
  p.add_argument("--no-whole-batch", action="store_true",
                 help="--memory: skip the A&E sampler with the whole batch in one gradient pass")
  p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "sd_bench"),
                 help="where the random-weight diffusers folders are written (reused)")
  for hidden in ("--_side", "--_folder", "--_batch", "--_height", "--_attn_res"):
    p.add_argument(hidden, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.torch_device is None:
    import torch
    args.torch_device = "cuda" if torch.cuda.is_available() else "cpu"
  if args._side:  # child process: one measurement, JSON on the last stdout line
    sys.path.insert(0, ROOT)
    args.batch, args.height = int(args._batch), int(args._height) if args._height else None
    args.attn_res = int(args._attn_res)
    fn = {"diffusers": bench_diffusers, "diffusion_jax": bench_jax,
          "diffusion_jax plain": functools.partial(bench_jax, plain=True),
          WHOLE_BATCH: functools.partial(bench_jax, gradient_chunk=None)}[args._side]
    print(json.dumps(fn(args._folder, args)))
    return
  names = ["tiny"] if args.quick else (args.configs or "tiny,sd1").split(",")
  batches = [int(b) for b in args.batches.split(",")]
  print(f"machine: {machine()}")
  if args.memory:
    sys.path.insert(0, ROOT)
    print("| size px | batch | sampler | XLA temp GiB | arguments GiB | compile s |\n|---|---|---|---|---|---|")
    for batch in batches:
      memory_analysis(args.memory, batch, args.steps, not args.no_whole_batch)
    return
  rows = []
  for name in names:
    if name not in CONFIGS:
      raise SystemExit(f"unknown config {name!r}; use tiny or sd1.")
    folder = write_folder(name, args.workdir)
    height, attn_res = CONFIGS[name]
    for batch in batches:
      sides = SIDES + ((WHOLE_BATCH,) if batch > 1 else ())
      res = {side: _run_side(side, folder, args, batch, height, attn_res) for side in sides}
      rows.append((name, batch, res))
      print(f"{name} batch {batch}: {json.dumps(res)}", flush=True)
  mem_key = "device_peak_gib" if any("device_peak_gib" in r[2]["diffusion_jax"] for r in rows) else "peak_rss_gib"
  print(f"\n| config | batch | side | compile s | whole call s | UNet evaluations | peak "
        f"{'device' if mem_key == 'device_peak_gib' else 'RSS'} GiB |\n|" + "---|" * 7)
  for name, batch, res in rows:
    for side in res:
      r = res[side]
      print(f"| {name} | {batch} | {side} | {fmt(r['compile_s'], '.1f')} | {fmt(r['sample_s'])} | "
            f"{r['unet_calls']} | {fmt(r.get(mem_key), '.2f')} |")
    d, j = res["diffusers"], res["diffusion_jax"]
    for label, r in (("jax", j), ("jax (gradient_chunk=None)", res.get(WHOLE_BATCH))):
      if r is not None:
        print(f"| {name} | {batch} | ratio {label}/diffusers | | {r['sample_s'] / d['sample_s']:.2f} | | "
              f"{fmt(r.get(mem_key) / d.get(mem_key), '.2f')} |")
    print(f"| {name} | {batch} | memory A&E / plain (jax) | | | | "
          f"{fmt(j.get(mem_key) / res['diffusion_jax plain'].get(mem_key), '.2f')} |")


if __name__ == "__main__":
  main()
