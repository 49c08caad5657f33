"""One training loop for OpenVLA-OFT fine-tuning, with or without Spatial Forcing."""
