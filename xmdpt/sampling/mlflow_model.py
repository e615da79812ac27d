"""MLflow pyfunc model, defined from code (no pickled object): the registry logs this file.

Input DataFrame columns: ``source_image`` (encoded image bytes), ``pose`` (pose JSON text);
params ``num_steps``, ``cfg_scale``, ``seed``. Output column ``image``: PNG bytes.
The artifact ``model_dir`` is the pipeline folder (:mod:`xmdpt.sampling.folder`).
"""

from __future__ import annotations

import io
import json

import mlflow
from mlflow.pyfunc import PythonModel


class XMDPTPyfunc(PythonModel):
    def load_context(self, context) -> None:
        from xmdpt.sampling.pipeline import XMDPTPipeline

        self.pipe = XMDPTPipeline.from_pretrained(context.artifacts["model_dir"])

    def predict(self, context, model_input, params=None):
        import pandas as pd

        from xmdpt.sampling.inputs import parse_pose

        params = params or {}
        out = []
        for i, row in model_input.reset_index(drop=True).iterrows():
            pose = parse_pose(json.loads(row["pose"]), name=f"row {i} pose")
            img = self.pipe(bytes(row["source_image"]), pose, num_steps=params.get("num_steps"),
                            cfg_scale=params.get("cfg_scale"), seed=int(params.get("seed", 0)))[0]
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            out.append(buf.getvalue())
        return pd.DataFrame({"image": out})


mlflow.models.set_model(XMDPTPyfunc())
