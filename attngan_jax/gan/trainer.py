"""AttnGAN training on the shared train loop: one state, a jitted D update and a jitted G update per iteration.

Per iteration, as the reference's condGANTrainer.train:
1. the frozen DAMSM text encoder gives the word and sentence features of the batch's captions;
2. the generator (train mode: BatchNorm on batch statistics) draws one image per stage from noise z ~ N(0, I)
   and the CA noise (both from fold_in(rng, step), so a resumed run draws the same);
3. `d_step`: every stage's discriminator is updated on (real, fake, wrong) with the loss of
   attngan_jax.gan.losses (one Adam per discriminator is one Adam over all of them: Adam is per parameter);
4. `g_step`: the generator is updated on sum over stages of the adversarial loss against the *updated*
   discriminators + lambda * L_DAMSM of the last stage's images + KL, then its EMA (decay 0.999; BatchNorm
   running statistics are not averaged: sampling uses the live ones, as the reference's saved netG does).

`d_step` and `g_step` are separate jitted programs with the state donated, run back to back by `GANTrainLoop`.
The generator runs forward once per iteration, as in the reference: `d_step` runs it under `jax.vjp` (w.r.t.
g_params) and returns, besides the state, a `GeneratorForward`: the images, mu, logvar, the text features, the
new BatchNorm statistics and the VJP function, a pytree of the forward's residual arrays. `g_step` takes it,
differentiates the G loss w.r.t. the images, mu and logvar only (the discriminators, the DAMSM image encoder,
KL) and pulls that cotangent back through the saved VJP: the gradient of the whole G loss w.r.t. g_params,
without a second generator forward. The generator's BatchNorm statistics of that forward enter the state in
`g_step`, so the running averages move once per iteration as in the reference. The `GeneratorForward` lives
between the two programs only: it is not part of the state, so a checkpoint never holds it and a resumed run
begins with a `d_step`, which recomputes it. The price is memory: the forward's residuals are held from d_step
to g_step, so d_step's peak holds them beside the D update's activations.

BatchNorm statistics are those of the global batch (jit over the sharded batch: XLA reduces across devices), so
a run does not depend on the number of devices. Discriminator BatchNorms see real, fake and wrong batches in
separate calls, as the reference's separate forwards do.
"""
from __future__ import annotations

import functools
import itertools
import json
import logging
import os
import time
from typing import Any, Callable, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax

from attngan_jax import convert_torch
from attngan_jax.gan import losses
from attngan_jax.gan.config import gan_model_config
from attngan_jax.gan.damsm import FrozenDAMSM
from attngan_jax.gan.discriminator import Discriminator, make_discriminators
from attngan_jax.gan.generator import Generator, make_generator
from attngan_jax.gan.sampling import padding_mask
from attngan_jax.gan.torch_weights import GENERATOR_KEYS
from attngan_jax.initializers import rbg_key
from t2i_common import parallel
from t2i_common.train_loop import TrainLoop, ema_decay_at, ema_update

log = logging.getLogger(__name__)
GENERATOR_DIR = "generator"


def optimizer_config() -> ml_collections.ConfigDict:
  """config.optimizer: Adam(0.5, 0.999), lr 2e-4 for G and every D (reference GENERATOR_LR / DISCRIMINATOR_LR)."""
  return ml_collections.ConfigDict({"g_lr": 2e-4, "d_lr": 2e-4, "b1": 0.5, "b2": 0.999, "eps": 1e-8})


@flax.struct.dataclass
class GANState:
  """Everything training changes. d_* hold one entry per stage ("d0", "d1", ...); ema_params is the EMA of
  g_params. The optimizers are static (code, rebuilt from the config on resume)."""
  step: jax.Array
  rng: jax.Array
  g_params: Any
  g_batch_stats: Any
  g_opt_state: Any
  ema_params: Any
  d_params: Any
  d_batch_stats: Any
  d_opt_state: Any
  g_tx: optax.GradientTransformation = flax.struct.field(pytree_node=False, default=None)
  d_tx: optax.GradientTransformation = flax.struct.field(pytree_node=False, default=None)

  def step_rng(self) -> jax.Array:
    return jax.random.fold_in(self.rng, self.step)

  def ema_variables(self) -> dict:
    """The generator used for sampling and evaluation: EMA parameters + the live BatchNorm statistics."""
    return {"params": self.ema_params, "batch_stats": self.g_batch_stats}


