"""The fit data: its manifest (origins, licenses, sha256) and ``lasa data fetch``."""

from .manifest import DataFile, Dataset, cache_data_dir, dataset, datasets, select

__all__ = ["DataFile", "Dataset", "cache_data_dir", "dataset", "datasets", "select"]
