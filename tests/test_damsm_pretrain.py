"""End-to-end DAMSM pretraining on the tiny shapes config: train, evaluate (losses, R-precision), attention
pictures, export, reload, resume, and the evaluate_damsm entry point."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from attngan_jax import convert_torch
from attngan_jax.evaluate_damsm import evaluate
from attngan_jax.pretrain_damsm import train_and_evaluate
from t2i_common.config import load_config

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "attngan", "damsm_shapes.py")


def test_pretrain_damsm_tiny_end_to_end(tmp_path, fast_compile):
  config = load_config(CONFIG + ":tiny")
  result = train_and_evaluate(config, str(tmp_path / "run"))
  assert result["step"] == 3 and not result.get("preempted")
  ev = result["eval"]
  for key in ("w_loss0", "w_loss1", "s_loss0", "s_loss1", "sent_top1", "loss"):
    assert np.isfinite(ev[key]), (key, ev)
  assert 0.0 <= ev["sent_top1"] <= 1.0
  assert os.path.isfile(tmp_path / "run" / "vocab.json")
  # The exported encoders load back and encode a caption / an image.
  text_model, text_vars, vocab = convert_torch.load_text_encoder(result["text_encoder"])
  assert vocab is not None and len(vocab) == result["vocab_size"] and "circle" in vocab.wordtoix
  ids = [vocab.wordtoix[w] for w in ("a", "red", "circle")]
  words, sent = text_model.apply(text_vars, jnp.array([ids]), jnp.array([3]))
  assert words.shape == (1, 3, 32) and np.all(np.isfinite(sent))
  image_model, image_vars = convert_torch.load_image_encoder(result["image_encoder"])
  regions, glob = image_model.apply(image_vars, jnp.zeros((2, 32, 32, 3)))
  assert regions.shape == (2, 4, 4, 32) and glob.shape == (2, 32)
  # Held-out R-precision is logged with the eval losses; attention pictures are written.
  run = tmp_path / "run"
  assert 0.0 <= ev["r_precision"] <= 1.0 and ev["r_precision_std"] >= 0.0
  records = [json.loads(line) for line in open(run / "metrics.jsonl")]
  assert any("eval/r_precision" in r and r["step"] == 3 for r in records)
  pictures = sorted(os.listdir(run / "attention"))
  assert pictures == ["step_0000003.png"]
  picture = np.asarray(Image.open(run / "attention" / pictures[0]))
  assert picture.ndim == 3 and picture.shape[1] > 6 * 32   # image + top-5 word panels per row
  # Resuming continues from the checkpoint of step 3 instead of starting over.
  more = load_config(CONFIG + ":tiny", ["train.num_steps=4", "logging.images_every_steps=4"])
  assert train_and_evaluate(more, str(run))["step"] == 4
  assert "step_0000004.png" in os.listdir(run / "attention")
  steps = [r["step"] for r in map(json.loads, open(run / "metrics.jsonl")) if "loss" in r]
  assert steps == [1, 2, 3, 4]
  # evaluate_damsm scores the exported encoders on the test split and writes the JSON.
  scored = evaluate(config, str(run))
  assert scored["num_images"] == 16 and scored["num_folds"] == 2 and 0.0 <= scored["r_precision"] <= 1.0
  assert json.load(open(run / "eval" / "r_precision.json"))["r_precision"] == scored["r_precision"]


def test_ema_weights_are_kept_and_evaluated(tmp_path, fast_compile):
  """train.ema_decay > 0: the state keeps a warmed-up EMA of the encoders, and eval / export read it."""
  from attngan_jax.damsm.trainer import DAMSMTrainer
  from attngan_jax.pretrain_damsm import load_vocabulary
  from t2i_common import parallel
  from t2i_common.data.loader import make_loader
  from t2i_common.train_loop import ema_decay_at
  config = load_config(CONFIG + ":tiny", ["train.ema_decay=0.9"])
  vocab = load_vocabulary(config, str(tmp_path))
  trainer = DAMSMTrainer(config, vocab, steps_per_epoch=8)
  loader = make_loader(config.data, "train", global_batch_size=8, seed=0, text_transform=trainer.text_transform)
  mesh = parallel.create_mesh(config.mesh)
  state = trainer.init_state(jax.random.key(0))
  assert state.ema_params is not None
  new, _ = jax.jit(trainer.train_step)(state, parallel.global_batch(next(loader), mesh))
  decay = float(ema_decay_at(jnp.asarray(0), 0.9))
  assert decay == pytest.approx(0.1)  # the warm-up, not 0.9, at step 0
  expected = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, state.ema_params, new.params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), new.ema_params, expected)
  assert trainer.eval_params(new) is new.ema_params
  plain = DAMSMTrainer(load_config(CONFIG + ":tiny", ["train.ema_decay=0.0"]), vocab, steps_per_epoch=8)
  assert plain.init_state(jax.random.key(0)).ema_params is None
