"""MLflow pyfunc model, defined from code (no pickled object): the registry logs this file.

Input (a DataFrame; over REST, ``mlflow models serve``'s ``dataframe_split``)::

    {"dataframe_split": {"columns": ["source_image", "pose"],
                         "data": [["<base64 JPEG/PNG>", "{\"format\": \"coco18\", \"image_size\": [256, 176], ...}"]]},
     "params": {"num_steps": 50, "cfg_scale": 2.0, "seed": 0, "square": false, "scheduler": "ddim"}}

- ``source_image``: the person photo, base64 (raw bytes are accepted too, in-process);
- ``pose``: pose JSON text, or a base64 photo to take the pose from.
- ``scheduler`` (param): ``ddim``, ``dpmsolver++`` or ``unipc``; empty: the model's ``sample.scheduler``.

Output column ``image``: the PNG, base64. Row ``i`` uses seed ``seed + i``. The artifact ``model_dir``
is the pipeline folder (:mod:`xmdpt.core.pipeline_folder`).
"""

from __future__ import annotations

import base64
import binascii
import io
import json

import mlflow
from mlflow.pyfunc import PythonModel
from xmdpt.sampling.inputs import parse_pose
from xmdpt.sampling.pipeline import XMDPTPipeline


def _bytes(value, what: str) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    try:
        return base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError) as e:
        raise ValueError(f"{what}: expected a base64-encoded image ({e})") from None


class XMDPTPyfunc(PythonModel):
    def load_context(self, context) -> None:
        self.pipe = XMDPTPipeline.from_pretrained(context.artifacts["model_dir"])

    def predict(self, context, model_input, params=None):
        import pandas as pd

        params = params or {}
        seed = int(params.get("seed", 0) or 0)
        out = []
        for i, row in model_input.reset_index(drop=True).iterrows():
            raw_pose = row["pose"]
            text = raw_pose.decode() if isinstance(raw_pose, (bytes, bytearray)) else str(raw_pose)
            if text.lstrip().startswith("{"):
                pose = parse_pose(json.loads(text), name=f"row {i} pose")
            else:
                pose = self.pipe.load_pose(_bytes(raw_pose, f"row {i} pose"), name=f"row {i} pose")
            img = self.pipe(_bytes(row["source_image"], f"row {i} source_image"), pose,
                            num_steps=params.get("num_steps"), cfg_scale=params.get("cfg_scale"), seed=seed + int(i),
                            square=bool(params.get("square", False)),
                            scheduler=params.get("scheduler") or None)[0]
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            out.append(base64.b64encode(buf.getvalue()).decode())
        return pd.DataFrame({"image": out})


mlflow.models.set_model(XMDPTPyfunc())
