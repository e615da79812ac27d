"""DVC stage `register`: log the evaluated model to MLflow, register a version, move the aliases.

``python -m pipelines.register [--params params.yaml]`` — see :mod:`xmdpt.registry.register`.
"""

from __future__ import annotations

from pipelines.common import stage_main
from xmdpt.core.config import XMDPTConfig
from xmdpt.registry.register import register_stage


def run(cfg: XMDPTConfig) -> dict:
    return register_stage(cfg)


def main(argv=None):
    return stage_main("register", run, argv)


if __name__ == "__main__":
    main()
