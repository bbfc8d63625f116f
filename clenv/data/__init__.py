"""Dataset sources (one uint8 tensor per split, loaded once) and batched augmentation."""

from clenv.data.augment import Augmentation
from clenv.data.sources import (DATASETS, Dataset, DatasetNotFoundError, DatasetUnreadableError, Split, clear_cache,
                                default_data_root, load_dataset, make_synthetic)

__all__ = ["Augmentation", "DATASETS", "Dataset", "DatasetNotFoundError", "DatasetUnreadableError", "Split",
           "clear_cache", "default_data_root", "load_dataset", "make_synthetic"]
