"""Operations around the method: storage, stage manifests and configs, preflight checks, Ray start-up and
cluster submission, MLflow tracking and registry, evaluation orchestration and serving.

The paper's method and its data live beside this package (``xmdpt.model``, ``xmdpt.diffusion``,
``xmdpt.sampling``, ``xmdpt.encoders``, ``xmdpt.training``, ``xmdpt.data``, ``xmdpt.metrics``);
synthetic data generation in ``xmdpt.synth``.
"""
