"""DVC stage ``autoencoder``: fit the small AutoencoderKL (embedded default) or fine-tune the SD VAE's decoder.

Writes ``{artifacts_dir}/autoencoder/manifest.json`` (weights URI, latent scale, config, source),
the DVC metrics ``metrics.json`` (held-out PSNR/SSIM) and the reconstruction grid ``recon.png``
(originals on top, reconstructions below).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional, Sequence

from pipelines.common import stage_main
from xmdpt.core.config import XMDPTConfig
from xmdpt.training.autoencoder import fit_autoencoder
from xmdpt.core.manifests import AutoencoderManifest
from xmdpt.core.storage import filesystem

logger = logging.getLogger("pipelines.autoencoder")


def run(cfg: XMDPTConfig) -> dict:
    manifest = fit_autoencoder(cfg)
    out = Path(cfg.paths.artifacts_dir) / "autoencoder"
    out.mkdir(parents=True, exist_ok=True)
    fs, recon = filesystem(manifest["recon_uri"])
    (out / "recon.png").write_bytes(fs.cat_file(recon))
    (out / "metrics.json").write_text(json.dumps(manifest["metrics"], indent=2, sort_keys=True) + "\n")
    manifest = AutoencoderManifest.coerce(manifest).write(out / "manifest.json")
    logger.info("autoencoder (%s): latent scale %.5f, metrics %s -> %s", manifest["source"],
                manifest["latent_scale"], manifest["metrics"], manifest["uri"])
    return manifest


def main(argv: Optional[Sequence[str]] = None) -> dict:
    return stage_main("autoencoder", run, argv)


if __name__ == "__main__":
    main()
