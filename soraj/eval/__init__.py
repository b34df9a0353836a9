"""Evaluation metrics and the shapes probe."""
