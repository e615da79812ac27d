"""Frozen encoders: what turns an image into what the denoiser sees.

- :mod:`xmdpt.encoders.vae` — the latent codec (diffusers ``AutoencoderKL``): the SD VAE with a
  fine-tuned decoder, or a small autoencoder fitted by the `autoencoder` stage
  (:mod:`xmdpt.training.autoencoder`).
- :mod:`xmdpt.encoders.dino` — DINOv2 token encoders (timm), or seeded random-feature stand-ins;
  :mod:`xmdpt.encoders.dino_backbone` builds the backbones and finds their weights.
- :mod:`xmdpt.encoders.encoding` — what is computed per image (augmentation, the three encoders).
- :mod:`xmdpt.encoders.inputs` — the validated image table and the image files it names.

The `features` stage (:mod:`xmdpt.features`) runs them over the dataset. Heavy imports (torch, timm,
diffusers) happen inside the submodules.
"""
