"""Training: the training table (Ray Data), the plain-PyTorch step, checkpoints, the Ray Train trainer.

- :mod:`xmdpt.training.data` — pairs joined with the cached features; ``Collate`` to tensors.
- :mod:`xmdpt.training.step` — ``train_step`` (both loss passes, accumulation, clipping, EMA).
- :mod:`xmdpt.training.checkpoint` — pickle-free checkpoints in the model-folder format.
- :mod:`xmdpt.training.trainer` — the `train` stage: Ray Train V2 ``TorchTrainer``, MLflow, resume.
- :mod:`xmdpt.training.ema` — exponential moving average of the weights.
"""
