"""DVC stage `evaluate`: generate the test pairs with the EMA weights; grid.png + metrics.json.

``python -m pipelines.evaluate [--params params.yaml]`` — see :mod:`xmdpt.evaluation.stage`.
"""

from __future__ import annotations

from pipelines.common import stage_main
from xmdpt.core.config import XMDPTConfig
from xmdpt.evaluation.stage import evaluate_stage


def run(cfg: XMDPTConfig) -> dict:
    return evaluate_stage(cfg)


def main(argv=None):
    return stage_main("evaluate", run, argv)


if __name__ == "__main__":
    main()
