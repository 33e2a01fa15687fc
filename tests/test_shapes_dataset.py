"""The synthetic shapes source: determinism, resolution independence, true boxes and captions, holdout."""
import itertools
import pickle
import re

import ml_collections
import numpy as np
import pytest

from t2i_common.data import shapes
from t2i_common.data.shapes import (COLORS, SHAPES, SIZES, ShapesSource, class_id_of, num_classes, parse_holdout,
                                    shapes_config)
from t2i_common.data.shapes_captions import parse_caption
from t2i_common.data.shapes_render import MIN_LUMA_CONTRAST, luma


def _objects_equal(a, b):
  return [(o["shape"], o["color"], o["size"]) for o in a] == [(o["shape"], o["color"], o["size"]) for o in b]


def test_vocabulary_is_large_enough():
  assert len(SHAPES) >= 6 and len(set(SHAPES)) == len(SHAPES)
  assert len(COLORS) >= 8 and SIZES == ("small", "large")


def test_records_have_the_contract_fields_and_are_deterministic():
  src = ShapesSource("train", resolution=64, num_examples=50)
  assert len(src) == 50
  ex = src[7]
  assert set(ex) == {"image", "captions", "objects", "class_id", "key"}
  assert ex["image"].dtype == np.uint8 and ex["image"].shape == (64, 64, 3)
  assert len(ex["captions"]) == 5 and all(isinstance(c, str) and c for c in ex["captions"])
  assert 1 <= len(ex["objects"]) <= 3 and isinstance(ex["class_id"], int)
  for obj in ex["objects"]:
    assert set(obj) == {"shape", "color", "size", "bbox"} and len(obj["bbox"]) == 4
  # Same (seed, split, index) -> same example, from a fresh or unpickled source too; anything else differs.
  again = pickle.loads(pickle.dumps(ShapesSource("train", resolution=64, num_examples=50)))[7]
  assert np.array_equal(ex["image"], again["image"]) and ex["captions"] == again["captions"]
  assert ex["objects"] == again["objects"] and ex["key"] == again["key"]
  assert np.array_equal(src[-43]["image"], ex["image"])
  others = [ShapesSource("train", seed=1)[7], ShapesSource("test")[7], src[8]]
  assert all(not np.array_equal(o["image"], ex["image"]) for o in others)
  assert len({ex["key"]} | {o["key"] for o in others}) == 4
  with pytest.raises(IndexError, match="out of range"):
    src[50]


def test_same_scene_at_any_resolution():
  for index in range(5):
    records = {r: ShapesSource("test", resolution=r)[index] for r in (32, 64, 200, 512)}
    for r, rec in records.items():
      assert rec["image"].shape == (r, r, 3)
      assert _objects_equal(rec["objects"], records[64]["objects"]) and rec["captions"] == records[64]["captions"]
      for obj, ref in zip(rec["objects"], records[512]["objects"]):
        assert np.allclose(np.asarray(obj["bbox"]) / r, np.asarray(ref["bbox"]) / 512, atol=1.01 / r)
  for bad in (16, 2000, 64.5):
    with pytest.raises(ValueError, match="resolution"):
      ShapesSource("train", resolution=bad)


def test_boxes_are_exact_and_every_object_is_visible():
  res = 64
  src = ShapesSource("train", resolution=res)
  sizes_px = {"small": [], "large": []}
  for index in range(120):
    scene, rec = src.scene(index), src[index]
    image = rec["image"].astype(np.float32)
    background = np.asarray(scene["background"], np.float32)
    changed = np.abs(image - background).max(-1) > 3  # JPEG-free render: only objects differ from background
    covered = np.zeros_like(changed)
    boxes = [o["bbox"] for o in rec["objects"]]
    for obj in rec["objects"]:
      x0, y0, x1, y1 = obj["bbox"]
      assert 0 <= x0 < x1 <= res and 0 <= y0 < y1 <= res
      covered[y0:y1, x0:x1] = True
      # Tight: the object's pixels reach within a pixel of every side of its box.
      ys, xs = np.nonzero(changed[y0:y1, x0:x1])
      assert xs.min() <= 1 and ys.min() <= 1 and xs.max() >= x1 - x0 - 2 and ys.max() >= y1 - y0 - 2, obj
      # Visible: a good share of the box shows the object's own colour, clearly apart from the background.
      color = np.asarray(COLORS[obj["color"]], np.float32)
      solid = np.linalg.norm(image[y0:y1, x0:x1] - color, axis=-1) < 12
      assert solid.sum() >= 0.2 * (x1 - x0) * (y1 - y0), obj
      assert np.linalg.norm(color - background) >= 80 and abs(luma(color) - luma(background)) >= MIN_LUMA_CONTRAST
      sizes_px[obj["size"]].append(max(x1 - x0, y1 - y0))
    assert not (changed & ~covered).any(), "object pixels outside every box"
    for a, b in itertools.combinations(boxes, 2):  # no overlap, so nothing is hidden
      assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]
    assert len({(o["color"], o["shape"]) for o in rec["objects"]}) == len(rec["objects"])
  assert min(sizes_px["small"]) >= 14 and min(sizes_px["large"]) > max(sizes_px["small"])


