"""Damaged or foreign weight files and inconsistent folders: each a clear error naming the file and what was
expected, raised before anything is compiled; pickled code is never run."""
import json
import os
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the bad files are written with PyTorch")
pytest.importorskip("diffusers", reason="tiny SD folders are written with diffusers")
pytest.importorskip("transformers", reason="tiny SD folders are written with transformers")

import diffusion_jax  # noqa: E402
from diffusion_fixtures import to_original_layout, write_single_file, write_tiny_sd  # noqa: E402
from diffusion_jax.model_configs import UnsupportedConfigError  # noqa: E402
from diffusion_jax.tokenizer import CLIPTokenizerFormatError  # noqa: E402
from t2i_common.weights import read_state_dict  # noqa: E402


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
  root = tmp_path_factory.mktemp("bad")
  return {v: write_tiny_sd(str(root), v) for v in ("sd1", "sd2")}


@pytest.fixture(scope="module")
def sd1_file(folders, tmp_path_factory):
  return write_single_file(str(tmp_path_factory.mktemp("file") / "sd1.safetensors"), to_original_layout(folders["sd1"]))


@pytest.fixture
def sd1_copy(folders, tmp_path):
  return shutil.copytree(folders["sd1"], tmp_path / "copy")


def _truncate(path, keep):
  data = open(path, "rb").read()
  with open(path, "wb") as f:
    f.write(data[:keep] if keep > 0 else data[:len(data) + keep])


def test_truncated_safetensors_in_a_folder(sd1_copy):
  weights = sd1_copy / "unet" / "diffusion_pytorch_model.safetensors"
  _truncate(weights, -1000)  # a download cut short
  with pytest.raises(ValueError, match=f"{weights} is truncated: its header describes \\d+ bytes, the file has"):
    diffusion_jax.from_pretrained(str(sd1_copy))
  _truncate(weights, 5)  # not even the header length
  with pytest.raises(ValueError, match=f"{weights} is not a .safetensors file .*5 bytes"):
    read_state_dict(str(weights))
  weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00" + b"not json at all!")
  with pytest.raises(ValueError, match="its header is not valid JSON"):
    read_state_dict(str(weights))


def test_truncated_single_file(folders, sd1_file, tmp_path):
  path = str(shutil.copy(sd1_file, tmp_path / "cut.safetensors"))
  _truncate(path, -1)
  with pytest.raises(ValueError, match=f"{path} is truncated"):
    diffusion_jax.from_single_file(path, config=folders["sd1"])


def test_pickles_that_are_not_state_dicts(sd1_copy, tmp_path):
  text = sd1_copy / "text_encoder"
  os.remove(text / "model.safetensors")
  torch.save(torch.nn.Linear(2, 2), text / "pytorch_model.bin")  # the model object instead of its state dict
  with pytest.raises(ValueError, match=r"pytorch_model.bin holds a pickled torch.nn.modules.linear.Linear object, "
                     r"not a state dict; it was not loaded .*Save model.state_dict\(\)"):
    diffusion_jax.from_pretrained(str(sd1_copy))
  cases = {"list.ckpt": ([torch.ones(2)], "holds a list, not a state dict"),
           "meta.ckpt": ({"epoch": 3, "global_step": 10}, "holds a mapping without tensors .*'epoch'")}
  for name, (obj, match) in cases.items():
    torch.save(obj, tmp_path / name)
    with pytest.raises(ValueError, match=f"{name} {match}"):
      read_state_dict(str(tmp_path / name))
  (tmp_path / "text.ckpt").write_text("this is a text file")
  with pytest.raises(ValueError, match="text.ckpt is not a PyTorch checkpoint that can be read"):
    read_state_dict(str(tmp_path / "text.ckpt"))
  (tmp_path / "notes.ckpt").write_text("notes")
  with pytest.raises(ValueError, match="notes.ckpt is not a PyTorch checkpoint"):
    diffusion_jax.from_single_file(str(tmp_path / "notes.ckpt"), config=str(sd1_copy))


class _Callback:  # stands for e.g. pytorch_lightning's ModelCheckpoint, pickled into training checkpoints
  def __init__(self):
    self.best_score = 0.5


class _RunsCode:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (open, (self.marker, "w"))  # unpickling this with plain pickle creates the file


def test_training_checkpoint_objects_are_skipped_never_run(tmp_path, caplog):
  marker = tmp_path / "code-ran"
  path = tmp_path / "train.ckpt"
  torch.save({"state_dict": {"w": torch.arange(3.0)}, "callbacks": {"cb": _Callback()},
              "hook": _RunsCode(str(marker))}, path)
  with caplog.at_level("WARNING"):
    state = read_state_dict(str(path))
  np.testing.assert_array_equal(state["w"], [0.0, 1.0, 2.0])
  assert not marker.exists()
  assert "skipped pickled objects" in caplog.text and "_Callback" in caplog.text and "open" in caplog.text


def test_unet_and_text_encoder_disagree_on_cross_attention_dim(folders, sd1_copy, sd1_file):
  shutil.rmtree(sd1_copy / "text_encoder")  # an SD 2-style text encoder (48 wide) beside an SD 1-style UNet (32)
  shutil.copytree(os.path.join(folders["sd2"], "text_encoder"), sd1_copy / "text_encoder")
  match = "the text encoder's hidden_size is 48 but the UNet's cross_attention_dim is 32"
  with pytest.raises(UnsupportedConfigError, match=f"{sd1_copy}: {match}"):
    diffusion_jax.from_pretrained(str(sd1_copy))
  with pytest.raises(UnsupportedConfigError, match=match):
    diffusion_jax.from_single_file(sd1_file, config=str(sd1_copy))


def test_tokenizer_folder_of_neither_layout(sd1_copy):
  tok = sd1_copy / "tokenizer"
  os.remove(tok / "tokenizer.json")
  (tok / "vocab.txt").write_text("[PAD]\n[UNK]\n")  # e.g. a BERT WordPiece vocabulary
  assert json.loads((tok / "tokenizer_config.json").read_text())["tokenizer_class"] == "CLIPTokenizer"
  with pytest.raises(CLIPTokenizerFormatError, match=f"'{tok}' is not a CLIP tokenizer folder: expected vocab.json "
                     r"\+ merges.txt .* or tokenizer.json .*found \['tokenizer_config.json', 'vocab.txt'\]"):
    diffusion_jax.from_pretrained(str(sd1_copy))
