"""The neglect study (diffusion_jax/neglect_study.py): its captions, its figures, and the command end to end on a
pipeline trained by the tiny shapes configs."""
import json
import os

import numpy as np
import pytest

from diffusion_jax import neglect_study as ns
from t2i_common.config import load_config


def test_captions_are_two_object_plain_test_captions_with_their_subjects():
  captions = ns.study_captions(40)
  assert len(captions) == 40
  for c in captions:
    assert len(c["objects"]) == 2 and " and " in c["caption"]
    first, second = c["caption"].split(" and ")
    assert first.endswith(" ".join(c["objects"][0])) and second.endswith(" ".join(c["objects"][1]))
    assert c["subjects"] == [c["objects"][0][1], c["objects"][1][1]]
    assert c["held_out"] == (("purple", "star") in c["objects"])
  # The test split forces a held-out pair into a quarter of its scenes: both groups are there.
  assert {c["held_out"] for c in captions} == {True, False}
  assert not any(c["held_out"] for c in ns.study_captions(40, holdout=()))
  assert ns.study_captions(5, offset=35) == captions[35:]


def test_shapes_only_captions_name_two_different_shapes():
  captions = ns.study_captions(40, caption_style="shapes_only")
  assert len(captions) == 40 and ns.study_captions(35, caption_style="shapes_only") == captions[:35]
  for c in captions:
    first, second = c["caption"].split(" and ")
    assert [w.split()[-1] for w in (first, second)] == c["subjects"] and len(set(c["subjects"])) == 2
    assert c["objects"] == [(None, s) for s in c["subjects"]] and not c["held_out"]
  with pytest.raises(ValueError, match="caption_style"):
    ns.study_captions(4, caption_style="templates")
  # Found = the shape drawn in any colour; colour figures do not apply.
  det = lambda *pairs: [{"color": c, "shape": s} for c, s in pairs]
  objects = [(None, "circle"), (None, "star")]
  outcomes = [ns.pair_outcome(objects, det(("red", "circle"), ("blue", "star"))),
              ns.pair_outcome(objects, det(("red", "circle"), ("red", "square")))]
  assert [o["found"] for o in outcomes] == [2, 1] and all(o["colours"] is None for o in outcomes)
  s = ns.summarize(outcomes)
  assert s["all_present"] == 0.5 and s["neglect"] == 0.5 and s["binding"] is None and s["both_colours"] is None
  with pytest.raises(ValueError, match="name no colours"):
    ns.run_study(None, captions[:1], [0], subject_words=["colour"], attn_res=(4, 4))


def test_figures_from_detections():
  objects = [("red", "circle"), ("blue", "square")]
  det = lambda *pairs: [{"color": c, "shape": s} for c, s in pairs]
  cases = [
      det(("red", "circle"), ("blue", "square")),         # both: all present, bound
      det(("red", "circle")),                             # neglect
      det(("blue", "circle"), ("red", "square")),         # both shapes, colours swapped: none found, unbound
      det(("red", "circle"), ("red", "square"), ("green", "heart")),  # neglect; both shapes, one colour leaked
      [],                                                 # nothing
  ]
  outcomes = [ns.pair_outcome(objects, d) for d in cases]
  assert [o["found"] for o in outcomes] == [2, 1, 0, 1, 0]
  assert [o["shapes"] for o in outcomes] == [2, 1, 2, 2, 0]
  s = ns.summarize(outcomes)
  assert s["num_images"] == 5 and s["all_present"] == pytest.approx(0.2) and s["neglect"] == pytest.approx(0.4)
  assert s["none"] == pytest.approx(0.4) and s["object_recall"] == pytest.approx(4 / 10)
  assert s["both_shapes"] == pytest.approx(0.6) and s["binding"] == pytest.approx(1 / 3)
  assert [o["colours"] for o in outcomes] == [2, 1, 2, 1, 0] and s["both_colours"] == pytest.approx(0.4)
  # A repeated shape word counts twice: two circles are needed for "a red circle and a blue circle".
  twice = [("red", "circle"), ("blue", "circle")]
  assert ns.pair_outcome(twice, det(("red", "circle")))["shapes"] == 1
  assert ns.paired(outcomes, outcomes[::-1]) == {"rescued": 1, "lost": 1}
  assert ns.summarize([ns.pair_outcome(objects, [])])["binding"] is None  # no image with both shapes


def test_attention_premise_on_hand_made_attention():
  det = lambda *pairs: [{"color": c, "shape": s} for c, s in pairs]
  objects = [("red", "circle"), ("blue", "square")]
  assert ns.objects_found(objects, det(("blue", "square"), ("red", "square"))) == [False, True]
  assert ns.objects_found([("red", "circle")] * 2, det(("red", "circle"))) == [True, False]  # multiset
  found = [[True, True], [False, True], [True, False], [True, False], [False, False]]
  # Subject words' maxima: image 1 and 2 miss the less attended object's, image 3 the more attended one's.
  maxes = np.array([[0.9, 0.8], [0.3, 0.7], [0.9, 0.2], [0.4, 0.6], [0.1, 0.1]])
  p = ns.attention_premise(found, maxes, "shape")
  assert p["neglect_images"] == 3 and p["missing_less_attended"] == pytest.approx(2 / 3)
  assert p["attention_found"] == pytest.approx(np.mean([0.9, 0.8, 0.7, 0.9, 0.4]))
  assert p["attention_missing"] == pytest.approx(np.mean([0.3, 0.2, 0.6, 0.1, 0.1]))
  # "both": an object's attention is the lower of its colour and shape words' (subjects: colours, then shapes).
  both = np.concatenate([maxes, np.array([[0.9, 0.8], [0.9, 0.1], [0.9, 0.2], [0.4, 0.6], [0.1, 0.1]])], axis=1)
  assert ns.attention_premise(found, both, "both")["missing_less_attended"] == pytest.approx(1 / 3)
  assert ns.attention_premise([[True, True]], maxes[:1], "shape")["missing_less_attended"] is None


