"""A damaged Parquet file of a stage table is detected, with the file named, when the next stage
reads it — never skipped or decoded into wrong values."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from parquet_damage import zero_inside_a_page as _zero_inside_a_page

from xmdpt.data import schema
from xmdpt.data.quarantine import PART_NAME, CorruptTableError, read_table, write_table

pytestmark = pytest.mark.ray


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _fewer_rows(path: Path) -> None:
    """A valid Parquet file that lost its last row (e.g. overwritten by a stale copy)."""
    table = pq.read_table(path)
    pq.write_table(table.slice(0, table.num_rows - 1), path)


@pytest.mark.parametrize("damage", [_truncate, _zero_inside_a_page, _fewer_rows],
                         ids=["truncated", "zeroed-page-bytes", "row-lost"])
def test_corrupt_pairs_shard_fails_the_poses_stage_naming_the_file(pairs_run, keep_files, damage):
    from xmdpt.data.poses import extract_poses

    cfg, manifest = pairs_run
    entry = manifest["tables"]["images"]
    shard = Path(entry["uri"]) / PART_NAME
    assert read_table(entry["uri"], rows=entry["rows"]).num_rows == entry["rows"] > 0
    keep_files(shard)
    if damage is _zero_inside_a_page:
        damage(shard, schema.IMAGE_PATH)
    else:
        damage(shard)
    with pytest.raises(CorruptTableError) as err:
        extract_poses(cfg)
    named = str(shard) if damage is not _fewer_rows else entry["uri"]
    assert named in str(err.value) and "rerun the stage" in str(err.value)


def test_page_checksums_catch_what_a_plain_read_decodes_silently(tmp_path):
    """Why the checksums: zeroed bytes in a string page still decode (to wrong values) without them."""
    paths = [f"img/MEN/Denim/id_{i:08d}/01_1_front.jpg" for i in range(200)]
    table = pa.table({schema.IMAGE_PATH: paths})
    entry = write_table(str(tmp_path), "t", table)
    shard = tmp_path / "t" / PART_NAME
    _zero_inside_a_page(shard, schema.IMAGE_PATH)
    silent = pq.read_table(shard)  # no verification: reads, but the values changed
    assert silent.num_rows == 200 and silent.column(0).to_pylist() != paths
    with pytest.raises(CorruptTableError, match="CRC"):
        read_table(entry["uri"], rows=entry["rows"])


def test_corrupt_validate_table_fails_the_validate_reader(pairs_run, keep_files):
    """`validate` reads the pairs/poses tables through read_table: a truncated poses shard is named."""
    from xmdpt.data.poses import extract_poses
    from xmdpt.data.validation import validate_dataset

    cfg, _ = pairs_run
    poses = extract_poses(cfg)
    shard = Path(poses["tables"]["poses"]["uri"]) / PART_NAME
    keep_files(shard)
    _truncate(shard)
    with pytest.raises(CorruptTableError, match=str(shard)):
        validate_dataset(cfg)


def test_corrupt_validated_poses_table_fails_the_features_reader(tmp_path):
    """The `features` (and `evaluate`) stages read the validated poses table via encoders.inputs."""
    from xmdpt.encoders.inputs import read_image_table

    validate = write_validated_poses(tmp_path)
    shard = Path(validate["tables"]["poses"]["uri"]) / PART_NAME
    _fewer_rows(shard)  # today: read as 63 images, no error, although the manifest says 64
    with pytest.raises(CorruptTableError, match=validate["tables"]["poses"]["uri"]):
        read_image_table(validate)


def write_validated_poses(root: Path, n: int = 64) -> dict:
    """A `validate`-shaped manifest whose poses table was written by write_table (checksums on)."""
    rows = {f.name: [] for f in schema.POSES_SCHEMA}
    for i in range(n):
        for k, v in ((schema.IMAGE_PATH, f"img/MEN/Denim/id_{i:08d}/01_1_front.jpg"), (schema.SPLIT, "train"),
                     (schema.HEIGHT, 256), (schema.WIDTH, 176), (schema.KEYPOINTS, [float(i)] * 36),
                     (schema.CONFIDENCE, [1.0] * 18), (schema.POSE_SOURCE, "annotation")):
            rows[k].append(v)
    prefix = str(root / "store" / "validate" / "x")
    from xmdpt.core.manifests import TableEntry, ValidateManifest, ValidateTables

    entry = TableEntry(**write_table(prefix, "poses", pa.Table.from_pydict(rows, schema=schema.POSES_SCHEMA)))
    unused = TableEntry(uri=f"{prefix}/unused", rows=0)
    return ValidateManifest(uri=prefix, params={}, dataset_root=str(root), layout="pidm", inputs={},
                            tables=ValidateTables(pairs=unused, poses=entry, quarantine=unused),
                            counts={"input_rows": n, "valid": n, "quarantined": 0}).to_dict()
