"""Train/test split of a raw DeepFashion ``img/`` tree (the ``inshop`` layout).

``train.lst`` / ``test.lst`` (one flattened fashion name per line) decide when present; otherwise
an identity's split follows from a hash of its id (:func:`hash_split`), so the same identity always
lands in the same split.
"""

from __future__ import annotations

import hashlib

from xmdpt.data.deepfashion import SPLIT_LIST_FILES, Problem, fashion_name_to_path, file_exists, read_text


def read_split_lists(root: str) -> tuple[dict[str, str], list[Problem]]:
    """``train.lst`` / ``test.lst`` (flattened names) -> ``{image path: split}`` (empty if absent)."""
    split_of: dict[str, str] = {}
    problems: list[Problem] = []
    for split, fname in SPLIT_LIST_FILES.items():
        if not file_exists(root, fname):
            continue
        for lineno, line in enumerate(read_text(root, fname).splitlines(), start=1):
            name = line.strip()
            if not name:
                continue
            try:
                split_of.setdefault(fashion_name_to_path(name), split)
            except ValueError as e:
                problems.append(Problem(f"{fname}:line {lineno}", f"{fname}:line {lineno}: {e}"))
    return split_of, problems


def hash_split(person_id: str, test_fraction: float) -> str:
    """Deterministic identity split: ``test`` iff sha256(person id) falls below ``test_fraction``."""
    u = int(hashlib.sha256(person_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "test" if u < test_fraction else "train"