def test_default_schedule_scales_the_papers():
  assert ns.default_schedule(50) == ({0: 0.05, 10: 0.5, 20: 0.8}, 25)
  assert ns.default_schedule(25) == ({0: 0.05, 5: 0.5, 10: 0.8}, 12)
  args = ["--pretrained", "x", "--out", "y", "--thresholds"]
  assert ns.build_parser().parse_args(args + ["0:0.05, 4:0.5"]).thresholds == {0: 0.05, 4: 0.5}
  with pytest.raises(SystemExit):
    ns.build_parser().parse_args(args + ["0.5"])


def test_subject_words_of_each_choice():
  captions = [{"subjects": ["ring", "square"], "objects": [("orange", "ring"), ("purple", "square")]},
              {"subjects": ["star", "heart"], "objects": [("red", "star"), ("red", "heart")]}]
  lists = ns.subject_lists(captions, seeds=[0, 1])
  assert set(lists) == set(ns.SUBJECT_WORDS)
  assert lists["shape"] == [["ring", "square"]] * 2 + [["star", "heart"]] * 2
  assert lists["colour"] == [["orange", "purple"]] * 2 + [["red", "red"]] * 2
  assert lists["both"][0] == ["orange", "purple", "ring", "square"]
  assert lists["both"][3] == ["red", "red", "star", "heart"]
  assert ns._arm_name(10.0, 12, "both", False) == "A&E on colours and shapes"


def test_command_end_to_end(tiny_shapes_runs, tmp_path, fast_compile):
  tiny_pipeline = tiny_shapes_runs[2]["pipeline"]  # the tiny configs' run, shared with tests/test_diffusion_train.py
  out = tmp_path / "study"
  results = ns.main(["--pretrained", tiny_pipeline, "--out", str(out), "--num-captions", "4", "--seeds", "0,1",
                     "--steps", "2", "--guidance", "4", "--scale-factor", "5,40", "--max-iter-to-alter", "2",
                     "--subject-words", "shape,colour",
                     "--thresholds", "0:0.9", "--batch-size", "8", "--grid-captions", "2",
                     "--attention-images", "1"])
  arms = list(results["arms"])
  assert arms == ["plain", "A&E sf=5 iters=2", "A&E sf=40 iters=2", "A&E sf=5 iters=2 on colours",
                  "A&E sf=40 iters=2 on colours"]
  for name in arms:
    arm = results["arms"][name]
    assert arm["num_images"] == 8 and len(arm["per_image"]) == 8
    assert 0.0 <= arm["all_present"] <= 1.0 and arm["time_per_image_s"] > 0
    assert arm["seen"]["num_images"] + arm["held_out"]["num_images"] == 8
    assert "object_recall" in arm["oracle"]
  # Every arm samples the same captions with the same seeds.
  assert len({tuple((r["caption"], r["seed"]) for r in results["arms"][a]["per_image"]) for a in arms}) == 1
  assert results["arms"]["A&E sf=40 iters=2"]["vs_plain"].keys() == {"rescued", "lost"}
  premise = results["arms"]["A&E sf=5 iters=2"]["premise"]
  assert premise.keys() == {"neglect_images", "missing_less_attended", "attention_found", "attention_missing"}
  # Step 0's attention is the initial noise's: the same whatever the scale factor.
  assert results["arms"]["A&E sf=40 iters=2"]["premise"] == premise
  # Each arm excites its own words: the shape words, or the colour words of the same captions.
  for shape_rec, colour_rec in zip(results["arms"]["A&E sf=5 iters=2"]["per_image"],
                                   results["arms"]["A&E sf=5 iters=2 on colours"]["per_image"]):
    assert [f"{c} {s}" for c, s in zip(colour_rec["subjects"], shape_rec["subjects"])] == [
        " ".join(p.split()[-2:]) for p in shape_rec["caption"].split(" and ")]
  with open(out / "study.json") as f:
    assert json.load(f)["arms"].keys() == results["arms"].keys()
  table = (out / "study.md").read_text()
  assert "| all_present |" in table and "A&E sf=5 iters=2" in table and "less attended at step 0" in table
  assert os.path.getsize(out / "grid.png") > 0
  assert os.path.isfile(out / "attention_00.png") and not os.path.exists(out / "attention_01.png")
  with pytest.raises(FileNotFoundError, match="model_index.json"):
    ns.main(["--pretrained", str(tmp_path), "--out", str(out)])