def test_holdout_is_kept_out_of_train_and_present_in_test():
  train = ShapesSource("train", num_examples=800)
  assert all(("purple", "star") not in {(o["color"], o["shape"]) for o in train[i]["objects"]}
             for i in range(len(train)))
  test = ShapesSource("test")
  with_holdout = [i for i in range(200) if ("purple", "star") in {(o["color"], o["shape"]) for o in test[i]["objects"]}]
  assert 0.2 * 200 <= len(with_holdout) <= 0.5 * 200  # forced fraction 0.25 plus natural draws
  pairs = {(o["color"], o["shape"]) for i in range(200) for o in test[i]["objects"]}
  assert len(pairs) > 40  # and plenty of ordinary combinations
  # Custom holdouts, in both spellings; bad names fail with the valid choices.
  custom = ShapesSource("train", holdout=("red circle", ("blue", "square")), num_examples=400)
  assert custom.holdout == (("blue", "square"), ("red", "circle"))
  seen = {(o["color"], o["shape"]) for i in range(400) for o in custom[i]["objects"]}
  assert not seen & set(custom.holdout) and ("purple", "star") in seen
  assert parse_holdout(()) == () and parse_holdout("") == ()
  with pytest.raises(ValueError, match="unknown colour 'pink'.*purple"):
    ShapesSource("train", holdout=("pink star",))
  with pytest.raises(ValueError, match="unknown shape 'octagon'"):
    parse_holdout([("red", "octagon")])
  with pytest.raises(ValueError, match="'color shape'"):
    parse_holdout(["large red star"])


def test_class_id_identifies_the_object_set():
  pairs = [(c, s) for c in COLORS for s in SHAPES]
  ids = {class_id_of([p]) for p in pairs} | {class_id_of(two) for two in itertools.combinations(pairs, 2)}
  assert len(ids) == len(pairs) + len(pairs) * (len(pairs) - 1) // 2 and max(ids) < num_classes(2)
  rng = np.random.default_rng(0)
  triples = {tuple(sorted(pairs[i] for i in rng.choice(len(pairs), 3, replace=False))) for _ in range(2000)}
  assert len({class_id_of(t) for t in triples}) == len(triples)
  assert all(num_classes(2) <= class_id_of(t) < num_classes(3) for t in triples)
  assert class_id_of([("red", "star"), ("blue", "ring")]) == class_id_of([("blue", "ring"), ("red", "star")])
  src = ShapesSource("test")
  by_set = {}
  for i in range(300):
    rec = src[i]
    key = frozenset((o["color"], o["shape"]) for o in rec["objects"])
    assert by_set.setdefault(key, rec["class_id"]) == rec["class_id"]
  assert len(set(by_set.values())) == len(by_set)


