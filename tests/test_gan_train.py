"""AttnGAN training, sampling and evaluation on the tiny shapes config (configs/attngan/attngan_shapes.py:tiny, a
randomly initialised DAMSM): the entry points end to end, the sharded D / G steps (8 devices = 1 device), the EMA,
bit-identical resumption after SIGKILL, and bad input."""
import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest
from PIL import Image

from attngan_jax import sample
from attngan_jax.evaluate import evaluate
from attngan_jax.gan.trainer import GANTrainer, compile_steps, load_damsm, load_exported_generator
from attngan_jax.train import train_and_evaluate
from t2i_common import parallel
from t2i_common.config import load_config
from t2i_common.data.loader import make_loader
from t2i_common.train_loop import ema_decay_at

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "attngan", "attngan_shapes.py")
PROC = os.path.join(os.path.dirname(__file__), "helpers", "gan_trainer_proc.py")


@pytest.fixture(scope="module")
def fast_compile(tmp_path_factory):
  """XLA optimisations off (compile time dominates a 3-step run of a tiny model), and a persistent compilation
  cache, so the interruption test's training processes and the sharded test reuse the programs compiled here."""
  names = ("jax_disable_most_optimizations", "jax_compilation_cache_dir",
           "jax_persistent_cache_min_compile_time_secs", "jax_persistent_cache_min_entry_size_bytes")
  previous = {name: jax.config.values[name] for name in names}
  cache = tmp_path_factory.mktemp("jax_cache")
  for name, value in zip(names, (True, str(cache), 0, 0)):
    jax.config.update(name, value)
  yield cache
  for name, value in previous.items():
    jax.config.update(name, value)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, fast_compile):
  """A 3-step run of the tiny config: (config, workdir, train_and_evaluate's result)."""
  config = load_config(CONFIG + ":tiny")
  workdir = str(tmp_path_factory.mktemp("attngan") / "run")
  return config, workdir, train_and_evaluate(config, workdir)


def test_train_sample_evaluate_end_to_end(tiny_run):
  config, workdir, result = tiny_run
  assert result["step"] == 3 and not result.get("preempted")
  records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  losses = [r for r in records if "d_loss" in r]
  assert [r["step"] for r in losses] == [1, 2, 3]
  for r in losses:  # both updates' losses and every part are logged and finite
    for key in ("d_loss", "g_loss", "d/stage0", "d/stage1", "d/wrong_cond", "g/stage0", "g/stage1", "g/damsm",
                "g/w0", "g/s1", "g/kl", "d_grad_norm", "g_grad_norm"):
      assert np.isfinite(r[key]), (key, r)
  # Training-time pictures and scores: samples of every stage, the attention figure, oracle and R-precision.
  for name in ("step_0000003.png", "attention_step_0000003.png"):
    assert np.asarray(Image.open(os.path.join(workdir, "samples", name))).ndim == 3
  assert any("sample/object_recall" in r for r in records) and any("eval/r_precision" in r for r in records)
  assert 0.0 <= result["eval"]["r_precision"] <= 1.0 and "object_recall/held_out" in result["eval"]["oracle"]
  # The exported generator: the EMA weights with the live BatchNorm statistics, and the DAMSM it was trained with.
  gen, variables, saved = load_exported_generator(result["generator"])
  assert gen.image_sizes == (16, 32) and saved["step"] == 3
  assert os.path.isdir(saved["damsm"]["text_encoder"]) and os.path.isdir(saved["damsm"]["image_encoder"])

  # Sampling from the run: every stage of every (caption, seed), the captioned grid and the attention figure.
  out = os.path.join(workdir, "cli_samples")
  paths = sample.run(sample.build_parser().parse_args(
      ["--workdir", workdir, "--caption", "a red circle", "--caption", "a small blue square and a green star",
       "--seeds", "0-2", "--out", out]))
  assert len(os.listdir(paths["images"])) == 2 * 3 * 2
  grid = np.asarray(Image.open(paths["grid"]))
  attention = np.asarray(Image.open(paths["attention"]))
  assert grid.shape[0] > 6 * 32 and attention.shape[1] > 6 * 96  # 6 rows; image + 5 words per row
  seed0, seed1 = (np.asarray(Image.open(os.path.join(paths["images"], f"00_a_red_circle_{s}_32px.png")))
                  for s in (0, 1))
  assert not np.array_equal(seed0, seed1)

  # Evaluation: 24 images from 16 test scenes (a second pass with other captions), scored and written.
  scored = evaluate(config, workdir)
  assert scored["num_images"] == 24 and scored["num_folds"] == 2 and 0.0 <= scored["r_precision"] <= 1.0
  assert scored["oracle"]["num_images"] == 24 and "object_recall/seen" in scored["oracle"]
  assert json.load(open(os.path.join(workdir, "eval", "attngan.json")))["r_precision"] == scored["r_precision"]
  assert os.path.isfile(os.path.join(workdir, "eval", "grid.png"))
  # IS / FID are off unless their weights are configured.
  assert "inception_score" not in scored and "fid" not in scored


