"""Column names and Arrow schemas of every table the pipeline writes.

One module, imported by the writers (stages), the readers (training, evaluation) and the
Great Expectations suites in ``data_specs/`` — no column name is spelled anywhere else.

Conventions
-----------
- Image paths are POSIX paths **relative to the dataset root** (``img/MEN/Denim/id_00000080/01_1_front.jpg``);
  they never contain ``..`` and are never absolute (see ``xmdpt.data.deepfashion.safe_join``).
- Keypoints are COCO-18 / OpenPose order, ``(x, y)`` pixels in the frame of the image file
  itself (``height`` x ``width``), ``-1`` for missing, flattened to 36 floats ``[x0, y0, x1, y1, …]``.
- Tensors in Parquet are stored as raw little-endian bytes (``binary``) with their dtype and
  shape recorded in the stage manifest.
"""

from __future__ import annotations

import pyarrow as pa

NUM_KEYPOINTS = 18
SPLITS = ("train", "test")

# COCO-18 / OpenPose keypoint names, in order.
KEYPOINT_NAMES = (
    "nose", "neck", "r_shoulder", "r_elbow", "r_wrist", "l_shoulder", "l_elbow", "l_wrist",
    "r_hip", "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle", "r_eye", "l_eye", "r_ear", "l_ear",
)
# index permutation that swaps left and right (used for horizontal flips)
FLIP_PERMUTATION = (0, 1, 5, 6, 7, 2, 3, 4, 11, 12, 13, 8, 9, 10, 15, 14, 17, 16)

# ---- pairs table (stage `pairs`) -------------------------------------------------------------
PAIR_ID = "pair_id"  # str, stable: "{split}:{source fashion name}_2_{target fashion name}"
SPLIT = "split"  # "train" | "test"
PERSON_ID = "person_id"  # str, e.g. "MEN/Denim/id_00000080"
TARGET_PATH = "target_path"
SOURCE_PATH = "source_path"

PAIRS_SCHEMA = pa.schema([
    pa.field(PAIR_ID, pa.string(), nullable=False),
    pa.field(SPLIT, pa.string(), nullable=False),
    pa.field(PERSON_ID, pa.string(), nullable=False),
    pa.field(TARGET_PATH, pa.string(), nullable=False),
    pa.field(SOURCE_PATH, pa.string(), nullable=False),
])

# ---- poses table (stage `poses`) -------------------------------------------------------------
IMAGE_PATH = "image_path"
HEIGHT = "height"
WIDTH = "width"
KEYPOINTS = "keypoints"  # list<float32>[36]: x0, y0, x1, y1, … (-1 = missing)
CONFIDENCE = "confidence"  # list<float32>[18]: 1.0 for annotations, visibility for the estimator, 0 missing
POSE_SOURCE = "pose_source"  # "annotation" | "estimator"

POSE_SOURCES = ("annotation", "estimator")

POSES_SCHEMA = pa.schema([
    pa.field(IMAGE_PATH, pa.string(), nullable=False),
    pa.field(SPLIT, pa.string(), nullable=False),
    pa.field(HEIGHT, pa.int32(), nullable=False),
    pa.field(WIDTH, pa.int32(), nullable=False),
    pa.field(KEYPOINTS, pa.list_(pa.float32(), 2 * NUM_KEYPOINTS), nullable=False),
    pa.field(CONFIDENCE, pa.list_(pa.float32(), NUM_KEYPOINTS), nullable=False),
    pa.field(POSE_SOURCE, pa.string(), nullable=False),
])

# ---- quarantine table (any stage) ------------------------------------------------------------
STAGE = "stage"
ROW_KEY = "row_key"  # what identifies the bad row: a path, "file.csv:line 17", a pair id
REASON = "reason"  # human-readable, names the file/row and the problem

QUARANTINE_SCHEMA = pa.schema([
    pa.field(STAGE, pa.string(), nullable=False),
    pa.field(ROW_KEY, pa.string(), nullable=False),
    pa.field(REASON, pa.string(), nullable=False),
])

# ---- feature cache (stage `features`) --------------------------------------------------------
FLIP = "flip"  # bool: features of the horizontally flipped image (keypoints mirrored, L/R swapped)
LATENT_MEAN = "latent_mean"  # bytes fp16 (C, h, w): VAE posterior mean (unscaled)
LATENT_STD = "latent_std"  # bytes fp16 (C, h, w): VAE posterior std (unscaled)
IMAGE_TOKENS = "image_tokens"  # bytes fp16 (S, Dr): image encoder [CLS; patches]
POSE_TOKENS = "pose_tokens"  # bytes fp16 (S, Dp): pose encoder on the image's own rendered skeleton

FEATURE_TENSORS = (LATENT_MEAN, LATENT_STD, IMAGE_TOKENS, POSE_TOKENS)

FEATURES_SCHEMA = pa.schema([
    pa.field(IMAGE_PATH, pa.string(), nullable=False),
    pa.field(FLIP, pa.bool_(), nullable=False),
    pa.field(SPLIT, pa.string(), nullable=False),
    pa.field(KEYPOINTS, pa.list_(pa.float32(), 2 * NUM_KEYPOINTS), nullable=False),  # in the (flipped) image frame
    *[pa.field(name, pa.binary(), nullable=False) for name in FEATURE_TENSORS],
])
