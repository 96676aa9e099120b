"""Fingerprints and atomic files."""

from dataclasses import dataclass, field

import numpy as np

from fimo.further.engine import FurtherSettings
from fimo.io import fingerprint, non_default, read_npz, write_npz


def test_settings_at_their_defaults_do_not_enter_fingerprints():
    @dataclass
    class Old:
        lr: float = 0.1

    @dataclass
    class New:  # the same settings after a release added an option
        lr: float = 0.1
        steps: list = field(default_factory=list)

    assert fingerprint(non_default(Old(lr=0.2))) == fingerprint(non_default(New(lr=0.2)))
    assert fingerprint(non_default(New(lr=0.2))) != fingerprint(non_default(New(lr=0.2, steps=[3])))
    assert non_default(FurtherSettings()) == {}
    assert non_default(FurtherSettings(lr=1e-3, betas=(0.8, 0.999))) == {
        "lr": 1e-3,
        "betas": [0.8, 0.999],
    }


def test_fingerprints_see_array_contents_dtypes_and_order():
    a = np.arange(6.0)
    assert fingerprint(a) == fingerprint(a.copy())
    assert fingerprint(a) != fingerprint(a.astype(np.float32))
    assert fingerprint(a, 1) != fingerprint(1, a)
    assert fingerprint({"x": 1, "y": 2}) == fingerprint({"y": 2, "x": 1})


def test_write_npz_leaves_no_temporary_files_and_records_a_checksum(tmp_path):
    import hashlib

    write_npz(tmp_path / "a.npz", x=np.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz", "a.npz.sha256"]
    assert read_npz(tmp_path / "a.npz")["x"].tolist() == [0, 1, 2]
    # sha256sum format: `sha256sum -c a.npz.sha256` checks it
    digest = hashlib.sha256((tmp_path / "a.npz").read_bytes()).hexdigest()
    assert (tmp_path / "a.npz.sha256").read_text() == f"{digest}  a.npz\n"


def test_files_get_the_usual_permissions(tmp_path):
    import os

    from fimo.io import write_text

    old = os.umask(0o022)
    try:
        path = write_text(tmp_path / "report.html", "<html></html>")
    finally:
        os.umask(old)
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)
