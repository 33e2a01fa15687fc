"""The `model` section of AttnGAN GAN configs: the reference yml names (code/cfg/*_attn2.yml) in snake case.

    gf_dim, df_dim, r_num, z_dim, condition_dim  GAN.GF_DIM, GAN.DF_DIM, GAN.R_NUM, GAN.Z_DIM, GAN.CONDITION_DIM
    branch_num, base_size                        TREE.BRANCH_NUM, TREE.BASE_SIZE (images base_size * 2^i)
    embedding_dim, words_num                     TEXT.EMBEDDING_DIM, TEXT.WORDS_NUM
    reference_mask_bug                           ours: reproduce the reference's attention-mask tiling
                                                 (attngan_jax.gan.attention); released generators need True
"""
from __future__ import annotations

import ml_collections

# Reference hyperparameters per dataset (code/cfg/bird_attn2.yml, coco_attn2.yml; defaults of miscc/config.py).
PRESETS = {
    "birds": {"gf_dim": 32, "df_dim": 64, "r_num": 2, "words_num": 18},
    "coco": {"gf_dim": 48, "df_dim": 96, "r_num": 3, "words_num": 12},
}


def gan_model_config(preset: str = "birds", **overrides) -> ml_collections.ConfigDict:
  """config.model for the generator and discriminators; `preset` gives the reference's values, `overrides` win."""
  if preset not in PRESETS:
    raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}.")
  values = {
      "gf_dim": 32,          # generator width: every stage's feature maps have gf_dim channels
      "df_dim": 64,          # discriminator width: features 8 df_dim at 4 x 4
      "r_num": 2,            # ResBlocks per attentional stage
      "branch_num": 3,       # generator stages (and discriminators)
      "base_size": 64,       # first stage's image side, 4 * 2^n
      "z_dim": 100,
      "condition_dim": 100,  # CA output c
      "embedding_dim": 256,  # DAMSM word / sentence feature size
      "words_num": 18,       # captions padded / subsampled to this many words (data pipeline; T of words_emb)
      "reference_mask_bug": False,
  }
  values.update(PRESETS[preset])
  unknown = sorted(set(overrides) - set(values))
  if unknown:
    raise ValueError(f"unknown model option(s) {unknown}; known: {sorted(values)}.")
  values.update(overrides)
  return ml_collections.ConfigDict(values)
