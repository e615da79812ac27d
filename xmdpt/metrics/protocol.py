"""The two evaluation protocols the DeepFashion tables were measured with (PAPER.md §3).

``evaluate.protocol`` picks one as a unit; ``metrics.json`` records the choice and every rule in it.

=================  ===========================================  ==========================================
rule               ``pidm`` (PIDM ``utils/metrics.py``)          ``cfld`` (CFLD ``models/metrics.py``,
                                                                 ``pose_transfer_test.py``)
=================  ===========================================  ==========================================
test pairs         one source per target (a ``test_pairs.txt``  every pair row (``fasion-resize-pairs-
                   line), drawn with ``sample.seed``             test.csv``)
resize to 256x176  ``cv2.resize`` bilinear (INTER_LINEAR)       bicubic with antialiasing, uint8 (PIL)
SSIM_256           Gaussian σ 1.2, ``data_range =               Gaussian σ 1.5, same data range
                   pred.max() - pred.min()`` on 0–255
FID real set       every ``train.lst`` image                    every ``train.lst`` image
Inception input    torchvision ``transform_input`` affine on    the same
                   [0, 1], bilinear to 299
=================  ===========================================  ==========================================
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Protocol", "PROTOCOLS", "get_protocol"]


@dataclass(frozen=True)
class Protocol:
    name: str
    test_pairs: str  # one_per_target | every_row
    resize: str  # cv2_bilinear | pil_bicubic
    ssim_256_sigma: float
    follows: str

    def describe(self) -> dict[str, Any]:
        return {**asdict(self), "ssim_256_data_range": "pred.max() - pred.min() on the 0-255 scale",
                "fid_real_set": "train.lst when the dataset has one, else the train split of the validated images",
                "inception_input": "[0, 1], bilinear to 299, torchvision transform_input affine (ImageNet mean/std)"}


PROTOCOLS = {
    "pidm": Protocol("pidm", "one_per_target", "cv2_bilinear", 1.2, "PIDM utils/metrics.py, utils/inception.py"),
    "cfld": Protocol("cfld", "every_row", "pil_bicubic", 1.5, "CFLD models/metrics.py, pose_transfer_test.py"),
}


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise ValueError(f"evaluate.protocol: unknown protocol {name!r}; expected one of {sorted(PROTOCOLS)}")
    return PROTOCOLS[name]
