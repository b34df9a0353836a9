"""Models: VAE, diffusion transformer, text encoders and their layers."""