def _tiny_trainer(tmp_path, overrides=()):
  config = load_config(CONFIG + ":tiny", list(overrides))
  trainer = GANTrainer(config, load_damsm(config, str(tmp_path)))
  loader = make_loader(config.data, "train", global_batch_size=8, seed=0, text_transform=trainer.text_transform)
  return config, trainer, loader


def _initial_state(trainer):
  """The state at step 0, initialised as the train loop does it (a compile the persistent cache already holds)."""
  mesh = parallel.create_mesh(None)
  shardings = parallel.param_shardings(jax.eval_shape(trainer.init_state, jax.random.key(0)), mesh)
  return jax.jit(trainer.init_state, out_shardings=shardings,
                 compiler_options=parallel.run_once_compiler_options())(jax.random.key(0))


def _run_steps(trainer, mesh, batches, init):
  """(d_step, g_step) pairs compiled as training compiles them (GANTrainLoop: donated state, explicit shardings)
  on `mesh`, from `init`; the host copies of the state after each pair and the last metrics."""
  state = jax.device_put(init, parallel.replicated(mesh))
  damsm_vars = jax.device_put(trainer.damsm.variables, parallel.replicated(mesh))
  shardings = jax.tree.map(lambda x: x.sharding, state)
  states, steps = [jax.device_get(state)], None
  with jax.set_mesh(mesh):
    for batch in batches:
      global_batch = parallel.global_batch(batch, mesh)
      assert len(global_batch["tokens"].sharding.device_set) == mesh.size
      steps = steps or compile_steps(trainer, state, damsm_vars, global_batch, shardings, mesh)
      state, _, forward = steps[0](state, damsm_vars, global_batch)
      state, metrics = steps[1](state, damsm_vars, global_batch, forward)
      states.append(jax.device_get(state))
  return states, jax.device_get(metrics)


def _max_rel_diff(a_tree, b_tree) -> float:
  worst = 0.0
  for a, b in zip(jax.tree.leaves(a_tree), jax.tree.leaves(b_tree), strict=True):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    worst = max(worst, float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), 1e-6)))
  return worst


def test_sharded_steps_on_8_devices_equal_1_device_and_ema(tmp_path, fast_compile):
  """BatchNorm statistics, losses and updates are those of the global batch, whatever the device count."""
  _, trainer, loader = _tiny_trainer(tmp_path)
  batches = [next(loader) for _ in range(2)]
  init = jax.device_get(_initial_state(trainer))
  one, m1 = _run_steps(trainer, parallel.create_mesh(devices=jax.devices()[:1]), batches, init)
  eight, m8 = _run_steps(trainer, parallel.create_mesh(None), batches, init)
  assert jax.device_count() == 8 and int(one[-1].step) == int(eight[-1].step) == 2
  # After one iteration the whole state agrees to rounding: parameters, EMA, BatchNorm statistics (the global
  # batch's), and the Adam moments, which hold the gradients themselves (mu = 0.5 g, nu = 0.001 g^2).
  fields = lambda s: (s.g_params, s.d_params, s.ema_params, s.g_batch_stats, s.d_batch_stats, s.g_opt_state,
                      s.d_opt_state)
  worst = _max_rel_diff(fields(one[1]), fields(eight[1]))
  print(f"8 devices vs 1, one iteration: max relative difference over the state's arrays {worst:.1e}")
  assert worst < 1e-4
  # The second iteration starts from those rounding-level differences; Adam then moves a parameter whose
  # gradient entry is near 0 by a share of lr whatever its size, so compare what the dynamics compute: the
  # losses and the BatchNorm statistics.
  for key in m1:
    np.testing.assert_allclose(m8[key], m1[key], rtol=1e-4, err_msg=key)
  assert _max_rel_diff((one[2].g_batch_stats, one[2].d_batch_stats),
                       (eight[2].g_batch_stats, eight[2].d_batch_stats)) < 1e-4
  # The BatchNorm statistics moved (train mode) and the EMA follows ema_k = d * ema_{k-1} + (1 - d) * params_k
  # with the warm-up decay d = min(0.999, (1 + k - 1) / (10 + k - 1)) of the shapes configs.
  assert _max_rel_diff(one[0].g_batch_stats, one[1].g_batch_stats) > 0
  for k in (1, 2):
    d = float(ema_decay_at(np.int32(k - 1), 0.999))
    expected = jax.tree.map(lambda e, p: d * e + (1 - d) * p, one[k - 1].ema_params, one[k].g_params)
    assert _max_rel_diff(expected, one[k].ema_params) < 1e-6


