"""CLIP text transformer (transformers' CLIPTextModel): the text encoder of SD 1.x (CLIP ViT-L/14, quick_gelu)
and SD 2.x (OpenCLIP ViT-H, gelu; SD 2 folders already cut it to 23 layers so its last layer is the
penultimate one of the original).

Outputs a dict:
  last_hidden_state  [B, T, D]: final_layer_norm of the last computed layer (what SD feeds the UNet);
  pooler_output      [B, D]:    last_hidden_state at the first eos token (argmax of the ids when the config's
                                eos_token_id is the legacy 2, as transformers does);
  hidden_states      (optional) tuple of num_layers + 1 [B, T, D]: embeddings, then each layer's output
                                without the final norm, so hidden_states[-2] is transformers' penultimate one.
`clip_skip=k` stops k layers early and applies final_layer_norm there (diffusers' clip_skip); pooler_output is
then pooled from that output.

The encoder layers are shared with the CLIP image tower (models/clip_vision.py), which runs them with
`causal=False`; CLIP's two-tower model with its projections is models/clip_model.py.
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffusion_jax.model_configs import TextConfig
from diffusion_jax.models.attention import dot_attention
from diffusion_jax.models.norms import LayerNorm

Dtype = Any

ACTIVATIONS = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
}


class CLIPAttention(nn.Module):
  heads: int
  causal: bool = True  # the text tower's causal mask; the image tower attends to every patch
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: Optional[jax.Array]) -> jax.Array:
    d = x.shape[-1]
    dense = lambda name: nn.Dense(d, dtype=self.dtype, param_dtype=self.param_dtype, name=name)
    q, k, v = dense("q_proj")(x), dense("k_proj")(x), dense("v_proj")(x)
    return dense("out_proj")(dot_attention(q, k, v, self.heads, is_causal=self.causal, mask=mask))


class CLIPMLP(nn.Module):
  intermediate_size: int
  act: str
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = ACTIVATIONS[self.act](nn.Dense(self.intermediate_size, name="fc1", **kw)(x))
    return nn.Dense(x.shape[-1], name="fc2", **kw)(h)


class CLIPEncoderLayer(nn.Module):
  """Pre-norm transformer layer. config: a TextConfig or clip_vision.VisionConfig (the fields both have)."""
  config: TextConfig
  causal: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: Optional[jax.Array]) -> jax.Array:
    cfg = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = x + CLIPAttention(cfg.num_attention_heads, self.causal, name="self_attn", **kw)(
        LayerNorm(cfg.layer_norm_eps, name="layer_norm1", **kw)(x), mask)
    return x + CLIPMLP(cfg.intermediate_size, cfg.hidden_act, name="mlp", **kw)(
        LayerNorm(cfg.layer_norm_eps, name="layer_norm2", **kw)(x))


class CLIPTextEmbeddings(nn.Module):
  config: TextConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, input_ids: jax.Array, position_ids: jax.Array) -> jax.Array:
    cfg = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    tok = nn.Embed(cfg.vocab_size, cfg.hidden_size, name="token_embedding", **kw)(input_ids)
    pos = nn.Embed(cfg.max_position_embeddings, cfg.hidden_size, name="position_embedding", **kw)(position_ids)
    return tok + pos


class CLIPEncoder(nn.Module):
  config: TextConfig
  num_layers: int
  causal: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: Optional[jax.Array]) -> list[jax.Array]:
    states = [x]
    for i in range(self.num_layers):
      x = CLIPEncoderLayer(self.config, self.causal, self.dtype, self.param_dtype, name=f"layers_{i}")(x, mask)
      states.append(x)
    return states


class CLIPTextTransformer(nn.Module):
  """input_ids [B, T] (T <= max_position_embeddings) -> dict (see the module docstring).

  attention_mask [B, T] (1 = real token) additionally hides padding keys, as transformers does when given one;
  SD pipelines do not pass it. The causal mask is always applied.
  """
  config: TextConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, input_ids: jax.Array, attention_mask: Optional[jax.Array] = None,
               position_ids: Optional[jax.Array] = None, *, clip_skip: int = 0,
               output_hidden_states: bool = False) -> dict:
    cfg = self.config
    if input_ids.ndim != 2 or input_ids.shape[1] > cfg.max_position_embeddings:
      raise ValueError(f"input_ids {input_ids.shape} must be [B, T] with T <= {cfg.max_position_embeddings}; "
                       "tokenize with truncation to the tokenizer's model_max_length.")
    # A 0-layer encoder (token + position embeddings only: every word's vector is its own) allows clip_skip 0.
    if not 0 <= clip_skip < max(cfg.num_hidden_layers, 1):
      raise ValueError(f"clip_skip={clip_skip} must be in [0, {max(cfg.num_hidden_layers, 1)}).")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    b, t = input_ids.shape
    if position_ids is None:
      position_ids = jnp.arange(t)[None, :]
    x = CLIPTextEmbeddings(cfg, name="embeddings", **kw)(input_ids, position_ids)
    mask = None
    if attention_mask is not None:
      mask = attention_mask.astype(bool)[:, None, None, :]
    # With clip_skip the last layers are not run; their parameters stay in the tree (apply ignores them).
    states = CLIPEncoder(cfg, cfg.num_hidden_layers - clip_skip, name="encoder", **kw)(x, mask)
    last = LayerNorm(cfg.layer_norm_eps, name="final_layer_norm", **kw)(states[-1])
    if cfg.eos_token_id == 2:
      eos_pos = jnp.argmax(input_ids, axis=-1)
    else:
      eos_pos = jnp.argmax((input_ids == cfg.eos_token_id).astype(jnp.int32), axis=-1)
    out = {"last_hidden_state": last.astype(jnp.float32),
           "pooler_output": last[jnp.arange(b), eos_pos].astype(jnp.float32)}
    if output_hidden_states:
      out["hidden_states"] = tuple(s.astype(jnp.float32) for s in states)
    return out
