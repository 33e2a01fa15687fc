"""Text-to-image sampling with a Stable-Diffusion-style latent diffusion model, as one jitted function.

    pipe = diffusion_jax.from_pretrained("path/to/sd-folder", dtype=jnp.bfloat16, scheduler="ddim")
    images = pipe(["a red cat", "a blue dog"], negative_prompt="blurry", num_inference_steps=30, seeds=[0, 1])
    pipe.save_pretrained("copy")          # the same diffusers layout; diffusers and from_pretrained read it

One call runs text encoding, the whole classifier-free-guided denoising loop (`lax.fori_loop` over the
scheduler's steps, [uncond, cond] concatenated into one UNet batch) and the VAE decode in a single compiled
function, cached per static shape (batch, resolution, steps, scheduler). The batch is split over a ("data",
"fsdp") device mesh; parameters are replicated.

Numerics follow diffusers' StableDiffusionPipeline: prompts padded to the tokenizer's max length, text
embeddings = the text encoder's last hidden state, initial latents (NCHW, as diffusers) multiplied by the
scheduler's init_noise_sigma, latents divided by the VAE scaling factor before decoding, images (x / 2 + 0.5)
clipped to [0, 1]. Latents and scheduler arithmetic stay float32 whatever the model dtype.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any, Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from diffusion_jax import convert
from diffusion_jax.model_configs import check_text_conditioning
from diffusion_jax.schedulers import Scheduler, SchedulerState, load_scheduler
from diffusion_jax.tokenizer import CLIPTokenizer

log = logging.getLogger(__name__)

# A per-step latent update run before each guided step (Attend-and-Excite):
# fn(params, latents_nhwc, step_index, timestep, cond_embeddings) -> latents_nhwc. Traced inside the loop.
# With `update_carry` (see Pipeline.denoise) it takes the carry as a sixth argument and returns (latents, carry).
LatentUpdateFn = Callable[[Any, jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]

DTYPES = {"float32": jnp.float32, "fp32": jnp.float32, "bfloat16": jnp.bfloat16, "bf16": jnp.bfloat16,
          "float16": jnp.float16, "fp16": jnp.float16}
_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


def resolve_dtype(dtype: Any) -> Any:
  """jnp dtype from a name ("bf16", "float32", ...) or a dtype."""
  if isinstance(dtype, str):
    if dtype not in DTYPES:
      raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}.")
    return DTYPES[dtype]
  if jnp.dtype(dtype) not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
    raise ValueError(f"dtype {dtype} is not supported; use float32, bfloat16 or float16.")
  return dtype


# ---- device mesh ---------------------------------------------------------------------------------------
def _make_mesh(devices: Sequence[Any]) -> jax.sharding.Mesh:
  try:
    from t2i_common.parallel import create_mesh
  except ImportError:  # keeps the pipeline usable without the training infrastructure
    return jax.make_mesh((len(devices),), ("data",), devices=devices,
                         axis_types=(jax.sharding.AxisType.Auto,))
  return create_mesh({"data": -1, "fsdp": 1}, devices=devices)


def _batch_spec(mesh: jax.sharding.Mesh) -> P:
  return P(tuple(mesh.axis_names))


# ---- the pipeline --------------------------------------------------------------------------------------
@dataclasses.dataclass
class Pipeline:
  """Tokenizer, text encoder, UNet, VAE and scheduler with their parameters (see the module docstring).

  params: {"text_encoder": variables, "unet": variables, "vae": variables}, each {"params": tree}.
  """
  tokenizer: Any
  text_encoder: Any
  unet: Any
  vae: Any
  scheduler: Scheduler
  params: dict[str, Any]
  dtype: Any = jnp.float32
  model_index: dict[str, Any] = dataclasses.field(default_factory=dict)
  source: Optional[str] = None
  devices: Optional[Sequence[Any]] = None
  # Timings of the last call {"compile_s", "run_s", "num_model_evals"}.
  _placed: dict = dataclasses.field(default_factory=dict, repr=False)
  last_timings: dict = dataclasses.field(default_factory=dict, repr=False)
  # Attend-and-Excite diagnostics of the last call (empty after plain sampling); see __call__.
  last_attend_excite: dict = dataclasses.field(default_factory=dict, repr=False)

  # ---- properties -------------------------------------------------------------------------------------
  @property
  def vae_scale_factor(self) -> int:
    return 2 ** (len(self.vae.config.block_out_channels) - 1)

  @property
  def latent_channels(self) -> int:
    return self.unet.config.in_channels

  @property
  def default_size(self) -> int:
    return self.unet.config.sample_size * self.vae_scale_factor

  def with_scheduler(self, scheduler: Union[str, Scheduler]) -> "Pipeline":
    """The same models and parameters with another scheduler (a name such as "ddim", or an instance)."""
    if isinstance(scheduler, str):
      scheduler = load_scheduler(self.scheduler.to_diffusers_config(), name=scheduler)
    return dataclasses.replace(self, scheduler=scheduler, last_timings={})

  # ---- traced building blocks (usable inside any jit) ------------------------------------------------
  def encode_text(self, params: dict, input_ids: jax.Array) -> jax.Array:
    """[B, T] token ids -> [B, T, D] text embeddings (last hidden state, as SD pipelines use)."""
    return self.text_encoder.apply(params["text_encoder"], input_ids)["last_hidden_state"]

  def unet_apply(self, params: dict, latents: jax.Array, timestep: jax.Array, context: jax.Array,
                 **kwargs: Any) -> Any:
    """UNet on NHWC latents (kwargs, e.g. capture_cross_attn_at / mutable, go to the module)."""
    return self.unet.apply(params["unet"], latents, timestep, context, **kwargs)

  def denoise(self, params: dict, latents: jax.Array, cond: jax.Array, uncond: Optional[jax.Array],
              scheduler_state: SchedulerState, *, guidance_scale: Union[float, jax.Array] = 7.5,
              latent_update_fn: Optional[LatentUpdateFn] = None, update_carry: Any = None,
              noise_key: Optional[jax.Array] = None, sharding: Optional[NamedSharding] = None) -> Any:
    """The guided sampling loop on NHWC float32 latents (already scaled by init_noise_sigma); traced.

    cond / uncond: [B, T, D] text embeddings; uncond None means no classifier-free guidance.
    latent_update_fn: optional per-step update of the latents before the guided step (Attend-and-Excite).
    update_carry: optional initial value of a pytree the update threads through the loop (its diagnostics):
      latent_update_fn(params, latents, i, t, cond, carry) -> (latents, carry), and denoise returns
      (latents, carry) instead of the latents.
    noise_key: PRNG key for stochastic schedulers (DDPM, DDIM with eta > 0); fold_in(key, step) per step.
    sharding: NamedSharding kept on the latents inside the loop.
    """
    sched = self.scheduler
    if scheduler_state.stochastic and noise_key is None:
      raise ValueError(f"{type(sched).__name__} is stochastic here: pass noise_key.")
    context = cond if uncond is None else jnp.concatenate([uncond, cond], axis=0)
    constrain = (lambda x: jax.lax.with_sharding_constraint(x, sharding)) if sharding is not None else (lambda x: x)

    with_carry = update_carry is not None

    def body(i, carry):
      latents, state, extra = carry
      t = state.timesteps[i]
      if latent_update_fn is not None and with_carry:
        latents, extra = latent_update_fn(params, latents, i, t, cond, extra)
        latents = constrain(latents)
      elif latent_update_fn is not None:
        latents = constrain(latent_update_fn(params, latents, i, t, cond))
      model_in = sched.scale_model_input(state, latents, i)
      if uncond is not None:
        model_in = jnp.concatenate([model_in, model_in], axis=0)
      out = self.unet_apply(params, model_in, t, context)
      if uncond is not None:
        out_uncond, out_cond = jnp.split(out, 2, axis=0)
        out = out_uncond + guidance_scale * (out_cond - out_uncond)
      noise = None
      if state.stochastic:
        noise = jax.random.normal(jax.random.fold_in(noise_key, i), latents.shape, jnp.float32)
      latents, state = sched.step(state, out.astype(jnp.float32), i, latents, noise=noise)
      return constrain(latents), state, extra

    latents, _, extra = jax.lax.fori_loop(0, scheduler_state.num_steps, body,
                                          (constrain(latents), scheduler_state, update_carry))
    return (latents, extra) if with_carry else latents

  def encode(self, params: dict, images: jax.Array) -> jax.Array:
    """Images [B, H, W, 3] in [-1, 1] -> NHWC latents (the VAE posterior's mean), scaled as `decode` reads them."""
    cfg = self.vae.config
    z = self.vae.apply(params["vae"], images, method=type(self.vae).encode).mean
    if getattr(cfg, "shift_factor", None):
      z = z - cfg.shift_factor
    return z * cfg.scaling_factor

  def decode(self, params: dict, latents: jax.Array) -> jax.Array:
    """NHWC latents -> images [B, H, W, 3] float32 in [0, 1]."""
    cfg = self.vae.config
    z = latents / cfg.scaling_factor
    if getattr(cfg, "shift_factor", None):
      z = z + cfg.shift_factor
    images = self.vae.apply(params["vae"], z, method=type(self.vae).decode)
    return jnp.clip(images.astype(jnp.float32) / 2 + 0.5, 0.0, 1.0)

  # ---- host-side helpers -----------------------------------------------------------------------------
  def tokenize(self, prompts: Sequence[str]) -> np.ndarray:
    """Prompts -> int32 [B, max_length] ids, padded and truncated as SD pipelines do."""
    return self.tokenizer(list(prompts)).input_ids

  def initial_noise(self, seeds: Sequence[int], height: int, width: int) -> np.ndarray:
    """Standard normal NCHW latents, one independent PRNG stream per seed (so an image depends on its seed
    only, not on its position in the batch)."""
    shape = (self.latent_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
    keys = jnp.stack([jax.random.key_data(jax.random.key(int(s))) for s in seeds])
    noise = _noise_fn(shape)(keys)
    return np.asarray(noise)

  def _mesh_for(self, batch: int) -> jax.sharding.Mesh:
    """The largest set of devices that divides the batch evenly (all of them for a multiple of their count)."""
    devices = list(self.devices if self.devices is not None else jax.devices())
    n = max(d for d in range(1, len(devices) + 1) if batch % d == 0)
    if n < len(devices):
      log.info("batch %d uses %d of %d devices (make it a multiple of %d to use all).", batch, n, len(devices),
               len(devices))
    return _make_mesh(devices[:n])

  def _placed_params(self, mesh: jax.sharding.Mesh) -> dict:
    key = tuple(d.id for d in mesh.devices.flat)
    if key not in self._placed:
      self._placed.clear()  # keep one copy on devices
      self._placed[key] = jax.device_put(self.params, NamedSharding(mesh, P()))
      # Drop the host copies (SD 1.x is 4 GiB in float32); later placements reshard from the devices.
      self.params = self._placed[key]
    return self._placed[key]

  def _static_key(self) -> tuple:
    """What the compiled sampler depends on besides shapes: model configs and dtypes, the scheduler."""
    models = tuple((type(m).__name__, m.config, jnp.dtype(m.dtype).name, jnp.dtype(m.param_dtype).name)
                   for m in (self.text_encoder, self.unet, self.vae))
    sched = (self.scheduler.CLASS_NAME, json.dumps(self.scheduler.config, sort_keys=True))
    return models + (sched,)

  def _sampler(self, key: tuple, mesh: jax.sharding.Mesh, example_args: tuple, cfg: bool,
               latent_update_fn: Optional[LatentUpdateFn], attend_excite: Any = None):
    """Compiled sampler for one static configuration (lowered and compiled ahead of time, timed apart).

    attend_excite: None, or the static AttendExciteSettings; then the last argument holds the per-call
    AttendExciteInputs and the sampler returns (images, diagnostics).
    Cached process-wide: pipelines with the same model configs and scheduler (e.g. the same folder loaded
    twice, or after with_scheduler) share executables; parameters are arguments, never baked in.
    """
    key = self._static_key() + key + (attend_excite,)
    if key in _COMPILED:
      return _COMPILED[key], 0.0
    batch_sharding = NamedSharding(mesh, _batch_spec(mesh))

    def sample(params, ids, uncond_ids, latents_nchw, state, guidance_scale, noise_key, ae_inputs):
      if cfg:  # one text-encoder pass over [uncond; cond]
        uncond, cond = jnp.split(self.encode_text(params, jnp.concatenate([uncond_ids, ids])), 2)
      else:
        cond, uncond = self.encode_text(params, ids), None
      latents = jnp.transpose(latents_nchw, (0, 2, 3, 1)) * state.init_noise_sigma
      update_fn, carry = latent_update_fn, None
      if attend_excite is not None:
        from diffusion_jax.attend_excite import update as ae_update
        update_fn = ae_update.make_latent_update(self.unet, attend_excite, ae_inputs, shards=mesh.devices.size)
        carry = ae_update.init_diagnostics(state.num_steps, latents.shape, ae_inputs.indices.shape[1], attend_excite)
      out = self.denoise(params, latents, cond, uncond, state, guidance_scale=guidance_scale,
                         latent_update_fn=update_fn, update_carry=carry, noise_key=noise_key,
                         sharding=batch_sharding)
      if attend_excite is None:
        return self.decode(params, out)
      latents, diagnostics = out
      return self.decode(params, latents), diagnostics

    out_shardings = batch_sharding if attend_excite is None else (batch_sharding, NamedSharding(mesh, P()))
    start = time.perf_counter()
    compiled = jax.jit(sample, out_shardings=out_shardings).lower(*example_args).compile()
    if len(_COMPILED) >= _MAX_COMPILED:
      _COMPILED.pop(next(iter(_COMPILED)))  # drop the oldest
    _COMPILED[key] = compiled
    return compiled, time.perf_counter() - start

  def get_indices(self, prompt: str) -> dict[int, str]:
    """{position: token} of the prompt (position 0 is <|startoftext|>), to choose Attend-and-Excite's
    token_indices from, as diffusers' StableDiffusionAttendAndExcitePipeline.get_indices."""
    from diffusion_jax.attend_excite.indices import get_indices
    return get_indices(self.tokenizer, prompt)

  # ---- the diffusers-like call -----------------------------------------------------------------------
  def __call__(self, prompt: Union[str, Sequence[str]], negative_prompt: Union[None, str, Sequence[str]] = None,
               num_inference_steps: int = 50, guidance_scale: float = 7.5, height: Optional[int] = None,
               width: Optional[int] = None, seeds: Union[None, int, Sequence[int]] = None,
               latents: Optional[np.ndarray] = None, num_images_per_prompt: int = 1, *, eta: float = 0.0,
               noise_seed: int = 0, latent_update_fn: Optional[LatentUpdateFn] = None,
               token_indices: Union[None, Sequence[int], Sequence[Sequence[int]]] = None,
               subjects: Union[None, Sequence[str], Sequence[Sequence[str]]] = None, max_iter_to_alter: int = 25,
               thresholds: Optional[dict[int, float]] = None, scale_factor: float = 20.0,
               attn_res: Any = (16, 16), scale_range: tuple[float, float] = (1.0, 0.5),
               smooth_attentions: bool = True, sigma: float = 0.5, kernel_size: int = 3,
               max_refinement_steps: int = 20, sd_2_1: bool = False, attention_steps: Sequence[int] = (),
               gradient_chunk: Optional[int] = 1, remat_gradient_pass: bool = False) -> np.ndarray:
    """Generates images: float32 numpy [B, H, W, 3] in [0, 1], B = len(prompts) * num_images_per_prompt.

    seeds: one int per image (or a single int s, meaning s, s + 1, ...); default 0, 1, ... .
    latents: explicit initial noise [B, C, H/8, W/8] (NCHW, as diffusers), instead of seeds.
    guidance_scale <= 1 disables classifier-free guidance (no unconditional pass), as in diffusers.
    eta: DDIM's noise weight. noise_seed: seeds the per-step noise of stochastic schedulers.
    latent_update_fn: see `denoise`; part of the compiled function's cache key (pass the same object).

    Attend-and-Excite (diffusion_jax/attend_excite/) runs when token_indices or subjects is given, with the
    argument names and defaults of diffusers' StableDiffusionAttendAndExcitePipeline and the official repo:
    token_indices: positions in the tokenized prompt (see `get_indices`), one list for all prompts or one per
      prompt (any number of subjects each); subjects: words instead (indices.py defines split and repeated words).
    max_iter_to_alter, thresholds ({loop index: threshold}; None: the paper's {0: 0.05, 10: 0.5, 20: 0.8}
      without the steps a short loop lacks): loop indices run over the scheduler's timesteps (PNDM:
      num_inference_steps + 1); a given threshold outside them is an error. scale_factor, scale_range: the update's
      step size scale_factor * sqrt(linspace(*scale_range, num_timesteps)[i]). attn_res: (height, width) of the
      cross-attention maps (None: diffusers' ceil(size / 32)). smooth_attentions, sigma, kernel_size: the
      Gaussian smoothing. max_refinement_steps: the iterative refinement's budget. sd_2_1: the token softmax
      ends at the prompt's last real token instead of dropping position 76. attention_steps: loop indices at
      which the smoothed subject maps are kept (for pictures). gradient_chunk: images per device in one gradient
      pass (None: all at once, faster where memory is to spare; the default 1 keeps the memory of
      Attend-and-Excite within that of plain sampling; see AttendExciteSettings.gradient_chunk).
      remat_gradient_pass: jax.checkpoint the UNet blocks in the gradient pass (no saving measured on CPU; see
      AttendExciteSettings.remat).
    Its per-call diagnostics go to `self.last_attend_excite` (numpy, batch first; see attend_excite/update.py).
    """
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts or not all(isinstance(p, str) for p in prompts):
      raise ValueError("prompt must be a string or a non-empty list of strings.")
    if num_images_per_prompt < 1:
      raise ValueError(f"num_images_per_prompt must be >= 1, got {num_images_per_prompt}.")
    if negative_prompt is None:
      negatives = [""] * len(prompts)
    elif isinstance(negative_prompt, str):
      negatives = [negative_prompt] * len(prompts)
    else:
      negatives = list(negative_prompt)
      if len(negatives) != len(prompts):
        raise ValueError(f"negative_prompt has {len(negatives)} entries for {len(prompts)} prompts; give one per "
                         "prompt or a single string.")
    height = height or self.default_size
    width = width or self.default_size
    unit = self.vae_scale_factor * self.unet.config.downsample_factor
    if height % unit or width % unit:
      raise ValueError(f"height and width must be multiples of {unit} (VAE factor {self.vae_scale_factor} x "
                       f"UNet factor {self.unet.config.downsample_factor}); got {height} x {width}.")
    batch = len(prompts) * num_images_per_prompt
    # Prompt i's images are consecutive, as diffusers' repeat(num_images_per_prompt).
    ids = np.repeat(self.tokenize(prompts), num_images_per_prompt, axis=0)
    uncond_ids = np.repeat(self.tokenize(negatives), num_images_per_prompt, axis=0)
    latent_shape = (batch, self.latent_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
    if latents is not None:
      if seeds is not None:
        raise ValueError("give either seeds or latents, not both.")
      latents = np.asarray(latents, np.float32)
      if latents.shape != latent_shape:
        raise ValueError(f"latents have shape {latents.shape}; expected {latent_shape} (NCHW: batch = prompts x "
                         f"num_images_per_prompt, channels, height / {self.vae_scale_factor}, width / "
                         f"{self.vae_scale_factor}).")
    else:
      if seeds is None:
        seeds = list(range(batch))
      elif isinstance(seeds, (int, np.integer)):
        seeds = [int(seeds) + i for i in range(batch)]
      seeds = list(seeds)
      if len(seeds) != batch:
        raise ValueError(f"got {len(seeds)} seeds for {batch} images ({len(prompts)} prompts x "
                         f"{num_images_per_prompt} per prompt); give one seed per image or a single int.")
      latents = self.initial_noise(seeds, height, width)

    if eta and self.scheduler.CLASS_NAME != "DDIMScheduler":
      raise ValueError(f"eta={eta} only applies to DDIM; this pipeline samples with {self.scheduler.CLASS_NAME}.")
    sched_kwargs = {"eta": eta} if eta else {}
    state = self.scheduler.set_timesteps(num_inference_steps, (batch,) + latent_shape[2:] + latent_shape[1:2],
                                         **sched_kwargs)
    cfg = guidance_scale > 1.0
    mesh = self._mesh_for(batch)
    batch_sharding = NamedSharding(mesh, _batch_spec(mesh))
    ae_settings, ae_inputs, ae_indices = None, None, None
    if token_indices is not None or subjects is not None:
      if latent_update_fn is not None:
        raise ValueError("latent_update_fn and Attend-and-Excite (token_indices / subjects) cannot be combined.")
      ae_settings, ae_inputs, ae_indices = self._attend_excite_inputs(
          prompts, num_images_per_prompt, state.num_steps, num_inference_steps, height, width,
          token_indices=token_indices, subjects=subjects, max_iter_to_alter=max_iter_to_alter,
          thresholds=thresholds, scale_factor=scale_factor, attn_res=attn_res, scale_range=scale_range,
          smooth_attentions=smooth_attentions, sigma=sigma, kernel_size=kernel_size,
          max_refinement_steps=max_refinement_steps, sd_2_1=sd_2_1, attention_steps=attention_steps,
          gradient_chunk=gradient_chunk, remat=remat_gradient_pass)
      ae_inputs = ae_inputs.replace(**{k: jax.device_put(getattr(ae_inputs, k), batch_sharding)
                                       for k in ("indices", "mask", "last")})
    params = self._placed_params(mesh)
    args = (params, jax.device_put(ids, batch_sharding), jax.device_put(uncond_ids, batch_sharding),
            jax.device_put(latents, batch_sharding), state, jnp.float32(guidance_scale),
            jax.random.key(noise_seed), ae_inputs)
    key = (batch, height, width, num_inference_steps, state.stochastic, cfg, latent_update_fn,
           tuple(d.id for d in mesh.devices.flat),
           None if ae_inputs is None else ae_inputs.indices.shape)
    compiled, compile_s = self._sampler(key, mesh, args, cfg, latent_update_fn, ae_settings)
    start = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    run_s = time.perf_counter() - start
    self.last_timings = {"compile_s": compile_s, "run_s": run_s, "num_model_evals": state.num_steps}
    if ae_settings is None:
      self.last_attend_excite = {}
      return np.asarray(out)
    images, diag = out
    self.last_attend_excite = _attend_excite_report(jax.device_get(diag), ae_indices, ae_inputs, ae_settings)
    self.last_timings["num_gradient_evals"] = self.last_attend_excite["num_gradient_evals"]
    return np.asarray(images)

  def _attend_excite_inputs(self, prompts, num_images_per_prompt, num_timesteps, num_inference_steps, height,
                            width, *, token_indices, subjects, max_iter_to_alter, thresholds, scale_factor,
                            attn_res, scale_range, smooth_attentions, sigma, kernel_size, max_refinement_steps,
                            sd_2_1, attention_steps, gradient_chunk, remat):
    """Checks the Attend-and-Excite arguments (clear errors) -> (settings, inputs, per-image indices)."""
    from diffusion_jax.attend_excite import indices as ae_indices
    from diffusion_jax.attend_excite.loss import gaussian_kernel
    from diffusion_jax.attend_excite.update import AttendExciteInputs, AttendExciteSettings

    per_prompt = ae_indices.normalize_token_indices(self.tokenizer, prompts, token_indices, subjects,
                                                    sd_2_1=sd_2_1)
    if thresholds is None:  # the paper's, where they fall inside the loop (given ones must, or it is an error)
      thresholds = {k: v for k, v in _DEFAULT_THRESHOLDS.items() if k < num_timesteps}
    thresholds = ae_indices.check_thresholds(thresholds, num_timesteps, num_inference_steps)
    f = self.vae_scale_factor
    res = ae_indices.check_attn_res(attn_res, self.unet.config, height // f, width // f, height, width)
    if smooth_attentions:
      gaussian_kernel(kernel_size, sigma)  # raises on a bad kernel_size / sigma
    if int(max_refinement_steps) < 1:
      raise ValueError(f"max_refinement_steps must be >= 1, got {max_refinement_steps}.")
    if gradient_chunk is not None and (isinstance(gradient_chunk, bool)
                                       or not isinstance(gradient_chunk, (int, np.integer)) or gradient_chunk < 1):
      raise ValueError(f"gradient_chunk must be a positive integer (images per device in one gradient pass) or "
                       f"None (all at once), got {gradient_chunk!r}.")
    if len(tuple(scale_range)) != 2 or not np.all(np.isfinite(scale_range)) or min(scale_range) < 0:
      raise ValueError(f"scale_range must be two non-negative numbers (start, end), got {scale_range!r}.")
    if not np.isfinite(scale_factor):
      raise ValueError(f"scale_factor must be finite, got {scale_factor!r}.")
    steps = tuple(int(s) for s in attention_steps)
    bad = [s for s in steps if not 0 <= s < num_timesteps]
    if bad or len(set(steps)) != len(steps):
      raise ValueError(f"attention_steps {list(attention_steps)} must be distinct loop indices 0 .. "
                       f"{num_timesteps - 1} ({num_timesteps} timesteps for num_inference_steps="
                       f"{num_inference_steps}).")
    settings = AttendExciteSettings(attn_res=res, smooth_attentions=bool(smooth_attentions),
                                    kernel_size=int(kernel_size), sigma=float(sigma),
                                    max_refinement_steps=int(max_refinement_steps),
                                    gradient_chunk=None if gradient_chunk is None else int(gradient_chunk),
                                    remat=bool(remat),
                                    attention_steps=steps)
    per_image = [row for row in per_prompt for _ in range(num_images_per_prompt)]
    last = [ae_indices.last_position(self.tokenizer, p, sd_2_1) for p in prompts
            for _ in range(num_images_per_prompt)]
    idx, mask = ae_indices.padded_indices(per_image)
    inputs = AttendExciteInputs.build(idx, mask, last, num_timesteps, thresholds=thresholds,
                                      max_iter_to_alter=int(max_iter_to_alter), scale_factor=float(scale_factor),
                                      scale_range=tuple(float(x) for x in scale_range))
    return settings, inputs, per_image

  # ---- saving ----------------------------------------------------------------------------------------
  def save_pretrained(self, path: str) -> str:
    """Writes a diffusers-format folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/)."""
    os.makedirs(path, exist_ok=True)
    host = jax.device_get(self.params)
    convert.save_unet(os.path.join(path, "unet"), self.unet, host["unet"])
    convert.save_vae(os.path.join(path, "vae"), self.vae, host["vae"])
    convert.save_text_encoder(os.path.join(path, "text_encoder"), self.text_encoder, host["text_encoder"])
    self.scheduler.save_pretrained(os.path.join(path, "scheduler"))
    self.tokenizer.save(os.path.join(path, "tokenizer"))
    index = dict(self.model_index) or _default_model_index()
    index["scheduler"] = ["diffusers", self.scheduler.CLASS_NAME]
    with open(os.path.join(path, "model_index.json"), "w") as f:
      json.dump(index, f, indent=2, sort_keys=True)
    return path


def _attend_excite_report(diag: dict, per_image: list, inputs: Any, settings: Any) -> dict:
  """The sampler's diagnostics as numpy, batch first: loss / initial_loss / refinement_steps /
  skipped_updates [B, S], max_attention / initial_max_attention [B, S, K], attention_maps [B, A, H, W, K]; plus
  the inputs."""
  out = {k: np.swapaxes(np.asarray(v), 0, 1) for k, v in diag.items()}
  steps = np.arange(len(inputs.step_size))
  ran = (steps < int(inputs.max_iter_to_alter)) | np.asarray(inputs.has_threshold)  # steps with a gradient pass
  # One batched gradient pass per step that ran one, plus the refinement loop's (its longest image's) count.
  out["num_gradient_evals"] = int(ran.sum() + out["refinement_steps"].max(axis=0).sum())
  out["token_indices"] = [list(r) for r in per_image]
  out["step_size"] = np.asarray(inputs.step_size)
  out["thresholds"] = {int(i): float(v) for i, (v, h) in enumerate(zip(np.asarray(inputs.threshold),
                                                                         np.asarray(inputs.has_threshold))) if h}
  out["attention_steps"] = list(settings.attention_steps)
  out["attn_res"] = tuple(settings.attn_res)
  return out


def _noise_fn(shape: tuple[int, ...]):
  """Jitted: [B, key_data] -> [B, *shape] standard normal, one stream per key (cached per shape)."""
  if shape not in _NOISE_FNS:
    _NOISE_FNS[shape] = jax.jit(jax.vmap(lambda k: jax.random.normal(jax.random.wrap_key_data(k), shape)))
  return _NOISE_FNS[shape]


_NOISE_FNS: dict = {}
_DEFAULT_THRESHOLDS = {0: 0.05, 10: 0.5, 20: 0.8}
# Compiled samplers, process-wide (see Pipeline._sampler).
_COMPILED: dict = {}
_MAX_COMPILED = 16


def _default_model_index() -> dict:
  return {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.30.0",
          "feature_extractor": [None, None], "image_encoder": [None, None], "requires_safety_checker": False,
          "safety_checker": [None, None], "text_encoder": ["transformers", "CLIPTextModel"],
          "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
          "vae": ["diffusers", "AutoencoderKL"]}


def from_pretrained(path: str, dtype: Any = jnp.float32, scheduler: Union[None, str, Scheduler] = None, *,
                    param_dtype: Any = None, devices: Optional[Sequence[Any]] = None) -> Pipeline:
  """Reads a diffusers Stable Diffusion folder into a Pipeline.

  dtype: compute dtype of the three models (float32, bfloat16, float16 or their names). param_dtype: storage
  dtype of the weights (default: dtype, as diffusers' torch_dtype). With float16 and the VAE config's
  force_upcast, the VAE runs in float32 as in diffusers. scheduler: None (the folder's scheduler), a name
  ("ddim", "pndm", "euler", "dpm++2m", "ddpm") or a Scheduler. devices: the devices to shard the batch over.
  """
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{path!r} is not a directory; expected a diffusers pipeline folder "
                            f"(model_index.json, {', '.join(_COMPONENTS)}/).")
  missing = [c for c in _COMPONENTS if not os.path.isdir(os.path.join(path, c))]
  if missing:
    raise FileNotFoundError(f"{path!r} lacks {', '.join(c + '/' for c in missing)}; a diffusers Stable Diffusion "
                            "folder (as written by StableDiffusionPipeline.save_pretrained) is expected.")
  index_file = os.path.join(path, "model_index.json")
  model_index = {}
  if os.path.isfile(index_file):
    with open(index_file) as f:
      model_index = json.load(f)
  dtype = resolve_dtype(dtype)
  param_dtype = resolve_dtype(param_dtype) if param_dtype is not None else dtype
  text_encoder, text_vars = convert.load_text_encoder(os.path.join(path, "text_encoder"), dtype,
                                                      param_dtype=param_dtype)
  unet, unet_vars = convert.load_unet(os.path.join(path, "unet"), dtype, param_dtype=param_dtype)
  check_text_conditioning(unet.config, text_encoder.config, path)
  vae_dtype = dtype
  vae, vae_vars = convert.load_vae(os.path.join(path, "vae"), dtype, param_dtype=param_dtype)
  if jnp.dtype(dtype) == jnp.float16 and getattr(vae.config, "force_upcast", False):
    vae_dtype = jnp.float32  # SD's VAE overflows in float16; diffusers upcasts it too
    vae, vae_vars = convert.load_vae(os.path.join(path, "vae"), vae_dtype, param_dtype=jnp.float32)
  if not isinstance(scheduler, Scheduler):
    scheduler = load_scheduler(path, name=scheduler)
  tokenizer = CLIPTokenizer.from_folder(os.path.join(path, "tokenizer"))
  params = {"text_encoder": text_vars, "unet": unet_vars, "vae": vae_vars}
  return Pipeline(tokenizer=tokenizer, text_encoder=text_encoder, unet=unet, vae=vae, scheduler=scheduler,
                  params=params, dtype=dtype, model_index=model_index, source=os.path.abspath(path),
                  devices=devices)
