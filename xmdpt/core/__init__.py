"""The base every other package stands on: no import of any other ``xmdpt`` package.

- :mod:`xmdpt.core.config` (with :mod:`~xmdpt.core.config_stages` and :mod:`~xmdpt.core.typed_config`) —
  the typed config tree that maps one-to-one onto ``params.yaml``; :mod:`~xmdpt.core.stage_config`
  writes what each DVC stage reads.
- :mod:`xmdpt.core.storage` — local / ``s3://`` paths through fsspec, project-relative paths.
- :mod:`xmdpt.core.contracts` and :mod:`~xmdpt.core.manifests` — the typed stage manifests.
- :mod:`xmdpt.core.tracking` — MLflow tracking URIs and lineage; :mod:`~xmdpt.core.model_resolver` —
  ``models:/`` URIs to a local pipeline folder; :mod:`~xmdpt.core.pipeline_folder` — that folder's format.
- :mod:`xmdpt.core.ray_utils` — starting or joining Ray; :mod:`~xmdpt.core.precision`,
  :mod:`~xmdpt.core.batch_invariance`, :mod:`~xmdpt.core.state_dict` — torch numerics and weights.
"""
