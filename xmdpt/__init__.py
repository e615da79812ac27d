"""X-MDPT: cross-view masked diffusion transformers for pose-guided person image synthesis."""
__version__ = "0.1.0"
