"""Training: the `train` stage (the denoiser) and the `autoencoder` stage (the latent codec).

- :mod:`xmdpt.training.data` — pairs joined with the cached features; ``Collate`` to tensors.
- :mod:`xmdpt.training.step` — ``train_step`` (both loss passes, accumulation, clipping, EMA).
- :mod:`xmdpt.training.checkpoint` — pickle-free checkpoints in the model-folder format.
- :mod:`xmdpt.training.trainer` — the `train` stage: Ray Train V2 ``TorchTrainer``, MLflow, resume.
- :mod:`xmdpt.training.loop` — the optimizer-step loop both networks share.
- :mod:`xmdpt.training.ema` — exponential moving average of the weights.
- :mod:`xmdpt.training.autoencoder` — the `autoencoder` stage: the fit and its measurements.
"""
