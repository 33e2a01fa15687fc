"""The grain loader on the shapes source: batch format, seeded determinism, epochs, resumable state, sharding,
the image pyramid, text_transform, and the padded evaluation pass."""
import json

import numpy as np
import pytest

from t2i_common.data.config import data_config
from t2i_common.data.loader import iterate_eval, make_loader, make_source
from t2i_common.data.records import BadRecordError

SINGLE = dict(process_index=0, process_count=1)


def _config(num_train=24, num_test=10, image_sizes=(32,), **kw):
  config = data_config("shapes", image_sizes=image_sizes, **kw)
  config.shapes.num_train, config.shapes.num_test = num_train, num_test
  return config


def _take(loader, n):
  return [next(loader) for _ in range(n)]


def _same(a, b):
  return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_batch_format_and_caption_choice():
  config = _config()
  source = make_source(config, "train")

  def tokens(caption, rng):
    return {"tokens": np.array([len(caption), rng.integers(1000)], np.int32), "length": np.int32(2)}

  batch = next(make_loader(config, "train", global_batch_size=8, seed=0, text_transform=tokens, **SINGLE))
  assert batch["image"].shape == (8, 32, 32, 3) and batch["image"].dtype == np.float32
  assert -1.0 <= batch["image"].min() < batch["image"].max() <= 1.0
  assert batch["tokens"].shape == (8, 2) and batch["length"].shape == (8,)
  assert batch["caption"].dtype == object and batch["index"].dtype == np.int64
  for i, index in enumerate(batch["index"]):
    record = source[int(index)]
    assert batch["caption"][i] == record["captions"][batch["caption_index"][i]]
    assert batch["class_id"][i] == record["class_id"] and batch["tokens"][i, 0] == len(batch["caption"][i])
    # Shapes are not augmented by default: the image is the rendered record, scaled to [-1, 1].
    np.testing.assert_allclose(batch["image"][i], record["image"] / 127.5 - 1, atol=1e-6)
  assert len(set(batch["caption_index"].tolist())) > 1  # captions are drawn, not always the first


def test_batches_without_images_match_the_full_ones():
  """with_images=False (an LDM on cached latents): the same examples, captions and text outputs, no images; the
  shapes source then skips rendering (text_record is the rendered record minus its image)."""
  config = _config()
  source = make_source(config, "train")
  record = source[3]
  assert source.text_record(3) == {k: v for k, v in record.items() if k != "image"}
  tokens = lambda caption, rng: {"tokens": np.array([len(caption)], np.int32)}
  full = _take(make_loader(config, "train", global_batch_size=8, seed=0, text_transform=tokens, **SINGLE), 4)
  text = _take(make_loader(config, "train", global_batch_size=8, seed=0, text_transform=tokens, with_images=False,
                           **SINGLE), 4)
  for a, b in zip(full, text):
    assert "image" not in b
    assert _same({k: v for k, v in a.items() if k != "image"}, b)


def test_seeded_determinism_and_epochs():
  config = _config(random_flip=True)
  run = lambda seed: _take(make_loader(config, "train", global_batch_size=6, seed=seed, **SINGLE), 8)
  first, again, other = run(5), run(5), run(6)
  assert all(_same(a, b) for a, b in zip(first, again))
  assert not np.array_equal(first[0]["index"], other[0]["index"])
  # 24 examples / 6 per batch: batches 0-3 are epoch 0 and 4-7 epoch 1, each a permutation, in new orders.
  epoch0 = np.concatenate([b["index"] for b in first[:4]])
  epoch1 = np.concatenate([b["index"] for b in first[4:]])
  assert sorted(epoch0) == sorted(epoch1) == list(range(24)) and not np.array_equal(epoch0, epoch1)
  # The per-example draws change with the epoch too (caption choice, flip).
  caption0 = dict(zip(epoch0, np.concatenate([b["caption_index"] for b in first[:4]])))
  caption1 = dict(zip(epoch1, np.concatenate([b["caption_index"] for b in first[4:]])))
  assert any(caption0[i] != caption1[i] for i in range(24))
  unshuffled = make_loader(config, "train", global_batch_size=6, seed=5, shuffle=False, num_epochs=1, **SINGLE)
  assert np.concatenate([b["index"] for b in unshuffled]).tolist() == list(range(24))


