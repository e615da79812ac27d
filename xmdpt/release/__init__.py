"""The authors' released checkpoints, converted into a pipeline folder (``xmdpt import-official``,
:mod:`xmdpt.release.official`).
"""
