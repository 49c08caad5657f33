"""VGGT models: the full model (``vggt.models.vggt``) and its alternating-attention aggregator."""
