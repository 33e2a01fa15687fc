"""UNet (+ text encoder) training on the latents of a frozen VAE, with caption dropout for guidance and EMA.

Two starting points (config.model):
- from scratch (`pretrained = ""`): the VAE comes from `vae_path` (a diffusers vae/ folder, e.g. the output of
  configs/diffusion/shapes_vae.py); a CLIP-layout BPE vocabulary is learned from the training captions and a
  small CLIP text transformer (config.model.text) is trained jointly with the UNet (config.model.unet). Small
  datasets such as shapes have a closed vocabulary of attribute and relation words, for which a text encoder
  learned together with the UNet is both cheaper and better grounded than a frozen 123M-parameter CLIP.
- fine-tuning (`pretrained = "<SD folder>"`): VAE, tokenizer, text encoder and UNet are read from a diffusers
  Stable Diffusion folder; the text encoder is trained only if `train_text_encoder`.
The exported pipeline folder holds the EMA weights and the sampling scheduler `sample_scheduler`.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from typing import Any, Callable, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from diffusion_jax import clip_vocab, convert
from diffusion_jax.model_configs import TextConfig, UNetConfig
from diffusion_jax.models.clip_text import CLIPTextTransformer
from diffusion_jax.models.unet import UNet2DConditionModel
from diffusion_jax.models.vae import AutoencoderKL, DiagonalGaussian
from diffusion_jax.pipeline import Pipeline
from diffusion_jax.schedulers import load_scheduler
from diffusion_jax.tokenizer import CLIPTokenizer
from diffusion_jax.training import objectives
from diffusion_jax.training.common import batch_images, grad_norm, make_optimizer
from diffusion_jax.training.latent_cache import LOGVAR, MEAN, LatentCache
from t2i_common import parallel
from t2i_common.data.loader import iterate_eval, make_source
from t2i_common.logging import CAPTIONED_MIN_SIDE, save_image_grid, to_uint8
from t2i_common.train_loop import TrainState, ema_decay_at

log = logging.getLogger(__name__)

TRAINABLE = ("unet", "text_encoder")


def ldm_model_config() -> ml_collections.ConfigDict:
  """config.model for kind="ldm" (defaults: the shapes model)."""
  return ml_collections.ConfigDict({
      "kind": "ldm",
      "pretrained": "",  # a diffusers SD folder to fine-tune; "" trains from scratch
      "vae_path": "",  # from scratch: the diffusers vae/ folder to encode images with
      "train_text_encoder": True,
      "prediction_type": "epsilon",  # "" with `pretrained`: the model's own (its scheduler config)
      "caption_dropout": 0.1,
      "ema_decay": 0.999,
      # Min-SNR-gamma loss weighting (0 = plain MSE); see objectives.min_snr_weights.
      "snr_gamma": 0.0,
      # How training timesteps are drawn: "uniform" over 0..T-1, or "logit_normal" (t / T = sigmoid(n),
      # n ~ N(mean, std), as SD3), which spends more steps at mid noise, where the content of an image forms.
      "timestep_sampling": ml_collections.ConfigDict({"kind": "uniform", "mean": 0.0, "std": 1.0}),
      # Encode the training split once and keep the VAE posteriors in host memory (small datasets; see
      # training/latent_cache.py) instead of running the VAE encoder at every step.
      "cache_latents": False,
      # Latents of a training image: a "sample" of the VAE posterior (as SD) or its "mean". A briefly trained
      # VAE keeps a wide posterior, whose noise the UNet would otherwise have to learn to reproduce.
      "latents": "sample",
      "noise_schedule": ml_collections.ConfigDict({
          "num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
          "beta_end": 0.012}),
      "sample_scheduler": "ddim",  # "" with `pretrained`: the folder's scheduler
      "vocab": ml_collections.ConfigDict({"num_caption_examples": 2000, "max_merges": 2000}),
      "text": ml_collections.ConfigDict({
          "hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
          "max_position_embeddings": 32, "hidden_act": "gelu"}),
      "unet": ml_collections.ConfigDict({
          "block_out_channels": (32, 64, 64), "layers_per_block": 1, "num_heads": (4, 4, 4),
          "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
          "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
          "norm_num_groups": 16,
          # "text": the attention-pooled caption is added to the timestep embedding, so every ResNet block
          # sees it (diffusers' addition_embed_type); "" = cross-attention only, as SD.
          "addition_embed_type": "", "addition_embed_type_num_heads": 4,
          # "scale_shift": the time (and pooled-caption) embedding scales and shifts each resnet's normalised
          # features instead of being added to them (diffusers' resnet_time_scale_shift, ADM's AdaGN).
          "resnet_time_scale_shift": "default"}),
      "sampling": ml_collections.ConfigDict({
          "num_images": 16, "steps": 25, "guidance_scale": 4.0, "seed": 0}),
  })


@flax.struct.dataclass
class LDMState(TrainState):
  """TrainState plus the frozen VAE variables (kept in the state so that they are placed and checkpointed with
  it, rather than baked into the compiled step as constants)."""
  frozen: Any = None


class LDMTrainer:
  """init_state / train_step / text_transform / hooks / export for `t2i_common.train_loop`."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    self.config, self.workdir = config, workdir
    self.latent_cache: LatentCache | None = None  # set by build_latent_cache (config.model.cache_latents)
    m = config.model
    if m.prediction_type and m.prediction_type not in objectives.PREDICTION_TYPES:
      raise ValueError(f"config.model.prediction_type={m.prediction_type!r}; expected one of "
                       f"{objectives.PREDICTION_TYPES}.")
    if m.latents not in ("sample", "mean"):
      raise ValueError(f"config.model.latents={m.latents!r}; expected 'sample' or 'mean'.")
    if m.timestep_sampling.kind not in objectives.TIMESTEP_SAMPLINGS:
      raise ValueError(f"config.model.timestep_sampling.kind={m.timestep_sampling.kind!r}; expected one of "
                       f"{objectives.TIMESTEP_SAMPLINGS}.")
    if m.pretrained:
      self._from_pretrained(m.pretrained)
    else:
      if not m.vae_path:
        raise ValueError("config.model.vae_path must name a diffusers vae/ folder (train one with "
                         "configs/diffusion/shapes_vae.py) or set config.model.pretrained to an SD folder.")
      self.vae, self.vae_vars = convert.load_vae(m.vae_path)
      self.tokenizer = CLIPTokenizer.from_folder(self._tokenizer_folder())
      self.text_encoder = CLIPTextTransformer(self._text_config())
      self.unet = UNet2DConditionModel(self._unet_config())
      self.pretrained_vars = None
    # The noise schedule (and prediction type) of a pretrained model is its scheduler's; from scratch, the
    # config's, written with SD's conventions so the exported folder samples like an SD folder.
    if m.pretrained:
      schedule = load_scheduler(m.pretrained).to_diffusers_config()
      if m.prediction_type and m.prediction_type != schedule.get("prediction_type", "epsilon"):
        raise ValueError(f"config.model.prediction_type={m.prediction_type!r} differs from the pretrained "
                         f"scheduler's {schedule.get('prediction_type')!r}; leave it empty to use the model's.")
    else:
      schedule = dict(m.noise_schedule, prediction_type=m.prediction_type or "epsilon", skip_prk_steps=True,
                      steps_offset=1, set_alpha_to_one=False, clip_sample=False)
    self.prediction_type = schedule.get("prediction_type", "epsilon")
    self.train_scheduler = load_scheduler(schedule, name="ddpm")
    self.alphas_cumprod = jnp.asarray(self.train_scheduler.alphas_cumprod)
    self.sample_scheduler = load_scheduler(schedule, name=m.sample_scheduler or None)
    self.trainable = TRAINABLE if m.train_text_encoder else ("unet",)
    self.tx = make_optimizer(config.optimizer)
    self._empty_ids = self.tokenizer([""]).input_ids[0]

  # -- set-up ---------------------------------------------------------------------------------------------
  def _from_pretrained(self, folder: str) -> None:
    self.text_encoder, text_vars = convert.load_text_encoder(os.path.join(folder, "text_encoder"))
    self.unet, unet_vars = convert.load_unet(os.path.join(folder, "unet"))
    self.vae, self.vae_vars = convert.load_vae(os.path.join(folder, "vae"))
    self.tokenizer = CLIPTokenizer.from_folder(os.path.join(folder, "tokenizer"))
    self.pretrained_vars = {"unet": unet_vars["params"], "text_encoder": text_vars["params"]}

  def _tokenizer_folder(self) -> str:
    """Learns the vocabulary from the training captions once per run (the folder is reused on resume).

    Learning is deterministic, so every process learns the same vocabulary; process 0 writes it into the
    workdir, the others into a private temporary folder (no process waits on another's file)."""
    if getattr(self, "_tok_folder", None):
      return self._tok_folder
    folder = os.path.join(self.workdir, "tokenizer")
    if not os.path.isfile(os.path.join(folder, "vocab.json")):
      m = self.config.model
      source = make_source(self.config.data, "train")
      n = min(len(source), m.vocab.num_caption_examples)
      words = clip_vocab.caption_words(c for i in range(n) for c in source[i]["captions"])
      vocab, merges = clip_vocab.learn_clip_bpe(words, m.vocab.max_merges)
      if jax.process_index() != 0:
        folder = tempfile.mkdtemp(prefix="ldm_tokenizer_")
      clip_vocab.write_clip_tokenizer(folder, vocab, merges, model_max_length=m.text.max_position_embeddings)
      log.info("learned a %d-token vocabulary from the %d distinct words of %d examples' captions", len(vocab),
               len(words), n)
    self._tok_folder = folder
    return folder

  def _text_config(self) -> TextConfig:
    t = self.config.model.text
    vocab = self.tokenizer.vocab
    return TextConfig(vocab_size=len(vocab), hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
                      num_hidden_layers=t.num_hidden_layers, num_attention_heads=t.num_attention_heads,
                      max_position_embeddings=t.max_position_embeddings, hidden_act=t.hidden_act,
                      bos_token_id=vocab[clip_vocab.BOS], eos_token_id=vocab[clip_vocab.EOS],
                      pad_token_id=vocab[clip_vocab.EOS], projection_dim=t.hidden_size)

  def _unet_config(self) -> UNetConfig:
    u = self.config.model.unet
    latent_size = self.config.data.image_sizes[0] // self.vae_scale_factor
    return UNetConfig(block_out_channels=tuple(u.block_out_channels), down_block_types=tuple(u.down_block_types),
                      up_block_types=tuple(u.up_block_types), num_heads=tuple(u.num_heads),
                      layers_per_block=u.layers_per_block, in_channels=self.vae.config.latent_channels,
                      out_channels=self.vae.config.latent_channels,
                      cross_attention_dim=self.config.model.text.hidden_size, norm_num_groups=u.norm_num_groups,
                      sample_size=latent_size, heads_as_int=False,
                      addition_embed_type=u.addition_embed_type or None,
                      addition_embed_type_num_heads=u.addition_embed_type_num_heads,
                      resnet_time_scale_shift=u.resnet_time_scale_shift)

  @property
  def vae_scale_factor(self) -> int:
    return self.vae.config.downsample_factor

  # -- data -----------------------------------------------------------------------------------------------
  def build_latent_cache(self, batch_size: int = 64) -> LatentCache:
    """Encodes this process's share of the training split once (config.model.cache_latents)."""
    encode_fn = jax.jit(lambda p, x: self.vae.apply({"params": p}, x, method=AutoencoderKL.encode))
    params = self.vae_vars["params"]

    def encode(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # (mean, logvar)
      n = len(images)
      if n < batch_size:  # the last batch: pad rather than compile a second shape
        images = np.concatenate([images, np.zeros((batch_size - n,) + images.shape[1:], images.dtype)])
      posterior = encode_fn(params, images)
      return np.asarray(posterior.mean)[:n], np.asarray(posterior.logvar)[:n]

    self.latent_cache = LatentCache.build(encode, params, self.config.data, batch_size=batch_size,
                                          workdir=self.workdir)
    return self.latent_cache

  def batch_to_device(self, batch: dict, mesh: jax.sharding.Mesh) -> dict:
    """The loader's batch as global arrays; with a latent cache, its VAE posteriors replace the images."""
    cache = self.latent_cache
    return parallel.global_batch(cache.lookup(batch) if cache is not None else batch, mesh)

  def text_transform(self, caption: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Token ids of the caption, or of the empty prompt with probability caption_dropout (for guidance)."""
    if rng.random() < self.config.model.caption_dropout:
      return {"input_ids": self._empty_ids}
    return {"input_ids": self.tokenizer([caption]).input_ids[0]}

  # -- training -------------------------------------------------------------------------------------------
  def init_state(self, rng: jax.Array) -> LDMState:
    k_unet, k_text, k_state = jax.random.split(rng, 3)
    if self.pretrained_vars is not None:
      params = jax.tree.map(jnp.asarray, self.pretrained_vars)
    else:
      params = {"unet": convert.init_variables(self.unet, k_unet)["params"],
                "text_encoder": convert.init_variables(self.text_encoder, k_text)["params"]}
    frozen = {"vae": self.vae_vars["params"]}
    if "text_encoder" not in self.trainable:
      frozen["text_encoder"] = params.pop("text_encoder")
    frozen = jax.tree.map(jnp.asarray, frozen)
    state = TrainState.create(params=params, tx=self.tx, rng=k_state, ema=True)
    return LDMState(**{f.name: getattr(state, f.name) for f in dataclasses.fields(TrainState)}, frozen=frozen)

  def train_step(self, state: LDMState, batch: dict) -> tuple[LDMState, dict]:
    m = self.config.model
    k_latent, k_noise, k_t = jax.random.split(state.step_rng(), 3)
    if MEAN in batch:  # encoded once by the latent cache
      posterior = DiagonalGaussian(batch[MEAN], batch[LOGVAR])
    else:
      posterior = self.vae.apply({"params": state.frozen["vae"]}, batch_images(batch), method=AutoencoderKL.encode)
    latents = (posterior.mean if m.latents == "mean" else posterior.sample(k_latent)) * self.vae.config.scaling_factor
    noise = jax.random.normal(k_noise, latents.shape, latents.dtype)
    t = objectives.sample_timesteps(k_t, latents.shape[0], self.alphas_cumprod.shape[0], **m.timestep_sampling)
    noisy = objectives.add_noise(self.alphas_cumprod, latents, noise, t)
    target = objectives.training_target(self.prediction_type, self.alphas_cumprod, latents, noise, t)

    def loss_fn(params):
      text_params = params["text_encoder"] if "text_encoder" in params else state.frozen["text_encoder"]
      context = self.text_encoder.apply({"params": text_params}, batch["input_ids"])["last_hidden_state"]
      prediction = self.unet.apply({"params": params["unet"]}, noisy, t, context)
      weights = (objectives.min_snr_weights(self.prediction_type, self.alphas_cumprod, t, m.snr_gamma)
                 if m.snr_gamma > 0 else None)
      return objectives.mse(prediction, target, weights)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    state = state.apply_gradients(grads, ema_decay=ema_decay_at(state.step, m.ema_decay))
    return state, {"loss": loss, "grad_norm": grad_norm(grads)}

  # -- sampling, hooks, export ----------------------------------------------------------------------------
  def pipeline(self, state: LDMState, use_ema: bool | None = None) -> Pipeline:
    """The pipeline of the current weights: EMA ones unless `use_ema` (default config.train.export_ema) is off."""
    if use_ema is None:
      use_ema = self.config.train.get("export_ema", True)
    params = jax.device_get(state.ema_params if use_ema else state.params)
    frozen = jax.device_get(state.frozen)
    text = params["text_encoder"] if "text_encoder" in params else frozen["text_encoder"]
    return Pipeline(tokenizer=self.tokenizer, text_encoder=self.text_encoder, unet=self.unet, vae=self.vae,
                    scheduler=self.sample_scheduler,
                    params={"text_encoder": {"params": text}, "unet": {"params": params["unet"]},
                            "vae": {"params": frozen["vae"]}},
                    source=self.config.model.pretrained or None)

  def hooks(self, workdir: str) -> list:
    return [SampleHook(self.config, workdir, self.config.logging.images_every_steps, self.pipeline)]

  def export(self, state: LDMState, folder: str) -> dict[str, Any]:
    """Writes the EMA pipeline as a diffusers folder, samples test captions with it and scores them."""
    pipe = self.pipeline(state)
    pipe.save_pretrained(folder)  # the tokenizer saves its learned vocabulary itself
    metrics = SampleHook(self.config, self.workdir, 1).sample_and_score(pipe, "final")
    log.info("pipeline written to %s; samples: %s", folder, metrics)
    return {"pipeline": folder, **metrics}


class SampleHook:
  """Samples fixed test captions with the EMA weights, writes a captioned grid, and scores the samples with
  the shapes oracle when the data is shapes (sample/object_recall, sample/object_precision, sample/all_present).
  Not run after the last step: `LDMTrainer.export` samples the final weights."""
  at_end = False

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, every_steps: int,
               make_pipeline: Callable[[LDMState], Pipeline] | None = None):
    self.config, self.every_steps, self.make_pipeline = config, every_steps, make_pipeline
    self.out_dir = os.path.join(workdir, "samples")
    s = config.model.sampling
    data = config.data
    batch = next(iter(iterate_eval(data, "test", s.num_images, seed=s.seed)))
    self.captions: list[str] = [str(c) for c in batch["caption"]]
    self.images = batch.get("image")  # the captions' own test images in [-1, 1] (diffusion_jax.evaluate)
    self.objects: list | None = None
    self.holdout: tuple[tuple[str, str], ...] = ()  # shapes: (color, shape) pairs kept out of training
    if data.name == "shapes":
      from t2i_common.data.shapes import parse_holdout
      source = make_source(data, "test")
      # Captions of style "shapes_only" name no colours: the oracle then matches the shapes alone.
      named = data.shapes.caption_style != "shapes_only"
      self.objects = [[(o["color"] if named else None, o["shape"]) for o in source[int(i)]["objects"]]
                      for i in batch["index"]]
      self.holdout = parse_holdout(data.shapes.holdout)

  def sample_and_score(self, pipe: Pipeline, tag: str) -> dict[str, float]:
    s = self.config.model.sampling
    images = pipe(self.captions, num_inference_steps=s.steps, guidance_scale=s.guidance_scale,
                  seeds=list(range(s.seed, s.seed + len(self.captions))))
    uint8 = to_uint8(images)
    save_image_grid(uint8, os.path.join(self.out_dir, f"{tag}.png"), captions=self.captions,
                    min_side=CAPTIONED_MIN_SIDE)
    metrics: dict[str, float] = {}
    if self.objects is not None:
      from t2i_common.data.shapes_oracle import score
      result = score(list(uint8), self.objects, holdout=self.holdout)
      metrics = {f"sample/{k}": float(v) for k, v in result.items() if k != "num_images"}
    return metrics

  def __call__(self, state: LDMState, step: int, writer) -> None:
    metrics = self.sample_and_score(self.make_pipeline(state), f"step_{step:07d}")
    if metrics:
      writer.write_scalars(step, metrics)
