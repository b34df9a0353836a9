"""soraj: a JAX/Flax, TPU-first Sora-style text-to-video system."""
