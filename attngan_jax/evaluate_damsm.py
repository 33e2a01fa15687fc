"""R-precision of a trained DAMSM on a dataset split's real images (the common protocol; attngan_jax.r_precision).

    python -m attngan_jax.evaluate_damsm --config configs/attngan/damsm_shapes.py --workdir runs/damsm_shapes

Encoders, first found: --encoders DIR (holding text_encoder/ and image_encoder/, e.g. a converted released
DAMSM), config.model.init_text_encoder + init_image_encoder, <workdir>/damsm (exported by pretrain_damsm),
else the latest checkpoint in <workdir>. For every image of the split (--split, default test): its caption
(one drawn per image from eval.r_precision.seed) against eval.r_precision.num_mismatch captions of other
classes, cosine of the global vectors, top-1; mean +- std over eval.r_precision.num_folds folds. The result is
printed and written as JSON to <workdir>/eval/r_precision[_<split>].json.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Optional

import jax
import ml_collections

from attngan_jax.damsm.trainer import DAMSMTrainer
from attngan_jax.pretrain_damsm import load_vocabulary
from attngan_jax.r_precision import DAMSMScorer, r_precision, summary
from t2i_common import parallel
from t2i_common.checkpoint import Checkpointer
from t2i_common.entry_point import run_config_command
from t2i_common.logging import write_eval_json

log = logging.getLogger(__name__)


def _checkpoint_scorer(config: ml_collections.ConfigDict, workdir: str, mesh: jax.sharding.Mesh,
                       batch_size: int) -> DAMSMScorer:
  """A scorer on the encoders of the latest training checkpoint in `workdir`."""
  checkpointer = Checkpointer(workdir, config) if os.path.isdir(os.path.join(workdir, "checkpoints")) else None
  if checkpointer is None or checkpointer.latest_step() is None:
    if checkpointer is not None:
      checkpointer.close()
    raise FileNotFoundError(f"{workdir!r} has neither exported encoders (damsm/) nor a checkpoint: train with "
                            "python -m attngan_jax.pretrain_damsm first, or pass --encoders DIR.")
  trainer = DAMSMTrainer(config, load_vocabulary(config, workdir), steps_per_epoch=1)
  abstract = jax.eval_shape(trainer.init_state, jax.random.key(0))
  shardings = parallel.param_shardings(abstract, mesh)
  state, _ = checkpointer.restore(parallel.abstract_with_shardings(abstract, shardings))
  checkpointer.close()
  log.info("scoring the checkpoint of step %d", int(state.step))
  variables = {"image": trainer.image_variables(state.params, state.batch_stats),
               "text": {"params": state.params["text_encoder"]}}
  return DAMSMScorer(lambda v, x: trainer.image_model.apply(v, x)[1],
                     lambda v, t, n: trainer.text_model.apply(v, t, n)[1], variables, trainer.text_transform,
                     batch_size=batch_size, mesh=mesh)


def make_scorer(config: ml_collections.ConfigDict, workdir: str, *, encoders: Optional[str] = None,
                mesh: Optional[jax.sharding.Mesh] = None) -> DAMSMScorer:
  """The DAMSMScorer for this config and workdir (encoder sources in the order of the module docstring)."""
  mesh = mesh if mesh is not None else parallel.create_mesh(config.mesh)
  kwargs: dict[str, Any] = {"batch_size": int(config.eval.batch_size), "mesh": mesh,
                            "words_num": int(config.model.text_encoder.words_num)}
  if encoders:
    return DAMSMScorer.from_export(encoders, **kwargs)
  if config.model.init_text_encoder and config.model.init_image_encoder:
    vocab = load_vocabulary(config, workdir) if config.model.text_encoder.vocab_file else None
    return DAMSMScorer.from_dirs(config.model.init_text_encoder, config.model.init_image_encoder, vocab=vocab,
                                 **kwargs)
  exported = os.path.join(workdir, "damsm")
  if os.path.isdir(exported):
    return DAMSMScorer.from_export(exported, **kwargs)
  return _checkpoint_scorer(config, workdir, mesh, kwargs["batch_size"])


def evaluate(config: ml_collections.ConfigDict, workdir: str, *, split: str = "test",
             encoders: Optional[str] = None) -> dict[str, Any]:
  """R-precision of `split`'s real images; writes <workdir>/eval/r_precision[_<split>].json; returns the dict."""
  parallel.initialize_distributed(config.distributed)
  scorer = make_scorer(config, workdir, encoders=encoders)
  rp = config.eval.r_precision
  image_vecs, sent_vecs, class_ids = scorer.split_vectors(config.data, split, seed=rp.seed)
  result = r_precision(image_vecs, sent_vecs, class_ids, num_mismatch=rp.num_mismatch,
                       num_folds=min(rp.num_folds, len(class_ids)), seed=rp.seed)
  result.pop("hits")
  result.update(split=split, dataset=config.data.name)
  return write_eval_json(workdir, "r_precision.json" if split == "test" else f"r_precision_{split}.json", result)


def main(args) -> None:
  result = evaluate(args.config, args.workdir, split=args.split, encoders=args.encoders)
  print(summary(result))
  print(json.dumps(result))


if __name__ == "__main__":
  from absl import flags
  flags.DEFINE_string("split", "test", "Dataset split to score.")
  flags.DEFINE_string("encoders", None, "Directory with text_encoder/ and image_encoder/ to score instead.")
  run_config_command(main, config_kind="DAMSM",
                     workdir_help="Run folder of pretrain_damsm (exported encoders or checkpoints).")
