"""Rectified-flow diffusion as pure functions of a denoiser."""
