"""The `features` stage: every validated image and its flip through the frozen encoders, into a
Parquet feature cache (:mod:`xmdpt.features.stage`), checked with Great Expectations
(:mod:`xmdpt.features.validation`).
"""
