"""Built-in datasets (loaded offline from files shipped with fimo) and the dataset type.

``DATASETS`` maps each built-in dataset's name to its loader; every loader returns
``(train, test)`` when called without arguments. ``fashion_mnist`` needs the Debian
package ``dataset-fashion-mnist`` and ``reviews`` the extra ``fimo[text]``; without them
their loaders raise :class:`fimo.errors.InputError` saying so. :func:`from_torch_dataset` and
:func:`from_hf_dataset` bring the user's own data in (:mod:`fimo.data.convert`).
"""

from fimo.data.adult import load_adult
from fimo.data.base import ArrayDataset, Fields
from fimo.data.concrete import load_concrete
from fimo.data.convert import from_hf_dataset, from_torch_dataset
from fimo.data.credit import load_credit
from fimo.data.diabetes import load_diabetes
from fimo.data.mnist import fashion_mnist_available, load_fashion_mnist, load_mnist, read_idx
from fimo.data.reviews import WordPieceTokenizer, load_reviews

DATASETS = {
    "adult": load_adult,
    "credit": load_credit,
    "concrete": load_concrete,
    "diabetes": load_diabetes,
    "mnist": load_mnist,
    "fashion_mnist": load_fashion_mnist,
    "reviews": load_reviews,
}

__all__ = [
    "DATASETS",
    "ArrayDataset",
    "Fields",
    "WordPieceTokenizer",
    "fashion_mnist_available",
    "from_hf_dataset",
    "from_torch_dataset",
    "load_adult",
    "load_concrete",
    "load_credit",
    "load_diabetes",
    "load_fashion_mnist",
    "load_mnist",
    "load_reviews",
    "read_idx",
]
