"""The per-step Attend-and-Excite latent update, traced inside the sampler's loop, batched over images.

    settings = AttendExciteSettings(attn_res=(16, 16))                    # static: part of the compiled key
    inputs = AttendExciteInputs.build(indices, mask, last, thresholds, ...)  # arrays: per call
    update = make_latent_update(unet, settings, inputs)
    latents, diag = pipe.denoise(..., latent_update_fn=update, update_carry=init_diagnostics(...))

At loop index i (over the scheduler's timesteps; PNDM has num_inference_steps + 1):
1. Only when i < max_iter_to_alter or i is a threshold step (lax.cond: elsewhere no gradient pass at all), a
   conditional-only UNet forward on the latents as they are (not passed through scale_model_input), capturing
   the cross-attention maps at attn_res; the loss of `loss.py` per image and its gradient w.r.t. the latents
   (computed `gradient_chunk` images per device at a time, the same numbers as one pass over the batch).
2. At a threshold step, images with loss > 1 - threshold are refined (a lax.while_loop over the batch, each
   image with its own state), with the stopping rule of diffusers' port: the loop test `loss > target`
   (target = max(0, 1 - threshold)) sees the loss measured before the previous update; each iteration evaluates
   at the current latents, updates them unless the loss is 0, and counts; at most max_refinement_steps
   iterations; then the loss is measured once more at the final latents. An image that stopped keeps its
   latents while others go on. (The reference's first iteration re-evaluates the entry latents; here the entry
   evaluation is reused, the same numbers one UNet pass cheaper.)
3. If i < max_iter_to_alter and the loss is not 0: latents -= step_size[i] * grad, step_size[i] =
   scale_factor * sqrt(linspace(scale_range[0], scale_range[1], num_timesteps)[i]).
A non-finite loss or gradient skips that image's update (step 2 or 3) and is counted in `skipped_updates`.

Diagnostics (the loop carry; [S, B, ...] with S the number of timesteps): `loss` (the loss step 3 uses, NaN where
no gradient pass ran), `initial_loss` (before refinement), `max_attention` [S, B, K] (with `loss`; NaN on
padding subjects), `initial_max_attention` (with `initial_loss`: at step 0 the initial noise's, what plain sampling
sees), `refinement_steps`, `skipped_updates`, and `attention_maps` [A, B, H, W, K] at the static
`attention_steps` (the (smoothed) subject maps of a conditional pass on the latents the guided step sees).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from diffusion_jax.attend_excite.loss import subject_loss, subject_maps
from diffusion_jax.models import mean_cross_attention


@dataclasses.dataclass(frozen=True)
class AttendExciteSettings:
  """What changes the traced program (so part of the compiled sampler's cache key)."""
  attn_res: tuple[int, int] = (16, 16)
  smooth_attentions: bool = True
  kernel_size: int = 3
  sigma: float = 0.5
  max_refinement_steps: int = 20
  # Images per device in one gradient pass (None: all of a device's images at once). The images are independent,
  # so the batch's gradient is computed as a sequence of passes (lax.map) over chunks of this many images, and
  # the backward pass keeps the activations of one chunk only (largest divisor of the per-device batch <= this).
  # 1 (default): at batch 4 Attend-and-Excite needs the memory of plain sampling (XLA:CPU temporary memory,
  # SD-1.x architecture: 0.957 vs 0.954 GiB at 256 px, 12.68 vs 12.68 GiB at 512 px; one pass over the whole
  # batch: 2.33 / 23.14 GiB; before this setting and the late convolution kernels: 4.04 / 24.90 GiB). More images
  # per pass run faster where memory is to spare (a GPU), at the memory of that many images' backward passes
  # (1.15x the time of one pass at batch 4 on the tiny CPU config). Table: benchmarks/attend_excite_vs_diffusers.py.
  gradient_chunk: Optional[int] = 1
  # Recompute block activations (jax.checkpoint per resnet / transformer block) in the gradient pass. Off by
  # default: it saves nothing on XLA:CPU (the same temporary memory on and off, with whole batches or chunks),
  # which removes the optimization barriers that keep the recomputation apart from the forward pass, so the
  # recomputation does not wait for the backward pass (see the benchmark).
  remat: bool = False
  attention_steps: tuple[int, ...] = ()

  def map_kwargs(self) -> dict:
    return dict(smooth_attentions=self.smooth_attentions, kernel_size=self.kernel_size, sigma=self.sigma)


@struct.dataclass
class AttendExciteInputs:
  """Per-call arrays: indices int32 [B, K] and mask bool [B, K] (padding False), last int32 [B] (see
  loss.token_attention), per step [S]: step_size, threshold, has_threshold; max_iter_to_alter int32 []."""
  indices: jax.Array
  mask: jax.Array
  last: jax.Array
  step_size: jax.Array
  threshold: jax.Array
  has_threshold: jax.Array
  max_iter_to_alter: jax.Array

  @classmethod
  def build(cls, indices: np.ndarray, mask: np.ndarray, last: Sequence[int], num_timesteps: int, *,
            thresholds: Mapping[int, float], max_iter_to_alter: int, scale_factor: float,
            scale_range: tuple[float, float]) -> "AttendExciteInputs":
    step_size = scale_factor * np.sqrt(np.linspace(scale_range[0], scale_range[1], num_timesteps))
    threshold = np.zeros(num_timesteps, np.float32)
    has = np.zeros(num_timesteps, bool)
    for k, v in thresholds.items():
      threshold[k], has[k] = v, True
    return cls(np.asarray(indices, np.int32), np.asarray(mask, bool), np.asarray(last, np.int32),
               step_size.astype(np.float32), threshold, has, np.int32(max_iter_to_alter))


@struct.dataclass
class _Eval:
  loss: jax.Array      # [B]
  maxes: jax.Array     # [B, K]
  grad: jax.Array      # [B, H, W, C]
  finite: jax.Array    # [B]


def init_diagnostics(num_timesteps: int, latent_shape: Sequence[int], num_subjects: int,
                     settings: AttendExciteSettings) -> dict:
  """The diagnostics carry before the loop (latent_shape NHWC)."""
  b = latent_shape[0]
  nan = lambda *s: jnp.full(s, jnp.nan, jnp.float32)
  return {"loss": nan(num_timesteps, b), "initial_loss": nan(num_timesteps, b),
          "max_attention": nan(num_timesteps, b, num_subjects),
          "initial_max_attention": nan(num_timesteps, b, num_subjects),
          "refinement_steps": jnp.zeros((num_timesteps, b), jnp.int32),
          "skipped_updates": jnp.zeros((num_timesteps, b), jnp.int32),
          "attention_maps": jnp.zeros((len(settings.attention_steps), b) + tuple(settings.attn_res)
                                      + (num_subjects,), jnp.float32)}


def _where(mask: jax.Array, a: Any, b: Any) -> Any:
  """Per-image select between two pytrees whose leaves lead with the batch axis."""
  return jax.tree.map(lambda x, y: jnp.where(mask.reshape((-1,) + (1,) * (x.ndim - 1)), x, y), a, b)


def _in_chunks(fn, args: tuple, shards: int, chunk: Optional[int]) -> Any:
  """fn(*args) for a batch (the leading axis of every arg; fn maps images independently) as a sequence
  (lax.map) of calls on `chunk` images per shard: the batch is `shards` blocks of consecutive images (one per
  device, as the batch sharding lays them out), and each call takes one chunk of every block, so every device
  keeps to its own images. chunk None or >= the block: one call on the whole batch."""
  b = args[0].shape[0]
  if b % shards:
    raise ValueError(f"a batch of {b} images cannot be split into {shards} equal shards.")
  per = b // shards
  c = per if chunk is None else max(d for d in range(1, min(chunk, per) + 1) if per % d == 0)
  steps = per // c
  if steps == 1:
    return fn(*args)

  def split(x):  # [shards * steps * c, ...] -> [steps, shards * c, ...]
    x = x.reshape((shards, steps, c) + x.shape[1:])
    return jnp.swapaxes(x, 0, 1).reshape((steps, shards * c) + x.shape[3:])

  def merge(y):  # the inverse
    y = y.reshape((steps, shards, c) + y.shape[2:])
    return jnp.swapaxes(y, 0, 1).reshape((b,) + y.shape[3:])

  return jax.tree.map(merge, jax.lax.map(lambda a: fn(*a), jax.tree.map(split, args)))


def make_latent_update(unet: Any, settings: AttendExciteSettings, inputs: AttendExciteInputs, shards: int = 1):
  """fn(params, latents [B, H, W, C], i, t, cond [B, T, D], diagnostics) -> (latents, diagnostics), for
  `Pipeline.denoise(latent_update_fn=..., update_carry=...)`. shards: the number of devices the batch is split
  over (equal blocks of consecutive images), so that chunked gradient passes keep to each device's images."""
  res = tuple(settings.attn_res)
  inputs = jax.tree.map(jnp.asarray, inputs)  # numpy inputs (closed over) index with traced step numbers too
  # Gradients w.r.t. the latents only: the convolutions' flipped kernels are built as the backward pass needs
  # them (XLA:CPU otherwise keeps all of them, 1.7 GiB for SD 1.x; models/resnet.py late_kernel_conv).
  grad_unet = unet.clone(remat=settings.remat, late_conv_kernels=True)
  kw = settings.map_kwargs()

  def maps_of(params, module, latents, t, cond):
    _, state = module.apply(params["unet"], latents, t, cond, capture_cross_attn_at=(res,),
                            mutable=["intermediates"])
    return mean_cross_attention(state["intermediates"])

  def evaluate(params, latents, t, cond) -> _Eval:
    def loss_and_grad(latents, cond, indices, last, mask):
      def total(z):
        maxes = subject_maps(maps_of(params, grad_unet, z, t, cond), indices, last, res, **kw).max(axis=(1, 2))
        loss = subject_loss(maxes, mask)
        return loss.sum(), (loss, maxes)  # images are independent: d(sum)/d(latents_b) = d(loss_b)/d(latents_b)

      (_, (loss, maxes)), grad = jax.value_and_grad(total, has_aux=True)(latents)
      return loss, maxes, grad

    loss, maxes, grad = _in_chunks(loss_and_grad, (latents, cond, inputs.indices, inputs.last, inputs.mask),
                                   shards, settings.gradient_chunk)
    finite = jnp.isfinite(loss) & jnp.all(jnp.isfinite(grad), axis=tuple(range(1, grad.ndim)))
    return _Eval(loss, maxes, grad, finite)

  def step(latents, e: _Eval, step_size, apply):
    """latents - step_size * grad where `apply` and the evaluation is finite; (latents, skipped)."""
    ok = apply & e.finite
    moved = latents - step_size * e.grad
    return _where(ok, moved, latents), (apply & ~e.finite).astype(jnp.int32)

  def refine(params, latents, e0: _Eval, active, t, cond, threshold, step_size):
    target = jnp.maximum(0.0, 1.0 - threshold)
    zeros = jnp.zeros_like(inputs.last)

    def body(s):
      latents, e, active, iters, skipped = s
      latents, skip = step(latents, e, step_size, active & (e.loss != 0))
      iters = iters + active.astype(jnp.int32)
      # The reference's loop test sees the loss measured before this update.
      still = active & (e.loss > target) & (iters < settings.max_refinement_steps)
      new = evaluate(params, latents, t, cond)  # next iteration's evaluation, or the final re-evaluation
      return latents, _where(active, new, e), still, iters, skipped + skip

    s = (latents, e0, active, zeros, zeros)
    latents, e, _, iters, skipped = jax.lax.while_loop(lambda s: jnp.any(s[2]), body, s)
    return latents, e, iters, skipped

  def attend_and_excite(params, latents, i, t, cond, diag):
    threshold, is_threshold = inputs.threshold[i], inputs.has_threshold[i]
    alter = i < inputs.max_iter_to_alter
    step_size = inputs.step_size[i]
    e0 = evaluate(params, latents, t, cond)
    # Refinement entry (reference: `i in thresholds and loss > 1 - threshold`), and its loop test on entry.
    active = is_threshold & (e0.loss > 1.0 - threshold) & (e0.loss > jnp.maximum(0.0, 1.0 - threshold))
    zeros = jnp.zeros_like(inputs.last)
    latents, e, iters, skipped = jax.lax.cond(
        jnp.any(active), lambda: refine(params, latents, e0, active, t, cond, threshold, step_size),
        lambda: (latents, e0, zeros, zeros))
    latents, skip = step(latents, e, step_size, alter & (e.loss != 0))
    maxes, maxes0 = (jnp.where(inputs.mask, m, jnp.nan) for m in (e.maxes, e0.maxes))
    diag = dict(diag, loss=diag["loss"].at[i].set(e.loss), initial_loss=diag["initial_loss"].at[i].set(e0.loss),
                max_attention=diag["max_attention"].at[i].set(maxes),
                initial_max_attention=diag["initial_max_attention"].at[i].set(maxes0),
                refinement_steps=diag["refinement_steps"].at[i].set(iters),
                skipped_updates=diag["skipped_updates"].at[i].set(skipped + skip))
    return latents, diag

  def record_maps(params, latents, i, t, cond, diag):
    steps = jnp.asarray(settings.attention_steps, jnp.int32)
    maps = subject_maps(maps_of(params, unet, latents, t, cond), inputs.indices, inputs.last, res, **kw)
    slot = jnp.argmax(steps == i)
    return dict(diag, attention_maps=diag["attention_maps"].at[slot].set(maps))

  def update(params, latents, i, t, cond, diag):
    needed = (i < inputs.max_iter_to_alter) | inputs.has_threshold[i]
    latents, diag = jax.lax.cond(needed, lambda: attend_and_excite(params, latents, i, t, cond, diag),
                                 lambda: (latents, diag))
    if settings.attention_steps:
      wanted = jnp.any(jnp.asarray(settings.attention_steps) == i)
      diag = jax.lax.cond(wanted, lambda: record_maps(params, latents, i, t, cond, diag), lambda: diag)
    return latents, diag

  return update
