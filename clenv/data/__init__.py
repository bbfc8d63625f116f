"""Dataset sources (one uint8 tensor per split, loaded once) and batched augmentation."""

from clenv.data.augment import Augmentation
from clenv.data.sources import (DATASETS, Dataset, DatasetNotFoundError, DatasetUnreadableError, Split, clear_cache,
                                default_data_root, load_dataset, make_synthetic)

#: Dataset-loading kwargs that say where the data live, not what they are: two envs (or a checkpoint and the env
#: that resumes it, or two run specs) that differ only in these hold the same data.
LOCATION_KWARGS = ("data_root", "download")

__all__ = ["Augmentation", "LOCATION_KWARGS", "DATASETS", "Dataset", "DatasetNotFoundError", "DatasetUnreadableError",
           "Split", "clear_cache", "default_data_root", "load_dataset", "make_synthetic"]
