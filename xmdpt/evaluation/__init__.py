"""The `evaluate` stage: generate the held-out pairs (:mod:`xmdpt.evaluation.pairs`), score them
(:mod:`xmdpt.evaluation.scores`, :mod:`xmdpt.evaluation.fid_lpips`) and write metrics, plots, grids and the
pipeline folder (:mod:`xmdpt.evaluation.stage`).
"""
