"""course_utils: the small package the VAE course's notebooks share.

One concept per module: runtime (device, seeds, quick mode), cache (paths, safe cache files),
data (MNIST, binarization, batches), shapes and scenes (the generated image sets, over procedural),
losses, models, train (the `fit` loop), diagnostics, plots, widgets, metrics, pyro_vae, exercises.
Each notebook writes out the piece it teaches and imports the rest; speed measurement lives in
benchmarks/, outside the package.
"""
from .runtime import get_device, is_quick, scaled, seed_everything

__all__ = ["get_device", "is_quick", "scaled", "seed_everything"]
__version__ = "0.1.0"
