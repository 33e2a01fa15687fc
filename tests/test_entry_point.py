"""The config + workdir commands on t2i_common.entry_point: each defines its flags (its own ones too) and hands
the parsed --config and --workdir to its main; a typo in a --config override fails with the key and a suggestion
before anything runs or is written. Every command is stopped by a missing input early, so none trains."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ATTNGAN, DAMSM = "configs/attngan/attngan_shapes.py:tiny", "configs/attngan/damsm_shapes.py:tiny"
LDM = "configs/diffusion/shapes_ldm.py:tiny"
# (command, config, arguments after --workdir W ("{tmp}": the test's folder), what its main's error says)
COMMANDS = [
    ("attngan_jax.train", ATTNGAN, ["--config.damsm.workdir={tmp}/none"], "damsm.workdir='{tmp}/none' has no"),
    ("attngan_jax.evaluate", ATTNGAN, ["--generator", "{tmp}/netG.pth", "--num_images", "4"],
     "weight file '{tmp}/netG.pth' does not exist"),
    ("attngan_jax.pretrain_damsm", DAMSM, ["--config.model.text_encoder.vocab_file={tmp}/v.json"],
     "vocabulary file '{tmp}/v.json' does not exist"),
    ("attngan_jax.evaluate_damsm", DAMSM, ["--split", "train"], "'{tmp}/run' has neither exported encoders"),
    ("diffusion_jax.train", LDM, ["--config.model.kind=gan"], "config.model.kind='gan'; expected one of"),
    ("diffusion_jax.evaluate", LDM, ["--restore_from", "0,200"], "'{tmp}/run/pipeline' is not a pipeline folder"),
]


def _run(module, *argv):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", module, *argv], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=120)


@pytest.mark.parametrize("module,config,argv,message", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_command_reaches_its_main_with_the_flags(module, config, argv, message, tmp_path):
  done = _run(module, "--config", config, "--workdir", str(tmp_path / "run"),
              *[a.format(tmp=tmp_path) for a in argv])
  assert done.returncode == 1 and message.format(tmp=tmp_path) in done.stderr, done.stderr[-3000:]


def test_config_typo_fails_naming_the_key(tmp_path):
  workdir = tmp_path / "run"
  done = _run("attngan_jax.train", "--config", ATTNGAN, "--workdir", str(workdir), "--config.train.batch_sise=8")
  assert done.returncode == 1
  assert "batch_sise" in done.stderr and 'Did you mean "batch_size"' in done.stderr, done.stderr[-2000:]
  assert not workdir.exists()


def test_config_and_workdir_are_required():
  done = _run("diffusion_jax.train", "--config", LDM)
  assert done.returncode == 1
  assert "Flag --workdir must have a value other than None" in done.stderr, done.stderr[-2000:]


def test_help_lists_config_workdir_and_the_commands_own_flags():
  done = _run("attngan_jax.evaluate", "--help")  # absl's --help exits with status 1
  for flag in ("--config: AttnGAN config file (path.py[:variant])", "--workdir: Run folder of attngan_jax.train",
               "--generator:", "--num_images:"):
    assert flag in done.stdout, done.stdout[-3000:]