def test_captions_are_true_to_the_scene():
  src = ShapesSource("test", resolution=64, captions_per_image=6)
  templates, relations_seen = set(), 0
  for index in range(300):
    rec, scene = src[index], src.scene(index)
    truth = {(o["color"], o["shape"]): o for o in rec["objects"]}
    assert len(rec["captions"]) == 6
    for caption in rec["captions"]:
      parsed = parse_caption(caption)
      # Every caption names every object, with its true size when it gives one.
      assert {(o["color"], o["shape"]) for o in parsed["objects"]} == set(truth), caption
      for o in parsed["objects"]:
        assert o["size"] in (None, truth[(o["color"], o["shape"])]["size"]), caption
      for i, rel, j in parsed["relations"]:
        a = truth[(parsed["objects"][i]["color"], parsed["objects"][i]["shape"])]["bbox"]
        b = truth[(parsed["objects"][j]["color"], parsed["objects"][j]["shape"])]["bbox"]
        holds = {"to the left of": a[2] <= b[0], "to the right of": b[2] <= a[0], "above": a[3] <= b[1],
                 "below": b[3] <= a[1]}[rel]
        assert holds, (caption, a, b)
        relations_seen += 1
      if parsed["count"] is not None:
        assert parsed["count"] == len(truth), caption
      if parsed["background"] is not None:
        level = np.mean(scene["background"])
        assert parsed["background"] == ("dark" if level < 100 else "gray" if level < 156 else "light"), caption
      if parsed["region"] is not None:
        (x0, y0, x1, y1), = [o["bbox"] for o in rec["objects"]]
        cx, cy = (x0 + x1) / 2 / 64, (y0 + y1) / 2 / 64
        words = parsed["region"].split()
        assert ("left" in words) == (cx < 1 / 3) and ("right" in words) == (cx > 2 / 3), caption
        assert ("top" in words) == (cy < 1 / 3) and ("bottom" in words) == (cy > 2 / 3), caption
      pattern = re.sub(r"\b(a|an|the) ((small|large) )?\w+ (" + "|".join(SHAPES) + r")\b", "X", caption)
      templates.add(re.sub(r"(to the left of|to the right of|above|below)", "REL",
                           re.sub(r"\b(dark|gray|light|one|two|three)\b|in the \w+( \w+)?|on the \w+|at the \w+", "W",
                                  pattern)))
  assert relations_seen > 300
  assert len(templates) >= 10, templates


def test_config_builds_the_source():
  cfg = shapes_config()
  assert isinstance(cfg, ml_collections.ConfigDict)
  assert {"num_train", "num_test", "resolution", "seed", "holdout", "captions_per_image", "min_objects",
          "max_objects"} <= set(cfg.keys())
  cfg.lock()
  cfg.num_test, cfg.max_objects, cfg.holdout = 30, 2, ("green heart", "purple star")
  src = ShapesSource.from_config(cfg, "test", resolution=96)
  assert len(src) == 30 and src.resolution == 96 and src.max_objects == 2
  assert src.holdout == (("green", "heart"), ("purple", "star"))
  assert all(len(src[i]["objects"]) <= 2 for i in range(30))
  assert len(ShapesSource.from_config(cfg, "train")) == cfg.num_train
  with pytest.raises(ValueError, match="split"):
    ShapesSource.from_config(cfg, "validation")
  with pytest.raises(ValueError, match="max_objects"):
    ShapesSource("train", max_objects=4)
  assert shapes.MIN_RESOLUTION == 32


def test_plain_captions_list_the_objects_only():
  src = ShapesSource("train", resolution=32, num_examples=40, min_objects=2, max_objects=2, caption_style="plain")
  orders = set()
  for i in range(40):
    ex = src[i]
    pairs = sorted((o["color"], o["shape"]) for o in ex["objects"])
    for caption in ex["captions"]:
      assert re.fullmatch(r"an? \w+ \w+ and an? \w+ \w+", caption), caption
      parsed = parse_caption(caption)["objects"]
      assert sorted((o["color"], o["shape"]) for o in parsed) == pairs and all(o["size"] is None for o in parsed)
      orders.add((parsed[0]["color"], parsed[0]["shape"]) == (ex["objects"][0]["color"], ex["objects"][0]["shape"]))
  assert orders == {True, False}  # both orders occur
  # The scenes (layout, colours, background) are those of the default style: only the wording differs.
  default = ShapesSource("train", resolution=32, num_examples=40, min_objects=2, max_objects=2)
  assert np.array_equal(default[3]["image"], src[3]["image"]) and default[3]["captions"] != src[3]["captions"]
  assert ShapesSource("train", num_examples=5, min_objects=1, max_objects=1, caption_style="plain")[0][
      "captions"][0].count(" ") == 2
  cfg = shapes_config()
  cfg.caption_style = "plain"
  assert ShapesSource.from_config(cfg, "test").caption_style == "plain"
  with pytest.raises(ValueError, match="caption_style"):
    ShapesSource("train", caption_style="short")


