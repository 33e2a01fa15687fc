"""Word-region attention pictures: thresholding, upsampling, ranking, overlay and the figure layout."""
import numpy as np
import pytest

from attngan_jax.attention_maps import (attention_figure, attention_panels, damsm_word_region_attention, overlay,
                                        top_words, word_maps)


def _peaked_beta(t=3, side=4, peaks=((0, 0), (3, 3), (1, 2))):
  """beta [t, side*side]: word i owns the region at peaks[i]; elsewhere the words share evenly."""
  n = side * side
  beta = np.full((t, n), 1.0 / t)
  for i, (r, c) in enumerate(peaks[:t]):
    j = r * side + c
    beta[:, j] = 0.0
    beta[i, j] = 1.0
  return beta


def test_word_maps_threshold_upsample_and_peak_location():
  beta = _peaked_beta()
  maps = word_maps(beta, 64)
  assert maps.shape == (3, 64, 64) and maps.dtype == np.float32
  assert maps.min() >= 0.0 and np.allclose(maps.max(axis=(1, 2)), 1.0)
  # Uniform shares (= 1/T) are dropped: only the owned region survives, so each map peaks at its region
  # (16 px cells of the 64 px image) and is near zero far from it.
  for i, (r, c) in enumerate([(0, 0), (3, 3), (1, 2)]):
    y, x = np.unravel_index(np.argmax(maps[i]), maps[i].shape)
    assert r * 16 - 4 <= y < (r + 1) * 16 + 4 and c * 16 - 4 <= x < (c + 1) * 16 + 4, (i, y, x)
  assert maps[0, 60, 60] < 0.05 and maps[1, 2, 2] < 0.05
  # Smooth: neighbouring pixels differ little (Gaussian upsampling, not blocks).
  assert np.abs(np.diff(maps, axis=-1)).max() < 0.25


def test_word_with_no_weight_above_uniform_gets_an_empty_map():
  beta = np.full((4, 9), 0.25)
  assert not word_maps(beta, 30).any()
  with pytest.raises(ValueError, match="square grid"):
    word_maps(np.full((2, 10), 0.5), 30)


def test_top_words_by_summed_attention():
  beta = np.array([[0.1, 0.1, 0.1, 0.1], [0.6, 0.5, 0.7, 0.2], [0.3, 0.4, 0.2, 0.7]])
  assert top_words(beta, 2).tolist() == [1, 2]
  assert top_words(beta, 5).tolist() == [1, 2, 0]


def test_damsm_attention_is_a_distribution_over_the_real_words():
  rng = np.random.default_rng(0)
  regions, words = rng.normal(size=(4, 4, 8)), rng.normal(size=(6, 8))
  beta = damsm_word_region_attention(regions, words, length=4)   # words 4, 5 are padding
  assert beta.shape == (4, 16)
  np.testing.assert_allclose(beta.sum(axis=0), 1.0, rtol=1e-6)
  # Eq. 8: softmax over words of region . word.
  s = regions.reshape(16, 8) @ words[:4].T
  np.testing.assert_allclose(beta[:, 3], np.exp(s[3]) / np.exp(s[3]).sum(), rtol=1e-6)


def test_overlay_keeps_unattended_pixels_and_tints_attended_ones():
  image = np.full((8, 8, 3), 100, np.uint8)
  amap = np.zeros((8, 8), np.float32)
  amap[2:4, 2:4] = 1.0
  out = overlay(image, amap)
  assert out.dtype == np.uint8 and out.shape == (8, 8, 3)
  assert np.array_equal(out[amap == 0], image[amap == 0])
  assert out[2, 2, 0] > 100 and out[2, 2, 2] < 100      # the peak is red
  with pytest.raises(ValueError, match="differs"):
    overlay(image, amap[:4])


def test_panels_and_figure_layout():
  beta = _peaked_beta()
  image = np.random.default_rng(0).uniform(size=(32, 32, 3))
  panels, labels = attention_panels(image, beta, ["red", "circle", "left"], k=2, size=48)
  assert len(panels) == 3 and all(p.shape == (48, 48, 3) and p.dtype == np.uint8 for p in panels)
  assert labels[0] == "red circle left" and set(labels[1:]) <= {"red", "circle", "left"}
  with pytest.raises(ValueError, match="words"):
    attention_panels(image, beta, ["red"], k=2)
  short = _peaked_beta(t=2)
  grid = attention_figure([image, image], [beta, short], [["a", "b", "c"], ["d", "e"]], k=3, size=40)
  # Two rows of k + 1 = 4 cells (the short caption's row is padded), each 40 px wide plus padding.
  assert grid.dtype == np.uint8 and grid.ndim == 3
  assert 4 * 40 < grid.shape[1] < 4 * 40 + 20 and grid.shape[0] > 2 * 40
