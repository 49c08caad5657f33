"""RLDS data for training: reading (tf.data, no dlimp), statistics, batch transform and collator, writers.

TensorFlow is imported lazily, by the functions that need it; importing this package does not load it.
"""

from prismatic.vla.datasets.batch_transform import RLDSBatchTransform
from prismatic.vla.datasets.collator import PaddedCollatorForActionPrediction
from prismatic.vla.datasets.config import ImageAugConfig, RLDSConfig
from prismatic.vla.datasets.dataset import RLDSDataset
from prismatic.vla.datasets.statistics import load_dataset_statistics, save_dataset_statistics

__all__ = [
    "ImageAugConfig",
    "PaddedCollatorForActionPrediction",
    "RLDSBatchTransform",
    "RLDSConfig",
    "RLDSDataset",
    "load_dataset_statistics",
    "save_dataset_statistics",
]