@flax.struct.dataclass
class GeneratorForward:
  """`d_step`'s train-mode generator forward, handed to `g_step` (not part of the state, never saved).

  images: one per stage; mu, logvar: the CA distribution; words, sentence: the DAMSM text features of the batch;
  batch_stats: the generator's BatchNorm statistics after this forward; pullback: `jax.vjp`'s function of the
  forward w.r.t. g_params, (cotangents of (images, mu, logvar)) -> (g_params gradient,): a pytree of the
  forward's residual arrays, so it can be a program's output and another's input."""
  images: tuple[jax.Array, ...]
  mu: jax.Array
  logvar: jax.Array
  words: jax.Array
  sentence: jax.Array
  batch_stats: Any
  pullback: Any


# fold_in constants of the instance noise's keys (the step's key itself makes z and the CA noise)
_D_NOISE, _G_NOISE = 1, 2


def stage_key(i: int) -> str:
  return f"d{i}"


def real_images(batch: dict, sizes: tuple[int, ...]) -> list[jax.Array]:
  """The batch's real images of every stage (the loader names them "image" for one size, "image_<size>")."""
  if len(sizes) == 1:
    return [batch["image"]]
  return [batch[f"image_{s}"] for s in sizes]


def _d_stage_loss(d: Discriminator, real: jax.Array, fake: jax.Array, sent: jax.Array):
  """One discriminator's loss in the reference's call order (real, fake, then the heads); run via apply."""
  real_f, fake_f = d.encode(real, True), d.encode(fake, True)
  real_c, fake_c = d.cond_logits(real_f, sent, True), d.cond_logits(fake_f, sent, True)
  wrong_c = d.cond_logits(*losses.wrong_pairs(real_f, sent), True)
  return losses.discriminator_loss(d.uncond_logits(real_f), real_c, d.uncond_logits(fake_f), fake_c, wrong_c)


def _g_stage_logits(d: Discriminator, fake: jax.Array, sent: jax.Array):
  features = d.encode(fake, True)
  return d.uncond_logits(features), d.cond_logits(features, sent, True)


