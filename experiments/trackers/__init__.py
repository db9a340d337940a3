"""Tracker backends and helpers; `experiments.tracking` is the import point for the rest of the project."""
