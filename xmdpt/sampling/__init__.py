"""Generation: :class:`XMDPTPipeline` (Python API) and :func:`generate` (``xmdpt generate``).

See :mod:`xmdpt.sampling.folder` for the pipeline folder and :mod:`xmdpt.sampling.inputs` for how
arbitrary photos and pose files are brought into the model's frame.
"""

from xmdpt.sampling.inputs import Pose, PoseError, load_pose_json, parse_pose
from xmdpt.sampling.pipeline import XMDPTPipeline, generate

__all__ = ["Pose", "PoseError", "XMDPTPipeline", "generate", "load_pose_json", "parse_pose"]
