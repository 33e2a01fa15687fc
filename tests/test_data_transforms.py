"""AttnGAN's image transforms: box crop, shorter-side resize, random crop/flip pyramid in [-1, 1]."""
import numpy as np
import pytest
from PIL import Image

from t2i_common.data.records import select_captions
from t2i_common.data.transforms import bbox_crop, image_pyramid, resize_shorter, to_float


def _coords(height, width):
  """An image whose pixels hold their own (row, column), so crops can be located exactly."""
  rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
  return np.stack([rows, cols, np.zeros_like(rows)], -1).astype(np.uint8)


def test_bbox_crop_follows_the_reference_arithmetic():
  image = _coords(80, 100)
  # Box (10.7, 20.2, 30, 20) -> ints (10, 20, 30, 20); r = int(22.5) = 22; centre (25, 30).
  crop = bbox_crop(image, (10.7, 20.2, 30.0, 20.0))
  assert crop.shape == (44, 44, 3) and crop[0, 0, 0] == 8 and crop[0, 0, 1] == 3
  # Near the corner the square is clipped to the image: r = 7, centre (95, 75) -> rows 68..80, cols 88..100.
  crop = bbox_crop(image, (90.0, 70.0, 10.0, 10.0))
  assert crop.shape == (12, 12, 3) and (crop[0, 0, 0], crop[0, 0, 1]) == (68, 88)
  with pytest.raises(ValueError, match="outside"):
    bbox_crop(image, (200.0, 200.0, 4.0, 4.0))


def test_resize_shorter_matches_torchvision_rule():
  assert resize_shorter(Image.new("RGB", (120, 90)), 76).size == (101, 76)  # int(76 * 120 / 90)
  assert resize_shorter(Image.new("RGB", (50, 200)), 76).size == (76, 304)


def test_pyramid_crop_flip_and_range():
  image = _coords(90, 120)
  out = image_pyramid(image, (16, 32), rng=np.random.default_rng(0), random_crop=True, random_flip=True)
  assert set(out) == {16, 32} and out[32].shape == (32, 32, 3) and out[16].dtype == np.float32
  assert -1.0 <= min(o.min() for o in out.values()) and max(o.max() for o in out.values()) <= 1.0
  same = image_pyramid(image, (16, 32), rng=np.random.default_rng(0), random_crop=True, random_flip=True)
  assert all(np.array_equal(out[s], same[s]) for s in out)
  crops = {image_pyramid(image, (32,), rng=np.random.default_rng(s), random_crop=True)[32][0, 0, 0]
           for s in range(8)}
  assert len(crops) > 1  # different seeds, different crops
  # Without a crop: the centre square of the shorter-side resize; a flip mirrors it exactly.
  square = np.random.default_rng(1).integers(0, 255, (32, 32, 3), dtype=np.uint8)
  plain = image_pyramid(square, (32,))[32]
  np.testing.assert_allclose(plain, to_float(square))
  flips = [image_pyramid(square, (32,), rng=np.random.default_rng(s), random_flip=True)[32] for s in range(8)]
  assert all(np.array_equal(f, plain) or np.array_equal(f, plain[:, ::-1]) for f in flips)
  assert any(np.array_equal(f, plain[:, ::-1]) for f in flips) and any(np.array_equal(f, plain) for f in flips)
  with pytest.raises(ValueError, match="rng"):
    image_pyramid(square, (32,), random_crop=True)


def test_select_captions_attngan_rule():
  lines = ["", "a bird.", "  ", "...", "the bird\ufffd\ufffdflies ", "c", "d"]
  assert select_captions(lines) == ["a bird.", "the bird flies", "c", "d"]
  assert select_captions(lines, 2) == ["a bird.", "the bird flies"]
