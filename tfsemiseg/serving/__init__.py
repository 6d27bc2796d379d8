"""Serving: SavedModel export and NIfTI prediction through the exported model."""
