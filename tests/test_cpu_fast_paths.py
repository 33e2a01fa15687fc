"""The CPU fast paths give the values and gradients of the XLA ops they replace, and are taken where meant:
t2i_common.cpu_conv (deep convolutions on small maps as one matmul) and diffusion_jax's cpu_attention (chunked,
head-major attention). Tolerance: 1e-5 relative (float32, another summation order)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from diffusion_jax.models import attention
from diffusion_jax.models.resnet import conv, late_kernel_conv
from t2i_common import cpu_conv

NHWC = ("NHWC", "HWIO", "NHWC")
TOL = 1e-5


def _rel(a, b) -> float:
  a, b = np.asarray(a), np.asarray(b)
  return float(np.abs(a - b).max() / np.abs(b).max())


def _inputs(cin=512, size=4, cout=8, k=3):
  x = jax.random.normal(jax.random.key(0), (2, size, size, cin))
  w = jax.random.normal(jax.random.key(1), (k, k, cin, cout)) / np.sqrt(k * k * cin)
  return x, w


@pytest.mark.parametrize("padding", [((1, 1), (1, 1)), ((0, 2), (1, 0))])
def test_matmul_route_matches_lax_conv_and_its_gradients(padding):
  x, w = _inputs()
  dn = lax.conv_dimension_numbers(x.shape, w.shape, NHWC)
  assert cpu_conv.uses_matmul(x.shape, w.shape, (1, 1), padding, dimension_numbers=dn)
  ref_fn = lambda x, w: lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=dn)
  ours_fn = lambda x, w: cpu_conv.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=dn)
  assert _rel(jax.jit(ours_fn)(x, w), ref_fn(x, w)) <= TOL
  loss = lambda f: (lambda x, w: jnp.sum(jnp.sin(f(x, w))))
  ours_g, ref_g = jax.grad(loss(ours_fn), (0, 1))(x, w), jax.grad(loss(ref_fn), (0, 1))(x, w)
  assert max(_rel(a, b) for a, b in zip(ours_g, ref_g)) <= TOL
  # Through late_kernel_conv (the UNet's A&E gradient pass): the same values and input gradient.
  late = lambda x, w: late_kernel_conv(x, w, (1, 1), padding, dimension_numbers=dn)
  assert _rel(jax.grad(loss(late))(x, w), ref_g[0]) <= TOL


def test_route_is_taken_only_for_deep_small_stride_one_convolutions():
  pad = ((1, 1), (1, 1))

  def uses(x_shape, w_shape, strides=(1, 1), padding=pad, **kw):
    dn = lax.conv_dimension_numbers(x_shape, w_shape, NHWC)
    return cpu_conv.uses_matmul(x_shape, w_shape, strides, padding, dimension_numbers=dn, **kw)

  assert uses((1, 16, 16, 512), (3, 3, 512, 4))
  assert not uses((1, 32, 32, 512), (3, 3, 512, 4))  # a large map: XLA's convolution is faster
  assert not uses((1, 8, 8, 256), (3, 3, 256, 4))  # few channels
  assert not uses((1, 8, 8, 512), (1, 1, 512, 4), padding=((0, 0), (0, 0)))  # 1 x 1: already a matmul
  assert not uses((1, 8, 8, 512), (3, 3, 512, 4), strides=(2, 2))
  assert not uses((1, 8, 8, 512), (3, 3, 512, 4), padding="SAME")
  assert not uses((1, 8, 8, 512), (3, 3, 512, 4), rhs_dilation=(2, 2))
  assert not uses((1, 8, 8, 512), (3, 3, 512, 4), feature_group_count=2)
  nchw = lax.conv_dimension_numbers((1, 512, 8, 8), (4, 512, 3, 3), ("NCHW", "OIHW", "NCHW"))
  assert not cpu_conv.uses_matmul((1, 512, 8, 8), (4, 512, 3, 3), (1, 1), pad, dimension_numbers=nchw)


def test_flax_convolution_of_the_models_uses_it_with_the_same_values(monkeypatch):
  calls = []
  matmul_conv = cpu_conv.matmul_conv
  monkeypatch.setattr(cpu_conv, "matmul_conv", lambda *a, **kw: calls.append(1) or matmul_conv(*a, **kw))
  x, _ = _inputs(size=8)
  ours = conv(8, 3, None, jnp.float32, jnp.float32)
  variables = ours.init(jax.random.key(2), x)
  ref = nn.Conv(8, (3, 3), padding=((1, 1), (1, 1)))
  calls.clear()
  assert _rel(jax.jit(ours.apply)(variables, x), ref.apply(variables, x)) <= TOL
  assert calls, "the models' convolution did not take the matmul route for 512 channels on 8 x 8"


@pytest.mark.parametrize("t,s", [(256, 256), (256, 77), (77, 77), (200, 64)])
def test_cpu_attention_matches_dot_product_attention(t, s, monkeypatch):
  """Chunked (256 queries: 2 chunks of 128) and whole (77, or 200: not a multiple of the chunk)."""
  keys = jax.random.split(jax.random.key(3), 3)
  q = jax.random.normal(keys[0], (2, t, 4, 8)) * 2
  k, v = (jax.random.normal(key, (2, s, 4, 8)) * 2 for key in keys[1:])
  loss = lambda f: (lambda q, k, v: jnp.sum(jnp.sin(f(q, k, v))))
  ours, ref = attention.cpu_attention, jax.nn.dot_product_attention
  assert _rel(jax.jit(ours)(q, k, v), ref(q, k, v)) <= TOL
  grads = jax.grad(loss(ours), (0, 1, 2))(q, k, v), jax.grad(loss(ref), (0, 1, 2))(q, k, v)
  assert max(_rel(a, b) for a, b in zip(*grads)) <= TOL
  # dot_attention takes it for unmasked float32 attention on the CPU, and not with a mask.
  calls = []
  monkeypatch.setattr(attention, "cpu_attention", lambda *a: calls.append(1) or ours(*a))
  flat = lambda x: x.reshape(2, x.shape[1], 32)
  assert _rel(attention.dot_attention(flat(q), flat(k), flat(v), 4), flat(ref(q, k, v))) <= TOL
  assert calls == [1]
  attention.dot_attention(flat(q), flat(k), flat(v), 4, mask=jnp.ones((1, 1, t, s), bool))
  assert calls == [1]
