"""Diffusion maths apart from the network: schedule, losses, samplers."""

from xmdpt.diffusion.gaussian import GaussianDiffusion

__all__ = ["GaussianDiffusion"]
