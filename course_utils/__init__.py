"""course_utils: the small package the VAE course's notebooks share.

One concept per module: runtime (device, seeds, quick mode), data (MNIST and the
procedural image sets), losses, models, train (the `fit` loop), diagnostics, plots,
widgets. Each notebook writes out the piece it teaches and imports the rest.
"""
from .runtime import get_device, is_quick, scaled, seed_everything

__all__ = ["get_device", "is_quick", "scaled", "seed_everything"]
__version__ = "0.1.0"
