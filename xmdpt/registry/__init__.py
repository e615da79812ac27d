"""The `register` stage: the pipeline folder as an MLflow pyfunc model, with lineage and aliases
(:mod:`xmdpt.registry.register`).
"""
