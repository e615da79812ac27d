"""Generation: :class:`XMDPTPipeline` (Python API), :func:`generate` (``xmdpt generate``), batch
generation with Ray Data (:mod:`xmdpt.sampling.batch`, ``xmdpt generate-batch``) and the MLflow pyfunc
model (:mod:`xmdpt.sampling.mlflow_model`).

See :mod:`xmdpt.core.pipeline_folder` for the pipeline folder and :mod:`xmdpt.sampling.inputs` for how
arbitrary photos and pose files are brought into the model's frame.
"""

from xmdpt.sampling.inputs import Pose, PoseError, load_pose_json, parse_pose
from xmdpt.sampling.pipeline import XMDPTPipeline, generate

__all__ = ["Pose", "PoseError", "XMDPTPipeline", "generate", "load_pose_json", "parse_pose"]
