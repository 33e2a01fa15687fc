"""DAMSM pretraining on the shared train loop: the trainer (init_state / train_step / eval_step for
t2i_common.train_loop) and its two periodic hooks.

- `DAMSMTrainer`: the text encoder and the image encoder as one parameter tree {"text_encoder",
  "image_encoder"}; each step computes L_DAMSM = Lw1 + Lw2 + Ls1 + Ls2 on the whole global batch inside jit, so
  with the batch sharded over the mesh every caption has the global batch as negatives (XLA gathers the
  features). The frozen Inception backbone gets no gradient; the text encoder's gradient is clipped
  (attngan_jax.damsm.optim).
- `EvalHook` (every eval.every_steps): test losses with dropout off and running BatchNorm statistics (the
  reference's evaluate()), within-batch retrieval accuracy, and the R-precision of the test images against
  their captions (attngan_jax.r_precision), written as eval/* scalars.
- `AttentionHook` (every logging.images_every_steps): word-region attention pictures of a few fixed test
  captions (attngan_jax.attention_maps), as PNGs in <workdir>/attention/ and TensorBoard images.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from PIL import Image

from attngan_jax import convert_torch
from attngan_jax.attention_maps import attention_figure, damsm_word_region_attention
from attngan_jax.damsm.loss import damsm_loss
from attngan_jax.damsm.optim import lr_schedule, make_optimizer, stop_backbone_gradients
from attngan_jax.damsm.image_encoder import make_image_encoder
from attngan_jax.initializers import rbg_key
from attngan_jax.r_precision import r_precision, r_precision_config, replicated_outputs
from attngan_jax.text import TextTransform, Vocabulary
from attngan_jax.damsm.text_encoder import TextEncoder
from t2i_common import parallel
from t2i_common.data.loader import iterate_eval
from t2i_common.train_loop import TrainState, ema_decay_at
from t2i_common.weights import read_state_dict

log = logging.getLogger(__name__)
LOSS_PARTS = ("w_loss0", "w_loss1", "s_loss0", "s_loss1")


def add_eval_options(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Adds the R-precision protocol (config.eval.r_precision) and the attention pictures (config.eval.attention)
  to a config from attngan_jax.damsm.config.damsm_config."""
  config.eval.r_precision = r_precision_config()
  config.eval.attention = ml_collections.ConfigDict({
      "num_examples": 4,   # fixed test captions shown (the first ones of the test split)
      "top_k": 5,          # words shown per caption, by summed attention
      "panel_size": 0,     # side of each panel in pixels; 0 = the image size
  })
  return config


# ---------------------------------------------------------------------------------------------- trainer

def _load_backbone(path: str) -> dict:
  """Inception-v3 variables from a converted directory or a torchvision state dict file."""
  if os.path.isdir(path):
    return convert_torch.load_inception(path)[1]
  _, variables, _ = convert_torch.convert_state_dict(read_state_dict(path), "inception", source=path,
                                                     keep_fc=False)
  return variables


def cosine_matrix(a: jax.Array, b: jax.Array) -> jax.Array:
  """[Na, Nb] cosines of the rows of a and b."""
  a = a / jnp.maximum(jnp.linalg.norm(a, axis=-1, keepdims=True), 1e-8)
  b = b / jnp.maximum(jnp.linalg.norm(b, axis=-1, keepdims=True), 1e-8)
  return a @ b.T


def within_batch_top1(scores: jax.Array, valid: jax.Array) -> jax.Array:
  """Share of valid rows whose best-scoring column (among valid columns) is their own: image -> caption."""
  scores = jnp.where(valid[None, :], scores, -jnp.inf)
  hit = (jnp.argmax(scores, axis=1) == jnp.arange(scores.shape[0])) & valid
  return jnp.sum(hit) / jnp.maximum(jnp.sum(valid), 1)


