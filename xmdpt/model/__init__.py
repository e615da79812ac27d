"""X-MDPT network: TDNet (denoiser), CANet (condition aggregation), MIPNet (masked side-interpolator)."""

from xmdpt.model.xmdpt import XMDPT, guidance_scale

__all__ = ["XMDPT", "guidance_scale"]
