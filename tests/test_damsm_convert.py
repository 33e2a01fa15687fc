"""The DAMSM weight converter's CLI and file format, without PyTorch (state dicts as .safetensors)."""
import pickle

import numpy as np
import pytest
from safetensors.numpy import save_file

from attngan_jax import convert_torch


def text_state_dict(n_words: int, hidden: int = 4, embed: int = 6, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  state = {"encoder.weight": rng.normal(size=(n_words, embed)).astype(np.float32)}
  for suffix in ("", "_reverse"):
    state[f"rnn.weight_ih_l0{suffix}"] = rng.normal(size=(4 * hidden, embed)).astype(np.float32)
    state[f"rnn.weight_hh_l0{suffix}"] = rng.normal(size=(4 * hidden, hidden)).astype(np.float32)
    state[f"rnn.bias_ih_l0{suffix}"] = rng.normal(size=(4 * hidden,)).astype(np.float32)
    state[f"rnn.bias_hh_l0{suffix}"] = rng.normal(size=(4 * hidden,)).astype(np.float32)
  return state


def write_captions_pickle(path, words):
  ixtoword = dict(enumerate(words))
  with open(path, "wb") as f:
    pickle.dump([[[1, 2]], [[2]], ixtoword, {w: i for i, w in ixtoword.items()}], f, protocol=2)


def test_text_encoder_cli_with_reference_vocabulary(tmp_path, capsys):
  words = ["<end>", "a", "bird", "red"]
  state = text_state_dict(len(words))
  src = str(tmp_path / "text_encoder200.safetensors")
  save_file(state, src)
  write_captions_pickle(tmp_path / "captions.pickle", words)
  out = str(tmp_path / "te")
  convert_torch.main(["--kind", "text_encoder", "--src", src, "--out", out,
                      "--captions", str(tmp_path / "captions.pickle")])
  assert '"n_words": 4' in capsys.readouterr().out
  model, variables, vocab = convert_torch.load_text_encoder(out)
  assert vocab.ixtoword == words and model.output_dim == 8 and model.embed_dim == 6
  p = variables["params"]
  np.testing.assert_array_equal(p["encoder"]["embedding"], state["encoder.weight"])
  # PyTorch (4H, in) weights become (in, 4H) kernels with the gate order i, f, g, o kept.
  np.testing.assert_array_equal(p["backward"]["kernel_ih"], state["rnn.weight_ih_l0_reverse"].T)
  np.testing.assert_array_equal(p["forward"]["bias_hh"], state["rnn.bias_hh_l0"])


def test_converter_errors_are_clear(tmp_path):
  state = text_state_dict(5)
  src = str(tmp_path / "te.safetensors")
  save_file(state, src)
  write_captions_pickle(tmp_path / "captions.pickle", ["<end>", "a", "b"])
  with pytest.raises(ValueError, match="has 3 words but the text encoder"):
    convert_torch.convert_file("text_encoder", src, str(tmp_path / "out"), captions=str(tmp_path / "captions.pickle"))
  with pytest.raises(ValueError, match="not a DAMSM image encoder"):
    convert_torch.convert_file("image_encoder", src, str(tmp_path / "out"))
  unidirectional = {k: v for k, v in state.items() if not k.endswith("_reverse")}
  save_file(unidirectional, src)
  with pytest.raises(ValueError, match="not bidirectional"):
    convert_torch.convert_file("text_encoder", src, str(tmp_path / "out"))
  with pytest.raises(FileNotFoundError, match="not a converted model directory"):
    convert_torch.load_text_encoder(str(tmp_path / "missing"))
  save_file(state, src)
  convert_torch.convert_file("text_encoder", src, str(tmp_path / "ok"))
  with pytest.raises(ValueError, match="holds a 'text_encoder', not a 'image_encoder'"):
    convert_torch.load_image_encoder(str(tmp_path / "ok"))
