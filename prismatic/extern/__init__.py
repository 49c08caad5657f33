"""Upstream's import paths (``prismatic.extern.hf``), kept so scripts written for OpenVLA-OFT keep working."""