class DAMSMTrainer:
  """Models, optimizer, init and the jittable train / eval steps of DAMSM pretraining."""

  def __init__(self, config: ml_collections.ConfigDict, vocab: Vocabulary, steps_per_epoch: int):
    self.config, self.vocab = config, vocab
    tcfg, icfg = config.model.text_encoder, config.model.image_encoder
    self.text_transform = TextTransform(vocab, tcfg.words_num)
    self.text_model = TextEncoder(n_words=len(vocab), embed_dim=tcfg.embed_dim, output_dim=tcfg.output_dim,
                                  dropout=tcfg.dropout)
    if icfg.embed_dim != tcfg.output_dim:
      raise ValueError(f"model.image_encoder.embed_dim={icfg.embed_dim} must equal model.text_encoder.output_dim="
                       f"{tcfg.output_dim}: image and text features share one space.")
    self.image_model = make_image_encoder(icfg)
    self.backbone, self.train_backbone = icfg.backbone, bool(icfg.train_backbone)
    self.bn_train = icfg.backbone == "inception_v3" and icfg.bn_mode == "train"
    self.image_size = int(config.data.image_sizes[-1])
    self.steps_per_epoch = steps_per_epoch
    self._backbone_vars = self._init_text = self._init_image = None
    if config.model.init_image_encoder:
      self._init_image = convert_torch.load_image_encoder(config.model.init_image_encoder)[1]
    elif icfg.backbone == "inception_v3":
      if config.model.pretrained_backbone:
        self._backbone_vars = _load_backbone(config.model.pretrained_backbone)
      elif not self.train_backbone:
        raise ValueError("model.image_encoder.backbone='inception_v3' is frozen but model.pretrained_backbone is "
                         "empty: give torchvision's ImageNet Inception-v3 (.pth or a directory from python -m "
                         "attngan_jax.convert_torch --kind inception), or set model.image_encoder.train_backbone"
                         "=True, or use backbone='small_cnn'.")
    if config.model.init_text_encoder:
      _, self._init_text, init_vocab = convert_torch.load_text_encoder(config.model.init_text_encoder)
      if init_vocab is not None and init_vocab != vocab:
        raise ValueError(f"{config.model.init_text_encoder!r} was trained with another vocabulary than this run's; "
                         "set model.text_encoder.vocab_file to its vocab.json.")

  def _dummy_inputs(self):
    t = self.config.model.text_encoder.words_num
    return (jnp.zeros((1, t), jnp.int32), jnp.ones((1,), jnp.int32),
            jnp.zeros((1, self.image_size, self.image_size, 3), jnp.float32))

  def init_variables(self, rng: jax.Array) -> tuple[dict, Optional[dict]]:
    """(params {"text_encoder", "image_encoder"}, image batch_stats or None)."""
    k_text, k_image = jax.random.split(rbg_key(rng))  # 'rbg': far faster to compile than threefry on CPU
    tokens, lengths, images = self._dummy_inputs()
    text_vars = self._init_text or self.text_model.init(k_text, tokens, lengths)
    image_vars = self._init_image
    if image_vars is None:
      image_vars = self.image_model.init(k_image, images)
      if self._backbone_vars is not None:
        image_vars = convert_torch.inception_into_image_encoder(image_vars, self._backbone_vars)
    params = {"text_encoder": text_vars["params"], "image_encoder": image_vars["params"]}
    return params, image_vars.get("batch_stats")

  def make_tx(self, params: Any) -> optax.GradientTransformation:
    return make_optimizer(self.config.optimizer, params, backbone=self.backbone,
                          train_backbone=self.train_backbone, steps_per_epoch=self.steps_per_epoch)

  def init_state(self, rng: jax.Array) -> TrainState:
    k_init, k_state = jax.random.split(rng)
    params, batch_stats = self.init_variables(k_init)
    return TrainState.create(params=params, tx=self.make_tx(params), rng=k_state, batch_stats=batch_stats,
                             ema=self.ema_decay > 0)

  @property
  def ema_decay(self) -> float:
    return float(self.config.train.ema_decay)

  @staticmethod
  def eval_params(state: TrainState) -> Any:
    """The weights evaluated and exported: the EMA ones when the run keeps them (train.ema_decay > 0)."""
    return state.params if state.ema_params is None else state.ema_params

  def image_variables(self, params: Any, batch_stats: Any) -> dict:
    variables = {"params": params["image_encoder"]}
    if batch_stats is not None:
      variables["batch_stats"] = batch_stats
    return variables

  def encode(self, params: Any, batch_stats: Any, batch: dict, *, train: bool, rng: Optional[jax.Array] = None):
    """(regions, global, words, sentence, new batch_stats) for a batch."""
    words, sentence = self.text_model.apply({"params": params["text_encoder"]}, batch["tokens"], batch["length"],
                                            deterministic=not train, rngs={"dropout": rbg_key(rng)} if train else {})
    variables = self.image_variables(params, batch_stats)
    if train and self.bn_train:
      (regions, glob), updates = self.image_model.apply(variables, batch["image"], train=True,
                                                        mutable=["batch_stats"])
      batch_stats = updates["batch_stats"]
    else:
      regions, glob = self.image_model.apply(variables, batch["image"], train=train)
    return regions, glob, words, sentence, batch_stats

  def train_step(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    rng = state.step_rng()

    def loss_fn(params):
      params = stop_backbone_gradients(params, self.backbone, self.train_backbone)
      regions, glob, words, sentence, stats = self.encode(params, state.batch_stats, batch, train=True, rng=rng)
      total, parts = damsm_loss(regions, glob, words, sentence, batch["length"], batch["class_id"],
                                self.config.model.loss)
      return total, (parts, stats, glob, sentence)

    (loss, (parts, stats, glob, sentence)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state = state.apply_gradients(
        grads, batch_stats=stats,
        ema_decay=ema_decay_at(state.step, self.ema_decay) if state.ema_params is not None else None)
    valid = jnp.ones((glob.shape[0],), bool)
    metrics = {"loss": loss, **{k: parts[k] for k in LOSS_PARTS},
               "grad_norm_text": optax.global_norm(grads["text_encoder"]),
               "grad_norm_image": optax.global_norm(grads["image_encoder"]),
               "lr": lr_schedule(self.config.optimizer, self.steps_per_epoch)(state.step),
               "sent_top1": within_batch_top1(cosine_matrix(glob, sentence), valid)}
    return new_state, metrics

  def eval_step(self, state: TrainState, batch: dict) -> dict:
    """One padded test batch: losses (dropout off, running BatchNorm statistics), within-batch accuracy, and the
    global image / sentence vectors (with class ids and mask) for R-precision."""
    regions, glob, words, sentence, _ = self.encode(self.eval_params(state), state.batch_stats, batch, train=False)
    valid = batch["mask"].astype(bool)
    _, parts = damsm_loss(regions, glob, words, sentence, batch["length"], batch["class_id"],
                          self.config.model.loss, example_mask=valid)
    out = {k: parts[k] for k in LOSS_PARTS}
    out["sent_top1"] = within_batch_top1(cosine_matrix(glob, sentence), valid)
    out["num_valid"] = jnp.sum(valid)
    out.update(image_vec=glob, sent_vec=sentence, class_id=batch["class_id"], mask=valid)
    return out

  def export(self, state: TrainState, out_dir: str) -> dict[str, str]:
    """Writes both encoders (+ vocabulary) in the convert_torch directory format; returns their paths.

    Beside convert_torch's fields, the configs record words_num (text) and image_size (image), which
    r_precision.DAMSMScorer.from_export uses to prepare captions and images as in training.
    """
    params = jax.device_get(self.eval_params(state))
    tcfg, icfg = self.config.model.text_encoder, self.config.model.image_encoder
    text_dir, image_dir = os.path.join(out_dir, "text_encoder"), os.path.join(out_dir, "image_encoder")
    if jax.process_index() == 0:
      convert_torch.save_converted(text_dir, {"params": params["text_encoder"]},
                                   {"kind": "text_encoder", "n_words": len(self.vocab),
                                    "embed_dim": tcfg.embed_dim, "output_dim": tcfg.output_dim,
                                    "words_num": tcfg.words_num})
      self.vocab.save_json(os.path.join(text_dir, convert_torch.VOCAB_FILE))
      image_vars = {"params": params["image_encoder"]}
      if state.batch_stats is not None:
        image_vars["batch_stats"] = jax.device_get(state.batch_stats)
      convert_torch.save_converted(image_dir, image_vars,
                                   {"kind": "image_encoder", "embed_dim": icfg.embed_dim, "backbone": icfg.backbone,
                                    "input_size": icfg.input_size, "small_cnn_width": icfg.small_cnn_width,
                                    "image_size": self.image_size})
    return {"text_encoder": text_dir, "image_encoder": image_dir}


# ---------------------------------------------------------------------------------------------- hooks

class EvalHook:
  """Scores the test split (up to eval.num_batches batches, 0 = all): eval/{w,s}_loss{0,1}, eval/loss,
  eval/sent_top1 and eval/r_precision(_std); keeps the last result in `last`."""

  def __init__(self, trainer: DAMSMTrainer, mesh: jax.sharding.Mesh, every_steps: int):
    self.trainer, self.mesh, self.every_steps = trainer, mesh, every_steps
    self._step = jax.jit(trainer.eval_step, out_shardings=parallel.replicated(mesh))
    self.last: dict[str, float] = {}

  def evaluate(self, state: TrainState) -> dict[str, float]:
    cfg = self.trainer.config
    batches = iterate_eval(cfg.data, "test", cfg.eval.batch_size, self.trainer.text_transform, seed=cfg.seed)
    sums: dict[str, float] = {}
    vectors: dict[str, list[np.ndarray]] = {"image_vec": [], "sent_vec": [], "class_id": []}
    count = 0.0
    for out in replicated_outputs(self._step, self.mesh, batches, state, max_batches=cfg.eval.num_batches):
      n = float(out["num_valid"])
      for k in LOSS_PARTS + ("sent_top1",):  # weight each batch by its real examples
        sums[k] = sums.get(k, 0.0) + float(out[k]) * n
      for k in vectors:
        vectors[k].append(out[k][out["mask"]])
      count += n
    result = {k: v / max(count, 1.0) for k, v in sums.items()}
    result["loss"] = sum(result[k] for k in LOSS_PARTS)
    rp = cfg.eval.r_precision
    scores = r_precision(*(np.concatenate(vectors[k]) for k in ("image_vec", "sent_vec", "class_id")),
                         num_mismatch=rp.num_mismatch, num_folds=min(rp.num_folds, int(count)), seed=rp.seed)
    result.update(r_precision=scores["r_precision"], r_precision_std=scores["r_precision_std"])
    return result

  def __call__(self, state: TrainState, step: int, writer) -> None:
    self.last = self.evaluate(state)
    writer.write_scalars(step, {f"eval/{k}": v for k, v in self.last.items()})
    log.info("step %d eval: %s", step, {k: round(v, 4) for k, v in self.last.items()})


class AttentionHook:
  """Word-region attention of a few fixed test (image, caption) pairs: <workdir>/attention/step_<step>.png and
  the TensorBoard image "attention" (one row per caption: the image, then its top-k words' maps)."""

  def __init__(self, trainer: DAMSMTrainer, mesh: jax.sharding.Mesh, every_steps: int, workdir: str):
    self.trainer, self.mesh, self.every_steps = trainer, mesh, every_steps
    self.out_dir = os.path.join(workdir, "attention")
    cfg = trainer.config
    self.options = cfg.eval.attention
    batches = iterate_eval(cfg.data, "test", cfg.eval.batch_size, trainer.text_transform, seed=cfg.seed)
    self.batch = next(iter(batches))
    # Examples are the first rows of the global batch, i.e. of process 0's slice.
    self.num = max(1, min(int(self.options.num_examples), len(self.batch["mask"])))
    self._attend = jax.jit(self._features, out_shardings=parallel.replicated(mesh))

  def _features(self, state: TrainState, batch: dict) -> dict:
    regions, _, words, _, _ = self.trainer.encode(self.trainer.eval_params(state), state.batch_stats, batch,
                                                  train=False)
    return {"regions": regions[:self.num], "words": words[:self.num]}

  def figure(self, state: TrainState) -> np.ndarray:
    """uint8 grid of the attention panels for the current parameters."""
    feats = next(replicated_outputs(self._attend, self.mesh, [self.batch], state))
    images, betas, words = [], [], []
    for i in range(self.num):
      length = int(self.batch["length"][i])
      betas.append(damsm_word_region_attention(feats["regions"][i], feats["words"][i], length))
      words.append(self.trainer.vocab.decode(self.batch["tokens"][i], length))
      images.append((np.clip(self.batch["image"][i], -1.0, 1.0) + 1.0) / 2.0)
    return attention_figure(images, betas, words, k=int(self.options.top_k),
                            size=int(self.options.panel_size) or None)

  def __call__(self, state: TrainState, step: int, writer) -> None:
    grid = self.figure(state)
    if jax.process_index() == 0:
      os.makedirs(self.out_dir, exist_ok=True)
      Image.fromarray(grid).save(os.path.join(self.out_dir, f"step_{step:07d}.png"))
    writer.write_images(step, {"attention": grid})