def test_g_step_through_the_saved_vjp_equals_value_and_grad_of_the_whole_g_loss(tmp_path, fast_compile):
  """g_step pulls the G loss's cotangent w.r.t. (images, mu, logvar) back through the VJP of d_step's generator
  forward. That must be the update of the direct formulation: jax.value_and_grad of the whole G loss w.r.t.
  g_params through a second generator forward (same noise, parameters and BatchNorm statistics)."""
  _, trainer, loader = _tiny_trainer(tmp_path)
  batch = parallel.global_batch(next(loader), parallel.create_mesh(devices=jax.devices()[:1]))  # numeric fields
  damsm_vars, init = trainer.damsm.variables, jax.device_get(_initial_state(trainer))
  state, _, forward = jax.jit(trainer.d_step)(init, damsm_vars, batch)
  new, metrics = jax.jit(trainer.g_step)(state, damsm_vars, batch, forward)

  @jax.jit
  def direct(state):
    def loss_fn(g_params):
      words, sent, mask = trainer._text(damsm_vars, batch)
      images, mu, logvar, g_stats = trainer._generate(g_params, state.g_batch_stats, state, words, sent, mask)
      loss, (_, d_stats) = trainer.generator_loss(state, damsm_vars, batch, images, mu, logvar, words, sent)
      return loss, (g_stats, d_stats)
    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.g_params)
    return loss, stats, grads, optax.global_norm(grads)

  loss, (g_stats, d_stats), grads, grad_norm = jax.device_get(direct(state))
  adam = jax.device_get(new.g_opt_state[0])
  assert int(adam.count) == 1
  # Adam's first moment after one update is (1 - b1) * gradient: the gradient g_step applied.
  applied = jax.tree.map(lambda m: m / (1 - trainer.config.optimizer.b1), adam.mu)
  worst = {"gradient": _max_rel_diff(grads, applied), "g_batch_stats": _max_rel_diff(g_stats, new.g_batch_stats),
           "d_batch_stats": _max_rel_diff(d_stats, new.d_batch_stats)}
  print(f"saved VJP vs value_and_grad: max relative differences {worst}, g_loss {float(metrics['g_loss'])} vs "
        f"{float(loss)}")
  # float32 rounding only (measured: gradient 7e-6, statistics <= 6e-7): the two differ in summation order.
  assert worst["gradient"] < 5e-5 and worst["g_batch_stats"] < 1e-5 and worst["d_batch_stats"] < 1e-5, worst
  np.testing.assert_allclose(metrics["g_loss"], loss, rtol=1e-6)
  np.testing.assert_allclose(metrics["g_grad_norm"], grad_norm, rtol=1e-5)
  assert float(grad_norm) > 0


