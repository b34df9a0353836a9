"""Data sources, video IO and input pipelines."""
