"""DAMSM pretraining (the reference pretrain_DAMSM.py) on the shared training loop.

    python -m attngan_jax.pretrain_damsm --config configs/attngan/damsm_shapes.py --workdir runs/damsm_shapes \
        [--config.train.num_steps=...]

Each step encodes a global batch of images and captions, computes L_DAMSM = Lw1 + Lw2 + Ls1 + Ls2 on the whole
global batch (negatives span every device), and updates the text encoder and the image encoder's new layers
(the pretrained Inception stays frozen unless model.image_encoder.train_backbone); see
attngan_jax.damsm.trainer. Every eval.every_steps the test split is scored (losses as the reference's
evaluate(), within-batch retrieval accuracy, R-precision); every logging.images_every_steps word-region
attention pictures of fixed test captions go to <workdir>/attention/ and TensorBoard. At the end the encoders
are written to <workdir>/damsm/{text_encoder, image_encoder} in the format of attngan_jax.convert_torch
(load_text_encoder / load_image_encoder), with the vocabulary beside the text encoder; score them with
python -m attngan_jax.evaluate_damsm. Runs resume from the latest checkpoint in the workdir (the vocabulary
built by the first run, <workdir>/vocab.json, is reused).
"""
from __future__ import annotations

import logging
import os
from typing import Any

import jax
import ml_collections

from attngan_jax.damsm.trainer import AttentionHook, DAMSMTrainer, EvalHook
from attngan_jax.text import TextTransform, Vocabulary
from t2i_common import parallel
from t2i_common.data.loader import make_loader, make_source
from t2i_common.entry_point import run_config_command
from t2i_common.train_loop import TrainLoop

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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Pretrains the DAMSM to config.train.num_steps; exports the encoders; returns paths and eval metrics."""
  os.makedirs(workdir, exist_ok=True)
  parallel.initialize_distributed(config.distributed)
  mesh = parallel.create_mesh(config.mesh)
  vocab = load_vocabulary(config, workdir)
  text_transform = TextTransform(vocab, config.model.text_encoder.words_num)
  loader = make_loader(config.data, "train", global_batch_size=config.train.batch_size, seed=config.seed,
                       text_transform=text_transform)
  # Epochs (for the x0.98 lr decay) are counted in loader steps: train images // global batch.
  trainer = DAMSMTrainer(config, vocab, steps_per_epoch=len(loader))
  hook = EvalHook(trainer, mesh, config.eval.every_steps)
  hooks = [hook, AttentionHook(trainer, mesh, config.logging.images_every_steps, workdir)]
  loop = TrainLoop(config, workdir, init_state=trainer.init_state, train_step=trainer.train_step,
                   loader=loader, mesh=mesh, hooks=hooks)
  state = loop.run()
  result: dict[str, Any] = {"step": loop.step, "vocab_size": len(vocab)}
  if loop.preempted:
    result["preempted"] = True
    return result
  result.update(trainer.export(state, os.path.join(workdir, "damsm")))
  result["eval"] = hook.last or hook.evaluate(state)
  result["compile_time_s"] = loop.compile_time_s
  return result


def main(args) -> None:
  print(train_and_evaluate(args.config, args.workdir))


if __name__ == "__main__":
  run_config_command(main, config_kind="DAMSM", workdir_help="Run folder: checkpoints, metrics, exported encoders.")
