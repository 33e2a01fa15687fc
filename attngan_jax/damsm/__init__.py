"""The DAMSM (paper Sec. 3.3): the bidirectional-LSTM text encoder, the image encoders (Inception-v3 regions or a
small CNN for shapes), the word-region attention losses, and its pretraining (config, optimizer, trainer).
Entry points: attngan_jax.pretrain_damsm and attngan_jax.evaluate_damsm."""
