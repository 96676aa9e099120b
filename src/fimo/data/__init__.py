"""Built-in datasets (loaded offline from files shipped with fimo) and the dataset type."""

from fimo.data.adult import load_adult
from fimo.data.base import ArrayDataset

__all__ = ["ArrayDataset", "load_adult"]
