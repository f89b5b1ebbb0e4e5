"""Scoring and applying trained models: inference on image files, the scorers."""