def test_state_restores_the_exact_next_batch():
  config = _config(image_sizes=(16, 32), random_crop=True, random_flip=True)
  loader = make_loader(config, "train", global_batch_size=5, seed=3, **SINGLE)
  _take(loader, 3)
  state = json.loads(json.dumps(loader.get_state()))  # must survive a JSON checkpoint
  expected = _take(loader, 4)  # crosses the epoch boundary at 24 examples
  resumed = make_loader(config, "train", global_batch_size=5, seed=3, **SINGLE)
  resumed.set_state(state)
  assert all(_same(a, b) for a, b in zip(expected, _take(resumed, 4)))
  assert expected[0]["image_16"].shape == (5, 16, 16, 3) and expected[0]["image_32"].shape == (5, 32, 32, 3)
  with pytest.raises(ValueError, match="get_state"):
    resumed.set_state({"next_index": 3})


def test_pyramid_levels_show_the_same_crop():
  config = _config(image_sizes=(16, 32, 64), random_crop=True, random_flip=True)
  batch = next(make_loader(config, "train", global_batch_size=4, seed=0, **SINGLE))
  big, mid, small = batch["image_64"], batch["image_32"], batch["image_16"]
  down = lambda x, f: x.reshape(x.shape[0], x.shape[1] // f, f, x.shape[2] // f, f, 3).mean((2, 4))
  assert np.abs(down(big, 2) - mid).mean() < 0.05 and np.abs(down(big, 4) - small).mean() < 0.05


def test_process_shards_are_disjoint():
  config = _config(num_train=25)
  shards = [np.concatenate([b["index"] for b in make_loader(
      config, "train", global_batch_size=4, seed=1, num_epochs=1, process_index=p, process_count=2)])
            for p in range(2)]
  assert all(len(s) == 12 for s in shards)  # 25 // 2 each; batch 2 per process
  assert not set(shards[0]) & set(shards[1]) and set(shards[0]) | set(shards[1]) <= set(range(25))
  with pytest.raises(ValueError, match="multiple of the process count"):
    make_loader(config, "train", global_batch_size=5, seed=1, process_index=0, process_count=2)


def test_iterate_eval_pads_and_masks_for_every_process():
  config = _config()
  passes = [list(iterate_eval(config, "test", 4, process_index=p, process_count=2)) for p in range(2)]
  assert [len(p) for p in passes] == [3, 3]  # ceil(10 / 4) global batches on each process
  real, padded = [], 0
  for k in range(3):
    for p in range(2):
      batch = passes[p][k]
      assert batch["image"].shape == (2, 32, 32, 3) and batch["mask"].dtype == bool
      real += batch["index"][batch["mask"]].tolist()
      padded += int((~batch["mask"]).sum())
  assert real == list(range(10)) and padded == 2  # global batch k holds examples 4k..4k+3, in order
  again = list(iterate_eval(config, "test", 4, process_index=0, process_count=2))
  assert all(_same(a, b) for a, b in zip(passes[0], again))


def test_data_config_rejects_bad_fields():
  with pytest.raises(ValueError, match="no field 'image_size'"):
    data_config("shapes", image_size=(64,))
  with pytest.raises(ValueError, match="ascending"):
    data_config("cub", image_sizes=(256, 64))
  with pytest.raises(ValueError, match="on_bad_record"):
    data_config("coco", on_bad_record="ignore")
  with pytest.raises(ValueError, match="data_dir"):
    data_config("folder")
  with pytest.raises(ValueError, match="unknown dataset name"):
    data_config("imagenet")
  config = data_config("cub", image_sizes=[64, 128, 256])
  assert config.image_sizes == (64, 128, 256) and config.random_crop and config.cub.bbox_crop


def test_damsm_text_transform_plugs_in():
  text = pytest.importorskip("attngan_jax.text", reason="needs the DAMSM tokenizer")
  config = _config(num_train=8)
  words = sorted({w for i in range(8) for c in make_source(config, "train")[i]["captions"]
                  for w in text.tokenize(c)})
  transform = text.TextTransform(text.Vocabulary(["<end>"] + words), words_num=6)
  batch = next(make_loader(config, "train", global_batch_size=4, seed=0, text_transform=transform, **SINGLE))
  assert batch["tokens"].shape == (4, 6) and batch["tokens"].dtype == np.int32
  assert (batch["length"] >= 1).all() and (batch["length"] <= 6).all()
  # A caption the vocabulary cannot encode is a bad record naming the example, not a crash deep in grain.
  strict = text.TextTransform(text.Vocabulary(["<end>", "zebra"]), words_num=6)
  with pytest.raises(BadRecordError, match="text_transform rejected caption"):
    next(make_loader(config, "train", global_batch_size=4, seed=0, text_transform=strict, **SINGLE))

