"""Candidate (target, source) pairs of a DeepFashion root, one reader per layout.

- ``pidm``: ``train_pairs.txt`` / ``test_pairs.txt``, target first, then the candidate sources;
- ``gfla``: ``fasion-resize-pairs-{train,test}.csv``, ``from,to`` = source, target fashion names;
- ``inshop``: the ordered pairs of different images of one identity in the ``img/`` tree, split
  as :mod:`xmdpt.data.deepfashion_split` says.

(:mod:`xmdpt.data.deepfashion` describes the layouts.) A bad row, an unsafe name or a duplicate
becomes a :class:`~xmdpt.data.deepfashion.Problem`; the readers never raise on one.
"""

from __future__ import annotations

import csv
import io
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterator

from xmdpt.data.deepfashion import (
    GFLA_PAIR_FILES,
    IMAGE_DIR,
    IMAGE_EXTENSIONS,
    PIDM_PAIR_FILES,
    SPLIT_LIST_FILES,
    Problem,
    check_relative,
    detect_layout,
    fashion_name_to_path,
    file_exists,
    list_images,
    path_to_fashion_name,
    person_id_of,
    read_text,
)
from xmdpt.data.deepfashion_split import hash_split, read_split_lists

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PairRecord:
    """One (target, source) candidate pair read from the dataset, before any file check."""

    split: str
    person_id: str
    target_path: str
    source_path: str
    row_key: str  # where it came from: "train_pairs.txt:line 3 source 1"

    @property
    def pair_id(self) -> str:
        """``{split}:{source fashion name}_2_{target fashion name}`` (the authors' output naming)."""
        return f"{self.split}:{path_to_fashion_name(self.source_path)}_2_{path_to_fashion_name(self.target_path)}"


@dataclass
class PairsReadout:
    """What a layout reader found: candidate pairs plus the rows it had to reject."""

    layout: str
    pairs: list[PairRecord] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def input_rows(self) -> int:
        return len(self.pairs) + len(self.problems)


def _make_pair(split: str, target: str, source: str, row_key: str) -> PairRecord:
    """Validate one candidate pair's names; raises ``ValueError`` with the reason."""
    target, source = check_relative(target), check_relative(source)
    for role, p in (("target", target), ("source", source)):
        if not p.lower().endswith(IMAGE_EXTENSIONS):
            raise ValueError(f"{role} {p!r} is not an image file ({', '.join(IMAGE_EXTENSIONS)})")
    if target == source:
        raise ValueError(f"source equals target {target!r}")
    person = person_id_of(target)
    path_to_fashion_name(target), path_to_fashion_name(source)  # both must have an In-shop name
    if person_id_of(source) != person:
        raise ValueError(f"source {source!r} and target {target!r} are different identities")
    return PairRecord(split=split, person_id=person, target_path=target, source_path=source, row_key=row_key)


def _dedupe(readout: PairsReadout) -> PairsReadout:
    """Keep the first occurrence of each (split, target, source); later ones become problems."""
    seen: dict[tuple[str, str, str], str] = {}
    kept = []
    for p in readout.pairs:
        key = (p.split, p.target_path, p.source_path)
        if key in seen:
            readout.problems.append(Problem(p.row_key, f"{p.row_key}: duplicate pair (first at {seen[key]})"))
        else:
            seen[key] = p.row_key
            kept.append(p)
    readout.pairs = kept
    return readout


def _pair_files(root: str, files: dict[str, str]) -> Iterator[tuple[str, str, str]]:
    """``(split, file name, text)`` of each pair file of a layout that exists; a missing one is
    logged (its split has no pairs)."""
    for split, fname in files.items():
        if not file_exists(root, fname):
            logger.warning("%s: not found; the %s split has no pairs", fname, split)
            continue
        yield split, fname, read_text(root, fname)


def read_pidm_pairs(root: str) -> PairsReadout:
    """``train_pairs.txt`` / ``test_pairs.txt``: target first, then the candidate sources."""
    out = PairsReadout(layout="pidm")
    for split, fname, text in _pair_files(root, PIDM_PAIR_FILES):
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            items = [x.strip() for x in line.split(",")]
            if len(items) < 2 or any(not x for x in items):
                key = f"{fname}:line {lineno}"
                out.problems.append(Problem(key, f"{key}: malformed row {line[:200]!r} "
                                                 "(expected target,source[,source...])"))
                continue
            for k, src in enumerate(items[1:], start=1):
                key = f"{fname}:line {lineno} source {k}"
                try:
                    out.pairs.append(_make_pair(split, items[0], src, key))
                except ValueError as e:
                    out.problems.append(Problem(key, f"{key}: {e}"))
    return _dedupe(out)


def read_gfla_pairs(root: str) -> PairsReadout:
    """``fasion-resize-pairs-{train,test}.csv``: header ``from,to`` (source, target fashion names)."""
    out = PairsReadout(layout="gfla")
    for split, fname, text in _pair_files(root, GFLA_PAIR_FILES):
        rows = list(csv.reader(io.StringIO(text)))
        if not rows:
            continue
        header = [h.strip() for h in rows[0]]
        if "from" not in header or "to" not in header:
            key = f"{fname}:line 1"
            out.problems.append(Problem(key, f"{key}: header {rows[0]!r} lacks 'from' and 'to' columns"))
            continue
        i_from, i_to = header.index("from"), header.index("to")
        for lineno, row in enumerate(rows[1:], start=2):
            if not row or not any(c.strip() for c in row):
                continue
            key = f"{fname}:line {lineno}"
            if len(row) != len(header):
                out.problems.append(Problem(key, f"{key}: malformed row {','.join(row)[:200]!r} "
                                                 f"({len(row)} fields, header has {len(header)})"))
                continue
            try:
                source = fashion_name_to_path(row[i_from].strip())
                target = fashion_name_to_path(row[i_to].strip())
                out.pairs.append(_make_pair(split, target, source, key))
            except ValueError as e:
                out.problems.append(Problem(key, f"{key}: {e}"))
    return _dedupe(out)


def read_inshop_pairs(root: str, test_fraction: float) -> PairsReadout:
    """Raw ``img/`` tree: all ordered pairs of different images of one identity (within a split)."""
    out = PairsReadout(layout="inshop")
    split_of, list_problems = read_split_lists(root)
    out.problems.extend(list_problems)
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    for path in list_images(root):
        try:
            person = person_id_of(path)
        except ValueError as e:
            logger.warning("skipping %s: %s", path, e)
            continue
        if split_of:
            split = split_of.get(path)
            if split is None:
                logger.warning("skipping %s: in neither %s", path, sorted(SPLIT_LIST_FILES.values()))
                continue
        else:
            split = hash_split(person, test_fraction)
        groups[(split, person)].append(path)
    for (split, _), paths in sorted(groups.items()):
        for target in paths:
            for source in paths:
                if source != target:
                    out.pairs.append(_make_pair(split, target, source, f"{IMAGE_DIR}/ tree: {target} <- {source}"))
    if not split_of:
        logger.info("no %s: split identities by hash (test fraction %.2f)", sorted(SPLIT_LIST_FILES.values()),
                    test_fraction)
    return _dedupe(out)


def read_pairs(root: str, layout: str = "auto", test_fraction: float = 0.2) -> PairsReadout:
    """Candidate pairs of a DeepFashion root in any supported layout (see module docstring)."""
    layout = detect_layout(root, layout)
    logger.info("reading pairs from %s (layout %s)", root, layout)
    if layout == "pidm":
        return read_pidm_pairs(root)
    if layout == "gfla":
        return read_gfla_pairs(root)
    return read_inshop_pairs(root, test_fraction)
