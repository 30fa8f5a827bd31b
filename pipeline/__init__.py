"""One-shot face video re-enactment in StyleGAN2's hybrid latent space: the library behind the DVC stages."""

__version__ = "0.1.0"
