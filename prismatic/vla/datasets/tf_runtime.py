"""Lazy, CPU-only TensorFlow for the data pipeline.

TensorFlow is imported only when a data module first needs it (so ``import prismatic`` stays light and
evaluation processes that render with Mesa never load it), and it is hidden from every GPU so that it never
reserves accelerator memory next to the torch model.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from types import ModuleType
from typing import Any

_configured = False


def import_tensorflow(num_threads: int = 0) -> ModuleType:
    """Returns the ``tensorflow`` module, configured on first call: no GPUs, at most ``num_threads`` op threads.

    ``num_threads`` sets TensorFlow's inter- and intra-op pools (0 keeps TensorFlow's default of one per core).
    It only takes effect on the first call in a process, before TensorFlow starts its runtime; the tf.data
    pipelines additionally bound their own thread pools through ``tf.data.Options`` (see ``pipeline.py``).
    """
    global _configured
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    if _configured:
        return tf
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError as error:  # the runtime was started by someone else before this call
        if tf.config.get_visible_devices("GPU"):
            raise RuntimeError(
                "TensorFlow was initialised with a GPU visible before the data pipeline could hide it; build the "
                "RLDS pipeline before running any other TensorFlow code in this process."
            ) from error
    if num_threads > 0:
        try:
            tf.config.threading.set_inter_op_parallelism_threads(num_threads)
            tf.config.threading.set_intra_op_parallelism_threads(num_threads)
        except RuntimeError:
            warnings.warn(
                f"TensorFlow was already running; its op thread pools keep their size (asked for {num_threads}).",
                stacklevel=2,
            )
    _configured = True
    return tf


def import_tensorflow_datasets() -> ModuleType:
    """Returns ``tensorflow_datasets`` after configuring TensorFlow as in ``import_tensorflow``."""
    import_tensorflow()
    import tensorflow_datasets as tfds

    return tfds


def without_autograph(function: Callable[..., Any]) -> Callable[..., Any]:
    """Marks a tf.data map function as plain tensor code, so tracing skips AutoGraph's slow source conversion."""
    return import_tensorflow().autograph.experimental.do_not_convert(function)