def test_shapes_only_captions_name_the_shapes_without_colours():
  src = ShapesSource("train", resolution=32, num_examples=40, min_objects=1, max_objects=2,
                     caption_style="shapes_only")
  plain = ShapesSource("train", resolution=32, num_examples=40, min_objects=1, max_objects=2, caption_style="plain")
  for i in range(40):
    ex = src[i]
    assert np.array_equal(ex["image"], plain[i]["image"])  # the same scenes, other words
    for caption in ex["captions"]:
      assert re.fullmatch(r"an? \w+( and an? \w+)?", caption), caption
      assert not set(caption.split()) & set(shapes.COLOR_NAMES), caption
      parsed = parse_caption(caption)["objects"]
      assert all(o["color"] is None for o in parsed)
      assert sorted(o["shape"] for o in parsed) == sorted({o["shape"] for o in ex["objects"]})
  # Colours named elsewhere in a caption still parse as before.
  assert parse_caption("a star above the red circle")["objects"] == [
      {"color": None, "shape": "star", "size": None}, {"color": "red", "shape": "circle", "size": None}]


def test_object_count_probs_weight_the_number_of_objects():
  weighted = ShapesSource("train", resolution=32, num_examples=600, min_objects=1, max_objects=2,
                          object_count_probs=(0.8, 0.2))
  counts = [len(weighted.scene(i)["objects"]) for i in range(600)]
  assert 0.72 < counts.count(1) / 600 < 0.88, counts.count(1)  # 0.8 +- 4 standard errors
  cfg = shapes_config()
  cfg.update(min_objects=1, max_objects=2, object_count_probs=(0.8, 0.2))
  assert np.allclose(ShapesSource.from_config(cfg, "train").object_count_probs, (0.8, 0.2))
  # () keeps the uniform draw, and with it every scene of the datasets made before the option existed.
  uniform = ShapesSource("train", resolution=32, num_examples=40, min_objects=1, max_objects=2)
  assert uniform.object_count_probs is None and 15 < sum(len(uniform.scene(i)["objects"]) == 1
                                                         for i in range(40)) < 25
  for probs in [(0.5, 0.5), (0.2, 0.2, 0.2), (1.2, -0.2, 0.0)]:
    with pytest.raises(ValueError, match="object_count_probs .* 3 non-negative probabilities summing to 1"):
      ShapesSource("train", min_objects=1, max_objects=3, object_count_probs=probs)


def test_absent_object_prob_names_an_object_the_image_lacks():
  kw = dict(resolution=32, num_examples=200, min_objects=1, max_objects=2, caption_style="shapes_only")
  src = ShapesSource("train", absent_object_prob=0.5, **kw)
  truthful = ShapesSource("train", **kw)
  absent = 0
  for i in range(200):
    rec, ref = src.text_record(i), truthful.text_record(i)
    assert rec["objects"] == ref["objects"]  # the same drawn scene: only the captions may name more
    named = [parse_caption(c)["objects"] for c in rec["captions"]]
    drawn = sorted(o["shape"] for o in rec["objects"])
    extra = [sorted(o["shape"] for o in objs) for objs in named if len(objs) > len(drawn)]
    if extra:
      absent += 1
      assert len(drawn) == 1 and len(extra) == len(named)  # every caption of the scene names the absent object
      assert all(len(e) == 2 and drawn[0] in e and len(set(e)) == 2 for e in extra), (drawn, rec["captions"])
  ones = sum(len(truthful.text_record(i)["objects"]) == 1 for i in range(200))
  assert 0.3 * ones < absent < 0.7 * ones, (absent, ones)
  # Test captions stay truthful; the option needs captions without sizes and relations.
  test, test_truthful = ShapesSource("test", absent_object_prob=1.0, **kw), ShapesSource("test", **kw)
  assert all(test.text_record(i) == test_truthful.text_record(i) for i in range(40))
  cfg = shapes_config()
  cfg.update(min_objects=1, max_objects=2, caption_style="shapes_only", absent_object_prob=0.5)
  assert ShapesSource.from_config(cfg, "train").absent_object_prob == 0.5
  with pytest.raises(ValueError, match="absent_object_prob .*'plain' or 'shapes_only'"):
    ShapesSource("train", absent_object_prob=0.5)
  with pytest.raises(ValueError, match=r"absent_object_prob must be in \[0, 1\]"):
    ShapesSource("train", absent_object_prob=1.5, caption_style="plain")
