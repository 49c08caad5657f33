"""Spatial Forcing on OpenVLA-OFT: models, data pipeline, training and the plug-and-play alignment module."""

import logging

# bitsandbytes (imported by peft and transformers whenever it is installed) warns on every import that an optional
# CPU kernel from the Hugging Face hub is missing (it uses its built-in CPU path instead), and its import makes
# torch warn that triton (unused here) is missing: one line each on every CLI's stderr, about nothing the user does.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
logging.getLogger("torch.utils.flop_counter").setLevel(logging.ERROR)
