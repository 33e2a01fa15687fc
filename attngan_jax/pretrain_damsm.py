"""DAMSM pretraining (the reference pretrain_DAMSM.py) on the shared training loop.

    python -m attngan_jax.pretrain_damsm --config configs/attngan/damsm_shapes.py --workdir runs/damsm_shapes

Each step encodes a global batch of images and captions, computes L_DAMSM = Lw1 + Lw2 + Ls1 + Ls2 on the whole
global batch (negatives span every device), and updates the text encoder and the image encoder's new layers
(the pretrained Inception stays frozen unless model.image_encoder.train_backbone). Every eval.every_steps the
test split is scored (losses with dropout off and frozen BatchNorm, as the reference's evaluate(), plus
within-batch retrieval accuracy). At the end the encoders are written to <workdir>/damsm/{text_encoder,
image_encoder} in the format of attngan_jax.convert_torch (load_text_encoder / load_image_encoder), with the
vocabulary beside the text encoder. Runs resume from the latest checkpoint in the workdir.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import optax

from attngan_jax import convert_torch
from attngan_jax.damsm_loss import damsm_loss
from attngan_jax.damsm_optim import lr_schedule, make_optimizer, stop_backbone_gradients
from attngan_jax.image_encoder import make_image_encoder
from attngan_jax.initializers import rbg_key
from attngan_jax.text import TextTransform, Vocabulary
from attngan_jax.text_encoder import TextEncoder
from t2i_common import parallel
from t2i_common.data.loader import iterate_eval, make_loader, make_source
from t2i_common.train_loop import TrainLoop, TrainState
from t2i_common.weights import read_state_dict

log = logging.getLogger(__name__)
VOCAB_FILE = "vocab.json"


# ---------------------------------------------------------------------------------------------- vocabulary

def dataset_captions(data_config: ml_collections.ConfigDict, split: str):
  """Every caption of a split (shapes: from the scene layouts, without rendering images)."""
  source = make_source(data_config, split)
  read = source.scene if hasattr(source, "scene") else source.__getitem__
  for i in range(len(source)):
    yield from read(i)["captions"]


def load_vocabulary(config: ml_collections.ConfigDict, workdir: str) -> Vocabulary:
  """The vocabulary named by model.text_encoder.vocab_file, or the one of the run, built once if needed."""
  path = config.model.text_encoder.vocab_file
  if path:
    if path.endswith((".pickle", ".pkl")):
      return Vocabulary.from_captions_pickle(path)[0]
    return Vocabulary.load_json(path)
  path = os.path.join(workdir, VOCAB_FILE)
  if os.path.isfile(path):
    return Vocabulary.load_json(path)
  log.info("building the vocabulary from the train and test captions of %s", config.data.name)
  vocab = Vocabulary.build(c for split in ("train", "test") for c in dataset_captions(config.data, split))
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    vocab.save_json(path)
  return vocab


# ---------------------------------------------------------------------------------------------- trainer

def _load_backbone(path: str) -> dict:
  """Inception-v3 variables from a converted directory or a torchvision state dict file."""
  if os.path.isdir(path):
    return convert_torch.load_inception(path)[1]
  _, variables, _ = convert_torch.convert_state_dict(read_state_dict(path), "inception", source=path,
                                                     keep_fc=False)
  return variables


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
    return TrainState.create(params=params, tx=self.make_tx(params), rng=k_state, batch_stats=batch_stats)

  def encode(self, params: Any, batch_stats: Any, batch: dict, *, train: bool, rng: Optional[jax.Array] = None):
    """(regions, global, words, sentence, new batch_stats) for a batch."""
    words, sentence = self.text_model.apply({"params": params["text_encoder"]}, batch["tokens"], batch["length"],
                                            deterministic=not train, rngs={"dropout": rbg_key(rng)} if train else {})
    variables = {"params": params["image_encoder"]}
    if batch_stats is not None:
      variables["batch_stats"] = batch_stats
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
    new_state = state.apply_gradients(grads, batch_stats=stats)
    valid = jnp.ones((glob.shape[0],), bool)
    metrics = {"loss": loss, **{k: v for k, v in parts.items() if k != "attention"},
               "grad_norm_text": optax.global_norm(grads["text_encoder"]),
               "grad_norm_image": optax.global_norm(grads["image_encoder"]),
               "lr": lr_schedule(self.config.optimizer, self.steps_per_epoch)(state.step),
               "sent_top1": within_batch_top1(_cosine_matrix(glob, sentence), valid)}
    return new_state, metrics

  def eval_step(self, state: TrainState, batch: dict) -> dict:
    """Test losses (dropout off, running BatchNorm statistics) and retrieval accuracy on one padded batch."""
    regions, glob, words, sentence, _ = self.encode(state.params, state.batch_stats, batch, train=False)
    valid = batch["mask"].astype(bool)
    _, parts = damsm_loss(regions, glob, words, sentence, batch["length"], batch["class_id"],
                          self.config.model.loss, example_mask=valid)
    out = {k: v for k, v in parts.items() if k != "attention"}
    out["sent_top1"] = within_batch_top1(_cosine_matrix(glob, sentence), valid)
    out["num_valid"] = jnp.sum(valid)
    return out

  def export(self, state: TrainState, out_dir: str) -> dict[str, str]:
    """Writes both encoders (+ vocabulary) in the convert_torch directory format; returns their paths."""
    params = jax.device_get(state.params)
    tcfg, icfg = self.config.model.text_encoder, self.config.model.image_encoder
    text_dir, image_dir = os.path.join(out_dir, "text_encoder"), os.path.join(out_dir, "image_encoder")
    if jax.process_index() == 0:
      convert_torch.save_converted(text_dir, {"params": params["text_encoder"]},
                                   {"kind": "text_encoder", "n_words": len(self.vocab),
                                    "embed_dim": tcfg.embed_dim, "output_dim": tcfg.output_dim})
      self.vocab.save_json(os.path.join(text_dir, convert_torch.VOCAB_FILE))
      image_vars = {"params": params["image_encoder"]}
      if state.batch_stats is not None:
        image_vars["batch_stats"] = jax.device_get(state.batch_stats)
      convert_torch.save_converted(image_dir, image_vars,
                                   {"kind": "image_encoder", "embed_dim": icfg.embed_dim, "backbone": icfg.backbone,
                                    "input_size": icfg.input_size, "small_cnn_width": icfg.small_cnn_width,
                                    "image_size": self.image_size})
    return {"text_encoder": text_dir, "image_encoder": image_dir}


def _cosine_matrix(a: jax.Array, b: jax.Array) -> jax.Array:
  a = a / jnp.maximum(jnp.linalg.norm(a, axis=-1, keepdims=True), 1e-8)
  b = b / jnp.maximum(jnp.linalg.norm(b, axis=-1, keepdims=True), 1e-8)
  return a @ b.T


class EvalHook:
  """Scores up to eval.num_batches test batches; writes eval/* scalars and keeps the last result."""

  def __init__(self, trainer: DAMSMTrainer, mesh: jax.sharding.Mesh, every_steps: int):
    self.trainer, self.mesh, self.every_steps = trainer, mesh, every_steps
    self._step = jax.jit(trainer.eval_step)
    self.last: dict[str, float] = {}

  def evaluate(self, state: TrainState) -> dict[str, float]:
    cfg = self.trainer.config
    it = iterate_eval(cfg.data, "test", cfg.eval.batch_size, self.trainer.text_transform, seed=cfg.seed)
    sums: dict[str, float] = {}
    count = 0.0
    for i, batch in enumerate(it):
      if i >= cfg.eval.num_batches:
        break
      out = jax.device_get(self._step(state, parallel.global_batch(batch, self.mesh)))
      n = float(out.pop("num_valid"))
      for k, v in out.items():  # weight each batch by its real examples
        sums[k] = sums.get(k, 0.0) + float(v) * n
      count += n
    result = {k: v / max(count, 1.0) for k, v in sums.items()}
    result["loss"] = sum(result[k] for k in ("w_loss0", "w_loss1", "s_loss0", "s_loss1"))
    return result

  def __call__(self, state: TrainState, step: int, writer) -> None:
    self.last = self.evaluate(state)
    writer.write_scalars(step, {f"eval/{k}": v for k, v in self.last.items()})
    log.info("step %d eval: %s", step, {k: round(v, 4) for k, v in self.last.items()})


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Pretrains the DAMSM to config.train.num_steps; exports the encoders; returns paths and eval metrics."""
  os.makedirs(workdir, exist_ok=True)
  parallel.initialize_distributed(config.distributed)
  mesh = parallel.create_mesh(config.mesh)
  vocab = load_vocabulary(config, workdir)
  text_transform = TextTransform(vocab, config.model.text_encoder.words_num)
  loader = make_loader(config.data, "train", global_batch_size=config.train.batch_size, seed=config.seed,
                       text_transform=text_transform)
  trainer = DAMSMTrainer(config, vocab, steps_per_epoch=len(loader))
  hook = EvalHook(trainer, mesh, config.eval.every_steps)
  loop = TrainLoop(config, workdir, init_state=trainer.init_state, train_step=trainer.train_step,
                   loader=loader, mesh=mesh, hooks=[hook])
  state = loop.run()
  result: dict[str, Any] = {"step": loop.step, "vocab_size": len(vocab)}
  if loop.preempted:
    result["preempted"] = True
    return result
  result.update(trainer.export(state, os.path.join(workdir, "damsm")))
  result["eval"] = hook.last or hook.evaluate(state)
  return result


def main(argv) -> None:
  del argv
  from absl import flags
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
  logging.getLogger("absl").setLevel(logging.WARNING)
  result = train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)
  print(result)


if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", None, "DAMSM config file (path.py[:variant]).", lock_config=True)
  flags.DEFINE_string("workdir", None, "Run folder: checkpoints, metrics, exported encoders.")
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
