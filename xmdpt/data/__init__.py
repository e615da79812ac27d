"""Datasets and the data stages: DeepFashion layouts, images and keypoints, and the `pairs`,
`poses` and `validate` stages (Ray Data, quarantine of bad rows, Great Expectations).
"""
