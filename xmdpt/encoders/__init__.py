"""Frozen encoders and the feature cache.

- :mod:`xmdpt.encoders.vae` — the latent codec (diffusers ``AutoencoderKL``): the SD VAE with a
  fine-tuned decoder, or a small autoencoder fitted here (embedded default).
- :mod:`xmdpt.encoders.autoencoder_fit` — the `autoencoder` stage: the fit and its measurements.
- :mod:`xmdpt.encoders.dino` — DINOv2 token encoders (timm), or seeded random-feature stand-ins;
  :mod:`xmdpt.encoders.dino_backbone` builds the backbones and finds their weights.
- :mod:`xmdpt.encoders.encoding` — what is computed per image (augmentation, the three encoders).
- :mod:`xmdpt.encoders.features` — the `features` stage: Ray Data actor pools that encode every
  image and its horizontal flip into fp16 Parquet shards.
- :mod:`xmdpt.encoders.cache_validation` — Great Expectations checks of the cache.

Heavy imports (torch, timm, diffusers, ray, great_expectations) happen inside the submodules.
"""
