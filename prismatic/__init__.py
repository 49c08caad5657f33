"""Spatial Forcing on OpenVLA-OFT: models, data pipeline, training and the plug-and-play alignment module."""
