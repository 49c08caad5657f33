"""VGGT (Visual Geometry Grounded Transformer) re-implemented to load facebook/VGGT-1B ``model.pt`` unchanged.

Import paths follow upstream: ``vggt.models.vggt.VGGT``, ``vggt.models.aggregator.Aggregator`` and
``vggt.utils.load_fn.load_and_preprocess_images``. Spatial Forcing uses the aggregator as its frozen 3D teacher.
"""