class GANTrainer:
  """The models, init and the two jittable steps for one config and frozen DAMSM."""

  def __init__(self, config: ml_collections.ConfigDict, damsm: FrozenDAMSM):
    self.config, self.damsm = config, damsm
    self.generator: Generator = make_generator(config.model)
    self.discriminators: list[Discriminator] = make_discriminators(config.model)
    self.sizes = tuple(self.generator.image_sizes)
    if tuple(config.data.image_sizes) != self.sizes:
      raise ValueError(f"config.data.image_sizes={tuple(config.data.image_sizes)} must be the generator's stage "
                       f"sizes {self.sizes} (model.base_size={config.model.base_size} x 2^i, i < "
                       f"model.branch_num={config.model.branch_num}).")
    if int(config.train.batch_size) < 2:
      raise ValueError(f"train.batch_size={config.train.batch_size}: the wrong-pair term and BatchNorm need >= 2.")
    self.words_num = int(config.model.words_num)
    self.text_transform = damsm.text_transform(self.words_num)
    opt = config.optimizer
    self.g_tx = optax.adam(opt.g_lr, b1=opt.b1, b2=opt.b2, eps=opt.eps)
    self.d_tx = optax.adam(opt.d_lr, b1=opt.b1, b2=opt.b2, eps=opt.eps)
    self.ema_decay = float(config.train.ema_decay)
    self.ema_warmup = bool(config.train.ema_warmup)
    self.loss_cfg = config.loss
    if float(config.loss.r1_gamma) < 0 or int(config.loss.r1_every) < 1:
      raise ValueError(f"loss.r1_gamma={config.loss.r1_gamma} must be >= 0 (0: no R1 penalty) and loss.r1_every="
                       f"{config.loss.r1_every} >= 1 (1: the penalty on every iteration).")
    self.d_input_noise = float(config.loss.d_input_noise)
    self.d_input_noise_steps = int(config.loss.d_input_noise_steps)
    if self.d_input_noise < 0 or self.d_input_noise_steps < 0:
      raise ValueError(f"loss.d_input_noise={config.loss.d_input_noise} (the std of the instance noise added to the "
                       f"discriminators' images; 0: none) and loss.d_input_noise_steps="
                       f"{config.loss.d_input_noise_steps} (0: constant) must be >= 0.")
    self.use_damsm_term = float(config.loss.damsm_lambda) != 0 or bool(config.loss.report_damsm)

  # -- init --------------------------------------------------------------------------------------------------

  def init_variables(self, rng: jax.Array) -> tuple[dict, dict]:
    """(generator variables, {"d<i>": discriminator variables}) at the reference initialisation."""
    m = self.config.model
    keys = jax.random.split(rbg_key(rng), 1 + len(self.discriminators))
    b, t = 2, self.words_num
    gen_vars = self.generator.init(keys[0], jnp.zeros((b, m.z_dim)), jnp.zeros((b, m.embedding_dim)),
                                   jnp.zeros((b, t, m.embedding_dim)), jnp.zeros((b, t), bool),
                                   ca_noise=jnp.zeros((b, m.condition_dim)))
    d_vars = {}
    for i, (d, size) in enumerate(zip(self.discriminators, self.sizes)):
      d_vars[stage_key(i)] = d.init(keys[1 + i], jnp.zeros((b, size, size, 3)), jnp.zeros((b, m.embedding_dim)))
    return dict(gen_vars), d_vars

  def init_state(self, rng: jax.Array) -> GANState:
    k_init, k_state = jax.random.split(rng)
    gen_vars, d_vars = self.init_variables(k_init)
    g_params = gen_vars["params"]
    d_params = {k: v["params"] for k, v in d_vars.items()}
    return GANState(step=jnp.zeros((), jnp.int32), rng=k_state, g_params=g_params,
                    g_batch_stats=gen_vars["batch_stats"], g_opt_state=self.g_tx.init(g_params),
                    ema_params=jax.tree.map(jnp.copy, g_params), d_params=d_params,
                    d_batch_stats={k: v["batch_stats"] for k, v in d_vars.items()},
                    d_opt_state=self.d_tx.init(d_params), g_tx=self.g_tx, d_tx=self.d_tx)

  # -- the shared forward ------------------------------------------------------------------------------------

  def _text(self, damsm_vars: dict, batch: dict):
    words, sent = self.damsm.encode_text(damsm_vars, batch["tokens"], batch["length"])
    return words, sent, padding_mask(batch["length"], self.words_num)

  def _generate(self, g_params: Any, g_batch_stats: Any, state: GANState, words, sent, mask):
    """Train-mode generator forward with this iteration's noise: (images, mu, logvar, new batch_stats)."""
    b = sent.shape[0]
    m = self.config.model
    k_z, k_ca = jax.random.split(state.step_rng())
    z = jax.random.normal(k_z, (b, m.z_dim))
    eps = jax.random.normal(k_ca, (b, m.condition_dim))
    (images, _, mu, logvar), updates = self.generator.apply(
        {"params": g_params, "batch_stats": g_batch_stats}, z, sent, words, mask, ca_noise=eps, train=True,
        mutable=["batch_stats"])
    return tuple(images), mu, logvar, updates["batch_stats"]

  def generator_forward(self, state: GANState, damsm_vars: dict, batch: dict) -> GeneratorForward:
    """This iteration's generator forward with its VJP w.r.t. g_params (see `GeneratorForward`)."""
    words, sent, mask = self._text(damsm_vars, batch)

    def forward(g_params):
      images, mu, logvar, stats = self._generate(g_params, state.g_batch_stats, state, words, sent, mask)
      return (images, mu, logvar), stats

    (images, mu, logvar), pullback, stats = jax.vjp(forward, state.g_params, has_aux=True)
    return GeneratorForward(images=images, mu=mu, logvar=logvar, words=words, sentence=sent, batch_stats=stats,
                            pullback=pullback)

  def generator_loss(self, state: GANState, damsm_vars: dict, batch: dict, images, mu, logvar, words, sent):
    """The G loss of these images, mu and logvar against the state's discriminators (+ DAMSM + KL):
    (total, (parts, the discriminators' new BatchNorm statistics))."""
    logits, d_stats = [], {}
    seen = self._noised(images, jax.random.fold_in(state.step_rng(), _G_NOISE), state.step)
    for i, d in enumerate(self.discriminators):
      key = stage_key(i)
      out, upd = d.apply({"params": state.d_params[key], "batch_stats": state.d_batch_stats[key]}, seen[i], sent,
                         method=_g_stage_logits, mutable=["batch_stats"])
      logits.append(out)
      d_stats[key] = upd["batch_stats"]
    damsm_inputs = None
    if self.use_damsm_term:
      regions, glob = self.damsm.encode_image(damsm_vars, images[-1])
      damsm_inputs = {"regions": regions, "image_global": glob, "words": words, "sentence": sent,
                      "lengths": batch["length"], "class_ids": batch["class_id"]}
      # The loss scores all B x B pairs: gather its (small) inputs on every device first. Left sharded, XLA puts
      # all-gathers inside the conditionals of jnp.diagonal's transpose, and XLA:CPU may run two independent
      # conditionals in different orders on different devices, which deadlocks their collectives (seen with 8
      # fake devices).
      if not jax.sharding.get_abstract_mesh().empty:  # under jax.set_mesh (the train loop, the tests)
        damsm_inputs = jax.lax.with_sharding_constraint(damsm_inputs, jax.sharding.PartitionSpec())
    total, parts = losses.generator_loss(logits, mu, logvar, self.loss_cfg, damsm_inputs=damsm_inputs)
    return total, (parts, d_stats)

  def _noised(self, images: Sequence[jax.Array], key: jax.Array, step: jax.Array) -> list[jax.Array]:
    """The images as the discriminators see them at iteration `step`: with instance noise (`loss.d_input_noise`,
    falling to 0 at `loss.d_input_noise_steps` if that is > 0) if set."""
    if not self.d_input_noise:
      return list(images)
    sigma = jnp.float32(self.d_input_noise)
    if self.d_input_noise_steps:
      sigma = sigma * jnp.maximum(0.0, 1.0 - step.astype(jnp.float32) / self.d_input_noise_steps)
    keys = jax.random.split(key, len(images))
    return [x + sigma.astype(x.dtype) * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(images, keys)]

  # -- steps -------------------------------------------------------------------------------------------------

  def d_step(self, state: GANState, damsm_vars: dict, batch: dict,
             r1: bool = False) -> tuple[GANState, dict, GeneratorForward]:
    """Updates every discriminator on this iteration's real, fake and wrong pairs; also returns the generator
    forward that made the fakes, for `g_step`. r1: add the R1 penalty (`loss.r1_gamma`), weighted by
    `loss.r1_every` (lazy regularisation, Karras et al. 2020: the loop adds it every r1_every-th iteration)."""
    forward = self.generator_forward(state, damsm_vars, batch)
    sent = forward.sentence
    k_real, k_fake = jax.random.split(jax.random.fold_in(state.step_rng(), _D_NOISE))
    reals = self._noised(real_images(batch, self.sizes), k_real, state.step)
    fakes = self._noised(forward.images, k_fake, state.step)

    r1_gamma = float(self.loss_cfg.r1_gamma) * int(self.loss_cfg.r1_every) if r1 else 0.0

    def loss_fn(d_params):
      total, stats, metrics = 0.0, {}, {}
      for i, d in enumerate(self.discriminators):
        key = stage_key(i)
        (loss, parts), upd = d.apply({"params": d_params[key], "batch_stats": state.d_batch_stats[key]},
                                     reals[i], fakes[i], sent, method=_d_stage_loss, mutable=["batch_stats"])
        if r1_gamma:
          penalty = losses.r1_penalty(
              self._real_logit_grads(d, d_params[key], state.d_batch_stats[key], reals[i], sent), r1_gamma)
          metrics["d/r1"] = metrics.get("d/r1", 0.0) + penalty
          loss = loss + penalty
        total = total + loss
        stats[key] = upd["batch_stats"]
        metrics[f"d/stage{i}"] = loss
        for name, value in parts.items():  # averaged over stages
          metrics[f"d/{name}"] = metrics.get(f"d/{name}", 0.0) + value / len(self.discriminators)
      return total, (stats, metrics)

    (loss, (stats, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.d_params)
    updates, opt_state = state.d_tx.update(grads, state.d_opt_state, state.d_params)
    new = state.replace(d_params=optax.apply_updates(state.d_params, updates), d_opt_state=opt_state,
                        d_batch_stats=stats)
    return new, {"d_loss": loss, "d_grad_norm": optax.global_norm(grads), **metrics}, forward

  @staticmethod
  def _real_logit_grads(d: Discriminator, params: Any, batch_stats: Any, real: jax.Array, sent: jax.Array):
    """Gradients of the unconditional and the conditional logits (summed over the batch) w.r.t. the real images,
    as the discriminator sees them in train mode; its BatchNorm statistics of this extra pass are dropped."""
    def logits(x):
      out, _ = d.apply({"params": params, "batch_stats": batch_stats}, x, sent, method=_g_stage_logits,
                       mutable=["batch_stats"])
      return out

    (uncond, cond), pullback = jax.vjp(logits, real)
    ones, zeros = jnp.ones_like(uncond), jnp.zeros_like(uncond)
    return pullback((ones, zeros))[0], pullback((zeros, ones))[0]

  def g_step(self, state: GANState, damsm_vars: dict, batch: dict,
             forward: GeneratorForward) -> tuple[GANState, dict]:
    """Updates the generator against the current discriminators (+ DAMSM + KL), then its EMA; step += 1.
    `forward` is this iteration's `d_step` output: the G loss is differentiated w.r.t. its images, mu and logvar,
    and the cotangent pulled back through its VJP (the chain rule through the generator, without rerunning it)."""
    loss_fn = lambda images, mu, logvar: self.generator_loss(state, damsm_vars, batch, images, mu, logvar,
                                                             forward.words, forward.sentence)
    (loss, (parts, d_stats)), cotangents = jax.value_and_grad(loss_fn, argnums=(0, 1, 2), has_aux=True)(
        forward.images, forward.mu, forward.logvar)
    (grads,) = forward.pullback(cotangents)
    updates, opt_state = state.g_tx.update(grads, state.g_opt_state, state.g_params)
    g_params = optax.apply_updates(state.g_params, updates)
    decay = ema_decay_at(state.step, self.ema_decay) if self.ema_warmup else self.ema_decay
    new = state.replace(step=state.step + 1, g_params=g_params, g_opt_state=opt_state,
                        g_batch_stats=forward.batch_stats, ema_params=ema_update(state.ema_params, g_params, decay),
                        d_batch_stats=d_stats)
    names = {"adversarial": "g/adv", "damsm": "g/damsm", "kl": "g/kl", "w_loss0": "g/w0", "w_loss1": "g/w1",
             "s_loss0": "g/s0", "s_loss1": "g/s1"}
    metrics = {names.get(k, k.replace("g_loss", "g/stage")): v for k, v in parts.items()}
    return new, {"g_loss": loss, "g_grad_norm": optax.global_norm(grads), **metrics}

  def r1_due(self, step: int) -> bool:
    """Whether iteration `step` (0-based) adds the lazy R1 penalty."""
    return float(self.loss_cfg.r1_gamma) > 0 and step % int(self.loss_cfg.r1_every) == 0

  def iteration(self, state: GANState, damsm_vars: dict, batch: dict, r1: bool = False) -> tuple[GANState, dict]:
    """d_step then g_step in one function (for tests and eager use; training runs them as two programs)."""
    state, d_metrics, forward = self.d_step(state, damsm_vars, batch, r1)
    state, g_metrics = self.g_step(state, damsm_vars, batch, forward)
    return state, {**d_metrics, **g_metrics}

  # -- export ------------------------------------------------------------------------------------------------

  def export(self, state: GANState, out_dir: str, damsm_dirs: dict[str, str]) -> str:
    """Writes the EMA generator (+ live BatchNorm statistics) in the directory format of convert_torch's
    generator kind (so `convert_torch.load_generator(out_dir, config.model)` reads it), adding the mask mode,
    words_num, the step and the DAMSM it was trained with (`load_exported_generator`); returns the directory."""
    if jax.process_index() == 0:
      m = self.config.model
      meta = {"kind": "generator", **{k: m[k] for k in GENERATOR_KEYS},
              "reference_mask_bug": bool(m.reference_mask_bug), "words_num": int(m.words_num), "damsm": damsm_dirs,
              "step": int(state.step)}
      convert_torch.save_converted(out_dir, jax.device_get(state.ema_variables()), meta)
    return out_dir


def load_exported_generator(path: str) -> tuple[Generator, dict, dict]:
  """(generator, variables, saved config.json) of a directory `GANTrainer.export` wrote."""
  config_path = os.path.join(path, convert_torch.CONFIG_FILE)
  if not os.path.isfile(config_path):
    raise FileNotFoundError(f"{path!r} holds no exported generator ({convert_torch.CONFIG_FILE} missing): train with "
                            "python -m attngan_jax.train first, or give a converted generator.")
  with open(config_path) as f:
    saved = json.load(f)
  if saved.get("kind") != "generator":
    raise ValueError(f"{path!r} holds a {saved.get('kind')!r}, not a generator.")
  model = gan_model_config(**{k: saved[k] for k in GENERATOR_KEYS if saved.get(k) is not None},
                           reference_mask_bug=bool(saved.get("reference_mask_bug", False)),
                           words_num=int(saved.get("words_num", 18)))
  gen, variables = convert_torch.load_generator(path, model)
  return gen, variables, saved


# ---------------------------------------------------------------------------------------------- the loop

class GANTrainLoop(TrainLoop):
  """The shared TrainLoop with the iteration compiled as two donated programs, d_step then g_step, which also
  take the frozen DAMSM's variables (replicated on the mesh, not part of the saved state)."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, trainer: GANTrainer, **kwargs: Any):
    self.trainer = trainer
    super().__init__(config, workdir, init_state=trainer.init_state,
                     train_step=lambda s, b: trainer.iteration(s, self.damsm_vars, b), **kwargs)
    self.damsm_vars = jax.device_put(trainer.damsm.variables, parallel.replicated(self.mesh))

  def _compile(self, state: Any, batch: Any, shardings: Any) -> Callable:
    start = time.perf_counter()
    plain = compile_steps(self.trainer, state, self.damsm_vars, batch, shardings, self.mesh)
    with_r1 = None
    if float(self.trainer.loss_cfg.r1_gamma) > 0:
      with_r1 = compile_steps(self.trainer, state, self.damsm_vars, batch, shardings, self.mesh, r1=True)
    self.compile_time_s = time.perf_counter() - start
    log.info("d_step and g_step compiled in %.2f s", self.compile_time_s)
    self.writer.write_scalars(self.start_step, {"perf/compile_time_s": self.compile_time_s})
    damsm_vars = self.damsm_vars
    iterations = itertools.count(self.start_step)

    def step(state, batch):
      d_step, g_step = with_r1 if self.trainer.r1_due(next(iterations)) else plain
      state, d_metrics, forward = d_step(state, damsm_vars, batch)
      state, g_metrics = g_step(state, damsm_vars, batch, forward)
      return state, {**d_metrics, **g_metrics}

    return step


def compile_steps(trainer: GANTrainer, state: GANState, damsm_vars: dict, batch: dict, shardings: Any,
                  mesh: jax.sharding.Mesh, r1: bool = False) -> tuple[Callable, Callable]:
  """(d_step, g_step) compiled ahead of time for these arguments; `r1`: d_step with the R1 penalty.

  The state is donated to both (not the `GeneratorForward` to g_step: no output of g_step has its arrays'
  shapes, so XLA could not reuse their buffers). Explicit output shardings: the state's `shardings`, replicated
  metrics, and for the forward's batch-major arrays (images, mu, logvar, text features) the batch's split. The
  VJP's residuals are left to XLA's sharding propagation, which keeps the batch-sharded forward's activations
  split over the batch (a residual's batch axis is not known here: it may be any, or none for a weight);
  g_step takes them as d_step leaves them (so each d_step has its own g_step: the VJP's tree is the trace's).
  train.fast_compile selects XLA's cheap CPU settings."""
  options = parallel.run_once_compiler_options() if trainer.config.train.fast_compile else None
  in_shardings = (shardings, jax.tree.map(lambda x: x.sharding, damsm_vars), jax.tree.map(lambda x: x.sharding, batch))
  metrics, by_batch = parallel.replicated(mesh), parallel.batch_sharding(mesh)
  stage_images = tuple(by_batch for _ in trainer.sizes)
  forward_out = GeneratorForward(images=stage_images, mu=by_batch, logvar=by_batch, words=by_batch,
                                 sentence=by_batch, batch_stats=shardings.g_batch_stats, pullback=None)
  d_step = jax.jit(functools.partial(trainer.d_step, r1=r1), in_shardings=in_shardings,
                   out_shardings=(shardings, metrics, forward_out), donate_argnums=0,
                   compiler_options=options).lower(state, damsm_vars, batch).compile()
  forward = d_step.out_info[2]  # abstract, with the shardings d_step gives; its VJP tree is the one d_step returns
  g_step = jax.jit(trainer.g_step, in_shardings=in_shardings + (jax.tree.map(lambda x: x.sharding, forward),),
                   out_shardings=(shardings, metrics), donate_argnums=0, compiler_options=options)
  return d_step, g_step.lower(state, damsm_vars, batch, forward).compile()


def damsm_vocab_builder(config: ml_collections.ConfigDict, workdir: str) -> Callable:
  """For a randomly initialised DAMSM: the vocabulary of the dataset's train + test captions, saved as
  <workdir>/vocab.json once and reused (as pretrain_damsm does)."""
  def build():
    from attngan_jax.pretrain_damsm import VOCAB_FILE, dataset_captions
    from attngan_jax.text import Vocabulary
    path = os.path.join(workdir, VOCAB_FILE)
    if os.path.isfile(path):
      return Vocabulary.load_json(path)
    vocab = Vocabulary.build(c for split in ("train", "test") for c in dataset_captions(config.data, split))
    if jax.process_index() == 0:
      os.makedirs(workdir, exist_ok=True)
      vocab.save_json(path)
    return vocab
  return build


def load_damsm(config: ml_collections.ConfigDict, workdir: str) -> FrozenDAMSM:
  """The frozen DAMSM of config.damsm (a random one is built from the config seed + 1)."""
  return FrozenDAMSM.from_config(config.damsm, embedding_dim=int(config.model.embedding_dim),
                                 vocab_for_random=damsm_vocab_builder(config, workdir), seed=int(config.seed) + 1)

