"""Upstream's import path of the collator (``prismatic.util.data_utils``); the code lives in prismatic.vla.datasets."""

from prismatic.vla.datasets.collator import PaddedCollatorForActionPrediction

__all__ = ["PaddedCollatorForActionPrediction"]
