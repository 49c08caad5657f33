"""Image loading and preprocessing for VGGT."""
