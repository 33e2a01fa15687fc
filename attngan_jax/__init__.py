"""AttnGAN (Xu et al., CVPR 2018) in JAX/Flax.

- damsm/: the DAMSM (text encoder, image encoders, word-region losses, pretraining); entry points
  pretrain_damsm.py and evaluate_damsm.py.
- gan/: the attentional generator, the stage discriminators, the GAN losses and trainer, sampling and the
  evaluation of samples; entry points train.py, sample.py and evaluate.py.
- Shared by both: text.py (vocabulary, captions), inception.py (Inception-v3: the DAMSM backbone and the IS / FID
  network), initializers.py (the reference's init), attention_maps.py (word-attention pictures), r_precision.py,
  convert_torch.py (strict import of every kind of the reference's PyTorch weights).
"""
