"""Recaptioning and prompt expansion."""