def _start(workdir, steps, cache):
  env = dict(os.environ, GAN_PROC_CACHE_DIR=str(cache))
  return subprocess.Popen([sys.executable, PROC, str(workdir), str(steps), "--checkpoint-every", "1"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def _checkpoint_state(trainer, workdir, step):
  from t2i_common.checkpoint import Checkpointer
  abstract = jax.eval_shape(trainer.init_state, jax.random.key(0))
  target = parallel.abstract_with_shardings(abstract, parallel.param_shardings(abstract, parallel.create_mesh(None)))
  checkpointer = Checkpointer(str(workdir))
  state, _ = checkpointer.restore(target, step)
  checkpointer.close()
  return jax.device_get(state)


def test_sigkill_then_resume_is_bit_identical(tiny_run, fast_compile, tmp_path):
  """Killed after step 2 (checkpoint of step 1 complete), resumed to step 3: the whole state (G, Ds, both Adam
  states, EMA, BatchNorm statistics, step, key) equals the uninterrupted 3-step run of `tiny_run`, bit for bit."""
  from t2i_common.checkpoint import Checkpointer
  config, reference_dir, _ = tiny_run
  workdir = tmp_path / "interrupted"
  proc = _start(workdir, 3, fast_compile)
  lines = []
  for line in proc.stdout:
    lines.append(line.rstrip())
    if line.startswith("STEP 2"):
      proc.send_signal(signal.SIGKILL)
      break
  proc.communicate(timeout=300)
  assert proc.returncode == -signal.SIGKILL, "\n".join(lines[-30:])
  assert Checkpointer(str(workdir)).latest_step() in (1, 2)  # step 2's save may have started before the kill
  proc = _start(workdir, 3, fast_compile)
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == 0 and "DONE" in out, out[-3000:]
  steps = [int(l.split()[1]) for l in out.splitlines() if l.startswith("STEP ")]
  assert steps[-1] == 3 and steps[0] in (2, 3)  # resumed, not restarted
  _, trainer, _ = _tiny_trainer(tmp_path)
  resumed, reference = _checkpoint_state(trainer, workdir, 3), _checkpoint_state(trainer, reference_dir, 3)
  leaves = jax.tree_util.tree_flatten_with_path(reference)[0]
  assert len(leaves) > 50
  for (path, a), b in zip(leaves, jax.tree.leaves(resumed), strict=True):
    if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
      a, b = jax.random.key_data(a), jax.random.key_data(b)
    np.testing.assert_array_equal(np.asarray(b), np.asarray(a), err_msg=jax.tree_util.keystr(path))


def test_bad_input_is_named(tiny_run, tmp_path):
  config, workdir, _ = tiny_run
  # A caption of unknown words only.
  with pytest.raises(SystemExit, match="has no word in the vocabulary"):
    sample.main(["--workdir", workdir, "--caption", "zebra xylophone", "--out", str(tmp_path / "s")])
  with pytest.raises(SystemExit, match="no captions"):
    sample.main(["--workdir", workdir, "--out", str(tmp_path / "s")])
  # A caption longer than words_num: an in-order random subset of words_num words, drawn from the seed.
  _, trainer, _ = _tiny_trainer(tmp_path)
  from attngan_jax.gan.sampling import Sampler
  sampler = Sampler(trainer.generator, {}, trainer.damsm, trainer.words_num)
  caption = " ".join(["a small red circle above a large blue square"] * 3)  # 27 known words
  ids = trainer.damsm.vocab.encode(caption.split())[0]
  subsets = [sampler.encode_captions([caption], seed=s) for s in (0, 1)]
  for enc in subsets:
    assert enc["length"][0] == trainer.words_num == 18
    kept, it = list(enc["tokens"][0]), iter(ids)
    assert all(any(k == w for w in it) for k in kept)  # a subsequence of the caption, in order
  assert not np.array_equal(subsets[0]["tokens"], subsets[1]["tokens"])
  # Configs that cannot work say what to change.
  with pytest.raises(ValueError, match=r"image_sizes=\(16, 64\) must be the generator's stage sizes \(16, 32\)"):
    _tiny_trainer(tmp_path, ["data.image_sizes=(16, 64)"])
  with pytest.raises(ValueError, match="no DAMSM given"):
    _tiny_trainer(tmp_path, ["damsm.random_init=false"])
  with pytest.raises(ValueError, match="loss.r1_every=0 >= 1"):
    _tiny_trainer(tmp_path, ["loss.r1_gamma=0.1", "loss.r1_every=0"])
  with pytest.raises(ValueError, match=r"loss.d_input_noise=-0.1 \(the std .*\) and loss.d_input_noise_steps=0 "
                     r"\(0: constant\) must be >= 0"):
    _tiny_trainer(tmp_path, ["loss.d_input_noise=-0.1"])
  damsm_dir = os.path.join(workdir, "damsm")  # the run's exported (random, 16-d) DAMSM
  with pytest.raises(ValueError, match="16-d features but model.embedding_dim=32: set model.embedding_dim=16"):
    _tiny_trainer(tmp_path, ["damsm.random_init=false", "model.embedding_dim=32",
                             f"damsm.text_encoder={damsm_dir}/text_encoder",
                             f"damsm.image_encoder={damsm_dir}/image_encoder"])
  with pytest.raises(FileNotFoundError, match="run python -m attngan_jax.pretrain_damsm with that workdir"):
    _tiny_trainer(tmp_path, ["damsm.random_init=false", f"damsm.workdir={tmp_path}"])
  # A generator of another config than config.model (a converted netG, read with config.model, as evaluate
  # --generator does for reference generators).
  converted = tmp_path / "converted_generator"
  converted.mkdir()
  saved = json.load(open(os.path.join(workdir, "generator", "config.json")))
  json.dump({k: v for k, v in saved.items() if k not in ("damsm", "step", "words_num", "reference_mask_bug")},
            open(converted / "config.json", "w"))
  os.link(os.path.join(workdir, "generator", "variables.safetensors"), converted / "variables.safetensors")
  other = load_config(CONFIG + ":tiny", ["model.gf_dim=8"])
  with pytest.raises(ValueError, match="gf_dim: file 4, config 8"):
    evaluate(other, workdir, generator=str(converted))


@pytest.mark.parametrize("name, batch, lam, dims, words", [
    ("birds", 20, 5.0, (32, 64, 2), 18),
    ("coco", 14, 50.0, (48, 96, 3), 12),
])
def test_reference_configs(name, batch, lam, dims, words):
  """attngan_birds / attngan_coco carry the reference ymls' values (REFERENCE.md table)."""
  config = load_config(os.path.join(os.path.dirname(CONFIG), f"attngan_{name}.py"))
  m = config.model
  assert (config.train.batch_size, config.loss.damsm_lambda, (m.gf_dim, m.df_dim, m.r_num), m.words_num) == (
      batch, lam, dims, words)
  assert (m.branch_num, m.base_size, m.z_dim, m.condition_dim, m.embedding_dim) == (3, 64, 100, 100, 256)
  assert tuple(config.data.image_sizes) == (64, 128, 256)
  assert (config.loss.damsm.gamma1, config.loss.damsm.gamma2, config.loss.damsm.gamma3) == (4.0, 5.0, 10.0)
  o = config.optimizer
  assert (o.g_lr, o.d_lr, o.b1, o.b2) == (2e-4, 2e-4, 0.5, 0.999)
  assert config.train.ema_decay == 0.999 and not config.train.ema_warmup and config.eval.num_images == 30_000


class _FakeInception:
  """Stands in for t2i_common.metrics' InceptionExtractor (same call: uint8 batch -> features): fixed random
  projections of the pixels, so the test checks evaluate's plumbing, not an Inception."""

  def __init__(self, output, dim):
    self.output, self.backend = output, f"fake-{output}"
    self.weights = np.random.default_rng(dim).normal(size=(32 * 32 * 3, dim)) / 300.0

  def __call__(self, images):
    x = np.asarray(images, np.float64).reshape(len(images), -1) / 255.0
    return (x @ self.weights).astype(np.float32)


def test_evaluate_inception_score_and_fid_wiring(tiny_run, monkeypatch):
  from t2i_common.metrics import features
  made = []

  def from_converted(path, output, **kwargs):
    made.append((path, output))
    return _FakeInception(output, 10 if output == "class_scores" else 6)

  monkeypatch.setattr(features.InceptionExtractor, "from_converted", staticmethod(from_converted))
  config, workdir, _ = tiny_run
  config = load_config(CONFIG + ":tiny", ["eval.inception_score.weights=IS_WEIGHTS", "eval.fid.weights=FID_WEIGHTS",
                                          "eval.inception_score.splits=4"])
  scored = evaluate(config, workdir)
  assert made == [("IS_WEIGHTS", "class_scores"), ("FID_WEIGHTS", "pool")]
  inception, fid = scored["inception_score"], scored["fid"]
  assert inception["num_images"] == 24 and inception["splits"] == 4 and inception["inception_score"] >= 1.0
  assert fid["num_images"] == 24 and fid["num_real_images"] == 16 and fid["fid"] >= 0 and fid["backend"] == "fake-pool"
  assert os.path.isfile(fid["real_statistics"])  # cached per dataset, resolution and backend
  assert any(line.startswith("FID ") and "24 images vs 16 real" in line for line in scored["summary"])
  records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert any("test/fid" in r and "test/inception_score" in r for r in records)


def test_evaluate_with_a_judge_damsm(tiny_run, tmp_path):
  """eval.judge_damsm: R-precision by another DAMSM on the same images and captions; judged by the DAMSM the
  generator was trained with (a pretrain_damsm-style workdir holding its exported encoders) it is the same."""
  config, workdir, result = tiny_run
  _, _, saved = load_exported_generator(result["generator"])
  export = tmp_path / "judge" / "damsm"
  export.mkdir(parents=True)
  for part in ("text_encoder", "image_encoder"):
    os.symlink(saved["damsm"][part], export / part)
  config = load_config(CONFIG + ":tiny", [f"eval.judge_damsm={tmp_path / 'judge'}"])
  scored = evaluate(config, workdir)
  judge = scored["judge"]
  assert judge["num_images"] == 24 and judge["num_folds"] == 2 and judge["num_mismatch"] == scored["num_mismatch"]
  assert judge["folds"] == scored["folds"] and judge["r_precision"] == scored["r_precision"]
  assert any(line.endswith(f"judged by the DAMSM of {tmp_path / 'judge'}") for line in scored["summary"])
  records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert any(r.get("test/judge_r_precision") == scored["r_precision"] for r in records)
  with pytest.raises(FileNotFoundError, match="has no exported encoders"):
    evaluate(load_config(CONFIG + ":tiny", [f"eval.judge_damsm={tmp_path}"]), workdir)


def test_evaluate_judge_of_other_weights(tiny_run, tmp_path, monkeypatch):
  """A judge with weights of its own: its vectors of the generated images are its encoder's, not those of the
  DAMSM the generator was trained with (which the same-weights test above could not tell apart)."""
  from attngan_jax.gan import evaluation
  from attngan_jax.gan.damsm import FrozenDAMSM
  config, workdir, result = tiny_run
  _, _, saved = load_exported_generator(result["generator"])
  own = FrozenDAMSM.from_dirs(saved["damsm"]["text_encoder"], saved["damsm"]["image_encoder"])
  other = FrozenDAMSM.random(own.vocab, own.embedding_dim, config.damsm.random, seed=7)
  other.export(str(tmp_path / "judge" / "damsm"))
  calls = []
  image_vectors = evaluation._image_vectors

  def spy(sampler, damsm, damsm_vars, images):
    out = image_vectors(sampler, damsm, damsm_vars, images)
    calls.append((damsm.source, np.asarray(images), np.asarray(out)))
    return out

  monkeypatch.setattr(evaluation, "_image_vectors", spy)
  scored = evaluate(load_config(CONFIG + ":tiny", [f"eval.judge_damsm={tmp_path / 'judge'}"]), workdir)
  judged = [(images, out) for source, images, out in calls if str(tmp_path / "judge") in source]
  assert judged and len(judged) == len(calls) // 2 and str(tmp_path / "judge") in scored["judge"]["damsm"]
  for images, out in judged:
    np.testing.assert_allclose(out, np.asarray(other.encode_image(other.variables, images)[1]), atol=1e-5)
    assert not np.allclose(out, np.asarray(own.encode_image(own.variables, images)[1]), atol=1e-3)


def test_sample_from_reference_generator_file(tiny_run, tmp_path, capsys):
  """sample --generator with a reference netG_*.pth (the reference G_NET's state dict) or its convert_torch
  directory, and a converted text encoder: both give the same images; the reference mask is the default."""
  torch = pytest.importorskip("torch", reason="writes a reference netG file with PyTorch")
  from attngan_jax import convert_torch
  from helpers.attngan_torch import G_NET, TorchGanConfig
  _, workdir, _ = tiny_run
  torch.manual_seed(0)
  net = G_NET(TorchGanConfig(gf_dim=4, r_num=1, branch_num=2, z_dim=8, condition_dim=8, embedding_dim=16))
  pth = tmp_path / "netG_epoch_1.pth"
  torch.save(net.state_dict(), pth)
  converted = tmp_path / "netG_converted"
  convert_torch.main(["--kind", "generator", "--src", str(pth), "--out", str(converted)])
  text_encoder = os.path.join(workdir, "damsm", "text_encoder")
  images = []
  for source in (pth, converted):
    out = tmp_path / f"out_{source.name}"
    paths = sample.run(sample.build_parser().parse_args(
        ["--generator", str(source), "--text_encoder", text_encoder, "--caption", "a red circle and a blue square",
         "--seeds", "3", "--out", str(out)]))
    assert "reference mask on" in capsys.readouterr().out
    assert sorted(os.listdir(paths["images"])) == ["00_a_red_circle_and_a_blue_square_3_128px.png",
                                                   "00_a_red_circle_and_a_blue_square_3_64px.png"]
    assert os.path.isfile(paths["attention"]) and os.path.isfile(paths["grid"])
    images.append(np.asarray(Image.open(os.path.join(paths["images"], sorted(os.listdir(paths["images"]))[0]))))
  np.testing.assert_array_equal(images[0], images[1])
  with pytest.raises(SystemExit, match="needs --text_encoder"):
    sample.main(["--generator", str(pth), "--caption", "a red circle", "--out", str(tmp_path / "x")])


def test_compare_runs_side_by_side(tiny_run, tmp_path, capsys):
  """attngan_jax.compare: one column per run on the same captions and seeds, and the runs' scores as a table."""
  from attngan_jax import compare
  config, workdir, _ = tiny_run
  if not os.path.isfile(os.path.join(workdir, "eval", "attngan.json")):  # the end-to-end test may run elsewhere
    evaluate(config, workdir)
  out = str(tmp_path / "compare.png")
  compare.main(["--workdir", workdir, "--workdir", workdir, "--labels", "first,second", "--caption", "a red circle",
                "--caption", "a blue square", "--seeds", "0,1", "--scores", "--out", out])
  grid = np.asarray(Image.open(out))
  # 4 rows (2 captions x 2 seeds) x 2 columns of 32 px images, enlarged to >= 96 px for the captions.
  assert grid.shape[1] < 3 * 110 and grid.shape[0] > 4 * 96
  # The same run in both columns: identical halves (same noise per seed).
  left, right = grid[2:98, 2:98], grid[2:98, 100:196]
  np.testing.assert_array_equal(left, right)
  printed = capsys.readouterr().out
  scores = json.load(open(os.path.join(workdir, "eval", "attngan.json")))
  row = (f"| first | 24 | {100 * scores['r_precision']:.1f} +- {100 * scores['r_precision_std']:.1f} % | "
         f"{100 * scores['oracle']['object_recall']:.1f} % | {100 * scores['oracle']['all_present']:.1f} % | "
         f"{100 * scores['oracle']['object_recall/held_out']:.1f} % |")
  assert row in printed and "| second | 24 |" in printed, printed
  with pytest.raises(SystemExit, match="gives 1 label"):
    compare.main(["--workdir", workdir, "--workdir", workdir, "--labels", "one", "--caption", "a red circle",
                  "--out", out])
  with pytest.raises(SystemExit, match="run python -m attngan_jax.evaluate"):
    compare.main(["--workdir", str(tmp_path), "--caption", "a red circle", "--scores", "--out", out])


def test_r1_penalty_is_that_of_the_input_gradient_and_lazy_in_the_loop(tmp_path, fast_compile):
  """loss.r1_gamma: d_step(r1=True) adds, per discriminator and logit head, r1_every x gamma / 2 x the batch mean
  of |d logit / d real image|^2; the gradient is the true one (central differences along a random direction, in
  float64), and the train loop adds the penalty on every r1_every-th iteration only."""
  from attngan_jax.gan import trainer as trainer_lib
  config, trainer, loader = _tiny_trainer(tmp_path, ["loss.r1_gamma=0.5", "loss.r1_every=2"])
  batch = parallel.global_batch(next(loader), parallel.create_mesh(devices=jax.devices()[:1]))
  damsm_vars, init = trainer.damsm.variables, jax.device_get(_initial_state(trainer))
  _, plain, _ = jax.jit(trainer.d_step)(init, damsm_vars, batch)
  _, with_r1, _ = jax.jit(lambda s, v, b: trainer.d_step(s, v, b, r1=True))(init, damsm_vars, batch)
  assert "d/r1" not in plain and float(with_r1["d/r1"]) > 0
  np.testing.assert_allclose(with_r1["d_loss"] - plain["d_loss"], with_r1["d/r1"], rtol=1e-4)

  sent = trainer._text(damsm_vars, batch)[1]
  reals = trainer_lib.real_images(batch, trainer.sizes)
  expected = 0.0
  with jax.enable_x64(True):
    for i, d in enumerate(trainer.discriminators):
      key = trainer_lib.stage_key(i)
      params, stats = (jax.tree.map(lambda a: np.asarray(a, np.float64), tree)
                       for tree in (init.d_params[key], init.d_batch_stats[key]))
      real, s = np.asarray(reals[i], np.float64), np.asarray(sent, np.float64)
      grads = trainer._real_logit_grads(d, params, stats, real, s)
      expected += 0.5 * 0.5 * 2 * sum(float(np.mean(np.sum(np.square(g), axis=(1, 2, 3)))) for g in grads)
      direction = np.random.default_rng(i).normal(size=real.shape)

      def logit_sums(x):
        (u, c), _ = d.apply({"params": params, "batch_stats": stats}, x, s, method=trainer_lib._g_stage_logits,
                            mutable=["batch_stats"])
        return np.array([float(u.sum()), float(c.sum())])

      eps = 1e-5
      numeric = (logit_sums(real + eps * direction) - logit_sums(real - eps * direction)) / (2 * eps)
      analytic = [float(np.sum(g * direction)) for g in grads]
      np.testing.assert_allclose(analytic, numeric, rtol=1e-5, err_msg=f"stage {i}")
  np.testing.assert_allclose(float(with_r1["d/r1"]), expected, rtol=1e-4)

  loop = trainer_lib.GANTrainLoop(config, str(tmp_path / "run"), trainer, loader=loader,
                                  mesh=parallel.create_mesh(None), hooks=[])
  loop.run()
  records = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
  assert [r["step"] for r in records if "d/r1" in r] == [1, 3]  # iterations 0 and 2 of 3
  assert [r["step"] for r in records if "d_loss" in r] == [1, 2, 3]


def test_instance_noise_is_what_the_discriminators_see(tmp_path, fast_compile, monkeypatch):
  """loss.d_input_noise: every image a discriminator sees in d_step and g_step (real and generated, every stage)
  is the image plus Gaussian noise of that std, drawn afresh for each; with loss.d_input_noise_steps = N the std
  falls linearly to 0 at iteration N; 0 (the default) passes the images as they are."""
  from attngan_jax.gan import trainer as trainer_lib
  seen = []  # (kind, image as the discriminator got it)
  d_stage_loss, g_stage_logits = trainer_lib._d_stage_loss, trainer_lib._g_stage_logits

  def record(kind, image):  # the values, also from inside jax.grad
    jax.debug.callback(lambda x: seen.append((kind, np.asarray(x))), image, ordered=True)

  def spy_d(d, real, fake, sent):
    record("real", real)
    record("fake", fake)
    return d_stage_loss(d, real, fake, sent)

  def spy_g(d, fake, sent):
    record("g_fake", fake)
    return g_stage_logits(d, fake, sent)

  monkeypatch.setattr(trainer_lib, "_d_stage_loss", spy_d)
  monkeypatch.setattr(trainer_lib, "_g_stage_logits", spy_g)
  # (noise, noise steps) -> [(iteration, the std expected there)]
  cases = {(0.0, 0): [(0, 0.0)], (0.2, 0): [(0, 0.2), (50, 0.2)], (0.2, 8): [(0, 0.2), (2, 0.15), (8, 0.0)]}
  for (sigma, noise_steps), at in cases.items():
    _, trainer, loader = _tiny_trainer(tmp_path, [f"loss.d_input_noise={sigma}",
                                                  f"loss.d_input_noise_steps={noise_steps}"])
    batch = parallel.global_batch(next(loader), parallel.create_mesh(devices=jax.devices()[:1]))
    init, damsm_vars = jax.device_get(_initial_state(trainer)), trainer.damsm.variables
    d_step, g_step = jax.jit(trainer.d_step), jax.jit(trainer.g_step)
    for step, expected in at:
      seen.clear()
      state = init.replace(step=np.asarray(step, np.int32))
      _, _, forward = d_step(state, damsm_vars, batch)
      jax.block_until_ready(g_step(state, damsm_vars, batch, forward))
      jax.effects_barrier()
      reals = trainer_lib.real_images(batch, trainer.sizes)
      clean = {"real": reals, "fake": forward.images, "g_fake": forward.images}
      counts = {"real": 0, "fake": 0, "g_fake": 0}
      noises = []
      for kind, image in seen:
        stage = counts[kind]
        counts[kind] += 1
        noise = np.asarray(image, np.float64) - np.asarray(clean[kind][stage], np.float64)
        case = (sigma, noise_steps, step, kind, stage)
        if expected == 0:
          assert not noise.any(), f"{case}: the image changed where no noise is due"
          continue
        assert abs(noise.std() / expected - 1) < 0.05 and abs(noise.mean()) < 0.05 * expected, case
        noises.append(noise.ravel())
      assert counts == {"real": len(trainer.sizes), "fake": len(trainer.sizes), "g_fake": len(trainer.sizes)}
      if noises:  # fresh noise for every image: the draws are uncorrelated
        same_size = [n for n in noises if n.size == noises[0].size]
        corr = np.corrcoef(np.stack(same_size))
        assert np.max(np.abs(corr - np.eye(len(same_size)))) < 0.1
