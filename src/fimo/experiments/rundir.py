"""The run directory: every file of a run is named here, and read and written through here.

Layout (DESIGN.md ◆ Runs are data)::

    config.toml          the resolved settings
    manifest.json        fingerprints of data, model, gold standard and scores; run times
                         (this invocation's, and the work summed over every invocation); the
                         evaluation's settings and the scores brought in with `fimo compare`
    model/final.pt       the final weights (state dict; loaded with weights_only=True)
    model/meta.json      the final-training record and its fingerprint
    model/seconds.json   what training the final weights took (wall and CPU seconds)
    further/             fingerprint.json, shards/seed-SSSSS_lo-AAAAA-BBBBB.npz (and
                         seed-SSSSS_gr-AAAAA-BBBBB.npz, the group runs of [groups]), gold.npz
                         and its stamp gold.json (the shard store's folder,
                         :mod:`fimo.further.store`)
    scores/<name>.npz    one Scores matrix per method, or brought in with `fimo compare`
    metrics/<table>.csv  the evaluation's tables (and .parquet with pyarrow)
    plots/               PNG and SVG figures, and fingerprint.json of what they were drawn from
    report.html          one self-contained page
    attribution/<name>.npz   `fimo attribute`'s scores of every training instance for chosen
                         test instances (and <name>.sem.npz, their seed-to-seed standard error)
    attribution.html     `fimo attribute`'s page of the most helpful and harmful instances
    .lock                held while a process works in the directory
    <file>.sha256        the checksum of each .npz, .pt and .csv file (:mod:`fimo.io`)

Scores in ``scores/`` belong to the run when they are one of its methods (and carry the
fingerprint the manifest records for them) or were brought in with ``fimo compare``
(``settings["origin"] == "external"``); any other file there is left out, with a note.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pickle
import platform
import re
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fimo.errors import InputError, check_choice
from fimo.io import (
    TEMPORARY_NAME,
    DamagedFileError,
    atomic_write,
    checksum_matches,
    checksum_path,
    read_small_text,
    remove_temporaries,
    verify_folder,
    write_json,
    write_text,
)
from fimo.scores import Scores

#: names a `fimo compare` matrix may take (it becomes scores/<name>.npz)
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class RunFiles:
    """What :meth:`RunDir.load` found in a run directory.

    >>> files = RunFiles(Path("runs/x"), gold=None, scores={}, config=None, settings={}, manifest={})
    >>> files.train is None, files.notes
    (True, [])
    """

    path: Path
    gold: object
    scores: dict
    config: object | None
    settings: dict
    manifest: dict
    train: object | None = None
    test: object | None = None
    notes: list[str] = field(default_factory=list)


class RunDir:
    """One run directory: the path of each of its files, and reading and writing them.

    >>> import tempfile
    >>> run = RunDir(tempfile.mkdtemp())
    >>> run.scores_file("grad_dot").relative_to(run.path).as_posix()
    'scores/grad_dot.npz'
    >>> run.write_manifest({"model": {"test_loss": 0.5}})
    >>> run.read_manifest()
    {'model': {'test_loss': 0.5}}
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # -- the files ---------------------------------------------------------------------------
    @property
    def config_file(self) -> Path:
        """The resolved settings.

        >>> RunDir("runs/x").config_file.as_posix()
        'runs/x/config.toml'
        """
        return self.path / "config.toml"

    @property
    def manifest_file(self) -> Path:
        """Fingerprints, timings and the evaluation's settings.

        >>> RunDir("runs/x").manifest_file.as_posix()
        'runs/x/manifest.json'
        """
        return self.path / "manifest.json"

    @property
    def model_dir(self) -> Path:
        """The final model's folder.

        >>> RunDir("runs/x").model_dir.as_posix()
        'runs/x/model'
        """
        return self.path / "model"

    @property
    def final_weights(self) -> Path:
        """The final weights (a state dict).

        >>> RunDir("runs/x").final_weights.as_posix()
        'runs/x/model/final.pt'
        """
        return self.model_dir / "final.pt"

    @property
    def model_meta(self) -> Path:
        """The final-training record and its fingerprint.

        >>> RunDir("runs/x").model_meta.as_posix()
        'runs/x/model/meta.json'
        """
        return self.model_dir / "meta.json"

    @property
    def final_seconds(self) -> Path:
        """What training the final weights took (wall and CPU seconds), written with them.

        >>> RunDir("runs/x").final_seconds.as_posix()
        'runs/x/model/seconds.json'
        """
        return self.model_dir / "seconds.json"

    def read_final_seconds(self) -> dict | None:
        """``model/seconds.json`` (``{"wall", "cpu"}``), or None when absent or damaged (a
        model trained before it was recorded).

        >>> import tempfile
        >>> run = RunDir(tempfile.mkdtemp())
        >>> print(run.read_final_seconds())
        None
        >>> _ = write_json(run.final_seconds, {"wall": 2.5, "cpu": 2.0})
        >>> run.read_final_seconds()
        {'cpu': 2.0, 'wall': 2.5}
        """
        try:
            seconds = json.loads(read_small_text(self.final_seconds))
        except (OSError, ValueError):
            return None
        ok = isinstance(seconds, dict) and {"wall", "cpu"} <= set(seconds)
        return seconds if ok else None

    @property
    def further(self) -> Path:
        """The shard store's folder (its files: :mod:`fimo.further.store`).

        >>> RunDir("runs/x").further.as_posix()
        'runs/x/further'
        """
        return self.path / "further"

    @property
    def gold_file(self) -> Path:
        """The assembled gold standard.

        >>> RunDir("runs/x").gold_file.as_posix()
        'runs/x/further/gold.npz'
        """
        return self.further / _store().GOLD

    @property
    def scores_dir(self) -> Path:
        """One Scores file per method.

        >>> RunDir("runs/x").scores_dir.as_posix()
        'runs/x/scores'
        """
        return self.path / "scores"

    def scores_file(self, name: str) -> Path:
        """The Scores file of method (or `fimo compare` name) ``name``.

        >>> RunDir("runs/x").scores_file("grad_dot").as_posix()
        'runs/x/scores/grad_dot.npz'
        """
        return self.scores_dir / f"{name}.npz"

    @property
    def metrics_dir(self) -> Path:
        """The evaluation's tables.

        >>> RunDir("runs/x").metrics_dir.as_posix()
        'runs/x/metrics'
        """
        return self.path / "metrics"

    @property
    def plots_dir(self) -> Path:
        """The figures.

        >>> RunDir("runs/x").plots_dir.as_posix()
        'runs/x/plots'
        """
        return self.path / "plots"

    @property
    def plots_fingerprint(self) -> Path:
        """What the figures were drawn from.

        >>> RunDir("runs/x").plots_fingerprint.as_posix()
        'runs/x/plots/fingerprint.json'
        """
        return self.plots_dir / "fingerprint.json"

    @property
    def report(self) -> Path:
        """The self-contained report page.

        >>> RunDir("runs/x").report.as_posix()
        'runs/x/report.html'
        """
        return self.path / "report.html"

    @property
    def attribution_dir(self) -> Path:
        """`fimo attribute`'s scores.

        >>> RunDir("runs/x").attribution_dir.as_posix()
        'runs/x/attribution'
        """
        return self.path / "attribution"

    def attribution_file(self, name: str, statistic: str = "") -> Path:
        """`fimo attribute`'s scores by method ``name`` (the seed mean for a method with
        seeds), or with ``statistic="sem"`` their seed-to-seed standard error.

        >>> run = RunDir("runs/x")
        >>> run.attribution_file("unrolled").as_posix(), run.attribution_file("unrolled", "sem").name
        ('runs/x/attribution/unrolled.npz', 'unrolled.sem.npz')
        """
        return self.attribution_dir / (f"{name}.{statistic}.npz" if statistic else f"{name}.npz")

    @property
    def attribution_page(self) -> Path:
        """`fimo attribute`'s page of the most helpful and harmful training instances.

        >>> RunDir("runs/x").attribution_page.as_posix()
        'runs/x/attribution.html'
        """
        return self.path / "attribution.html"

    @property
    def lock_file(self) -> Path:
        """Held while a process works in the directory (:meth:`lock`).

        >>> RunDir("runs/x").lock_file.as_posix()
        'runs/x/.lock'
        """
        return self.path / ".lock"

    # -- the directory as a whole ------------------------------------------------------------
    def check_exists(self) -> None:
        """InputError unless the directory exists.

        >>> import tempfile
        >>> RunDir(tempfile.mkdtemp()).check_exists()
        >>> RunDir(tempfile.mkdtemp() + "/none").check_exists()  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        fimo.errors.InputError: run directory '.../none' does not exist
        """
        if not self.path.is_dir():
            raise InputError(f"run directory {str(self.path)!r} does not exist")

    def check_is_run(self) -> None:
        """InputError unless the directory exists and holds a run (its config or manifest).

        >>> import tempfile
        >>> RunDir(tempfile.mkdtemp()).check_is_run()  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        fimo.errors.InputError: '...' is not a fimo run directory (it has no config.toml ...
        """
        self.check_exists()
        if not (self.config_file.is_file() or self.manifest_file.is_file()):
            raise InputError(
                f"{str(self.path)!r} is not a fimo run directory (it has no config.toml or "
                "manifest.json); give the directory `fimo run` wrote (its --out)"
            )

    def check_ours(self) -> None:
        """InputError unless the directory is absent, empty, or holds only fimo's own files.

        A run killed before its manifest was written leaves only some of them (config.toml,
        model/): that is still a run directory. Anything else means ``--out`` points at the
        user's own folder, whose files fimo must never overwrite.

        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> RunDir(folder).check_ours()  # empty: fine
        >>> _ = (folder / "notes.txt").write_text("mine")
        >>> RunDir(folder).check_ours()  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        fimo.errors.InputError: '...' is not a fimo run directory: it holds ... (notes.txt), ...
        """
        if not self.path.exists():
            return
        if not self.path.is_dir():
            raise InputError(f"{str(self.path)!r} is a file; give a directory as --out")
        entries = list(self.path.iterdir())
        self._check_no_linked_folders(entries)
        foreign = sorted(e.name for e in entries if not _is_fimo_entry(self.path, e))
        if entries and not foreign and not any((self.path / n).exists() for n in _FIRST_FILES):
            foreign = sorted(e.name for e in entries)  # e.g. only a report.html of the user's
        if foreign:
            more = " ..." if len(foreign) > 3 else ""
            raise InputError(
                f"{str(self.path)!r} is not a fimo run directory: it holds files that are not "
                f"fimo's ({', '.join(foreign[:3])}{more}), which fimo never overwrites; give a "
                "new or empty directory as --out"
            )

    def _check_no_linked_folders(self, entries: list[Path]) -> None:
        """InputError if one of fimo's folders here, or a folder in one of them (such as
        ``further/shards``), is a symbolic link: fimo would write and delete files wherever it
        points."""
        ours = [e for e in entries if e.name in _FIMO_FOLDERS]
        links = [e for e in ours if e.is_symlink()]
        for folder in (e for e in ours if e.is_dir() and not e.is_symlink()):
            links += [c for c in sorted(folder.iterdir()) if c.is_symlink() and c.is_dir()]
        if links:
            raise InputError(
                f"{links[0]} is a symbolic link; fimo never follows links in a run directory "
                "(it would write where the link points): replace it with a copy of the folder "
                "(cp -rL) or delete it"
            )

    @contextlib.contextmanager
    def lock(self):
        """Hold an exclusive lock on the directory; a second process stops at once.

        ``flock`` locks die with their process, so a killed run never leaves it stuck. A
        ``.lock`` that is a symbolic link is refused, never followed (it could point at any
        file of the user's). A directory holding files that are not fimo's is refused
        (:meth:`check_ours`).

        >>> import tempfile
        >>> run = RunDir(tempfile.mkdtemp())
        >>> with run.lock():
        ...     with run.lock():  # doctest: +ELLIPSIS
        ...         pass
        Traceback (most recent call last):
        ...
        fimo.errors.InputError: ... is in use by another fimo run (pid ...); wait for it ...
        """
        self.check_ours()
        self.path.mkdir(parents=True, exist_ok=True)
        fh = _open_lock(self.lock_file)
        try:
            _try_lock(self.path, fh)
        except InputError:
            fh.close()
            raise
        try:
            fh.seek(0)
            fh.truncate()
            fh.write(f"pid {os.getpid()} on {platform.node()}")
            fh.flush()
            yield self
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
            fh.close()

    def check_free(self) -> None:
        """The refusals of :meth:`lock` (a foreign directory, a linked or held ``.lock``),
        without taking the lock or writing anything: a command checks them first, before it
        loads torch, so that a refused command answers at once. :meth:`lock` checks again.

        >>> import tempfile
        >>> run = RunDir(tempfile.mkdtemp())
        >>> run.check_free()  # no lock yet: free, and nothing is created
        >>> with run.lock():
        ...     run.check_free()  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        fimo.errors.InputError: ... is in use by another fimo run (pid ...); wait for it ...
        """
        self.check_ours()
        if not (self.lock_file.exists() or self.lock_file.is_symlink()):
            return
        with _open_lock(self.lock_file, create=False) as fh:
            _try_lock(self.path, fh)
            fcntl.flock(fh, fcntl.LOCK_UN)

    def remove_temporaries(self) -> list[Path]:
        """Remove the files left by a process killed while writing (they are never read):
        only fimo's own temporaries, only in the folders fimo writes.

        >>> import tempfile
        >>> run = RunDir(tempfile.mkdtemp())
        >>> _ = (run.path / ".manifest.json.abcd1234.tmp").write_text("cut sho")
        >>> _ = (run.path / "notes.tmp").write_text("the user's")
        >>> [p.name for p in run.remove_temporaries()], sorted(p.name for p in run.path.iterdir())
        (['.manifest.json.abcd1234.tmp'], ['notes.tmp'])
        """
        folders = [self.path, self.model_dir, self.further, self.further / _store().SHARDS]
        folders += [self.scores_dir, self.metrics_dir, self.plots_dir, self.attribution_dir]
        return remove_temporaries(folders)

    def verify(self) -> tuple[int, list[Path], list[Path]]:
        """``(files checked, damaged files, missing files)``: every file against its ``.sha256``
        checksum, and every file the manifest names (so that a file deleted together with its
        checksum is still noticed).

        >>> import tempfile
        >>> run = RunDir(tempfile.mkdtemp())
        >>> path = Scores(np.ones((1, 2)), [0], [3, 4], "m").save(run.scores_file("m"))
        >>> run.write_manifest({"fingerprints": {"scores": {"m": "f1", "gone": "f2"}}})
        >>> checked, damaged, missing = run.verify()
        >>> checked, damaged, [p.name for p in missing]
        (2, [], ['gone.npz'])
        >>> _ = path.write_bytes(b"damaged")
        >>> checked, damaged, missing = run.verify()
        >>> [p.name for p in damaged], [p.name for p in missing]
        (['m.npz'], ['gone.npz'])
        """
        self.check_exists()
        checked, damaged = verify_folder(self.path)
        unchecked = [p for p in self.recorded_files() if not checksum_path(p).exists()]
        missing = [p for p in damaged + unchecked if not p.exists()]
        damaged = [p for p in damaged if p.exists()]
        return checked + len(unchecked), damaged, missing

    def recorded_files(self, manifest: dict | None = None) -> list[Path]:
        """The result files the manifest says the run made: the final weights, the gold
        standard, each method's scores and those brought in, the metrics tables.

        >>> run = RunDir("runs/x")
        >>> manifest = {"fingerprints": {"weights": "a", "scores": {"grad_dot": "b"}}}
        >>> [p.as_posix() for p in run.recorded_files(manifest)]
        ['runs/x/model/final.pt', 'runs/x/scores/grad_dot.npz']
        """
        manifest = self.read_manifest() if manifest is None else manifest
        prints = manifest.get("fingerprints") or {}
        evaluation = manifest.get("evaluation") or {}
        files = [self.final_weights] if prints.get("weights") else []
        files += [self.gold_file] if prints.get("gold_standard") else []
        names = [*(prints.get("scores") or {}), *(evaluation.get("external_scores") or {})]
        files += [self.scores_file(n) for n in dict.fromkeys(names)]
        files += [self.path / t for t in evaluation.get("tables") or [] if isinstance(t, str)]
        return files

    # -- configuration and manifest ----------------------------------------------------------
    def read_config(self, notes: list[str]):
        """``(Config or None, settings dict)`` from ``config.toml``; what could not be read is
        said in ``notes``.

        >>> import tempfile
        >>> from fimo.experiments.config import Config
        >>> run, notes = RunDir(tempfile.mkdtemp()), []
        >>> run.read_config(notes), notes
        ((None, {}), ["config.toml is missing: settings and examples' data are not shown."])
        >>> _ = run.write_config(Config(name="tiny"))
        >>> config, settings = run.read_config(notes)
        >>> config.name, settings["name"]
        ('tiny', 'tiny')
        """
        import tomllib

        from fimo.experiments.config import load_config

        if not self.config_file.is_file():
            notes.append("config.toml is missing: settings and examples' data are not shown.")
            return None, {}
        try:
            config = load_config(self.config_file)
            return config, config.to_dict()
        except InputError as exc:
            notes.append(f"config.toml could not be read as a fimo configuration ({exc}).")
            try:
                return None, tomllib.loads(read_small_text(self.config_file))
            except (tomllib.TOMLDecodeError, DamagedFileError):
                return None, {}

    def write_config(self, config) -> Path:
        """Write ``config.toml`` (the configuration's TOML).

        >>> import tempfile
        >>> from fimo.experiments.config import Config
        >>> run = RunDir(tempfile.mkdtemp())
        >>> run.write_config(Config(name="tiny")) == run.config_file
        True
        >>> run.config_file.read_text().splitlines()[0]
        'name = "tiny"'
        """
        return write_text(self.config_file, config.to_toml())

    def read_manifest(self) -> dict:
        """The manifest, or ``{}`` when there is none; a damaged one (not a JSON table, or not a
        regular file) is refused, never read as empty: `fimo report` would otherwise write back
        only its evaluation part. `fimo run` with the run's configuration rebuilds it in full.

        >>> import tempfile
        >>> run = RunDir(tempfile.mkdtemp())
        >>> run.read_manifest()
        {}
        >>> _ = run.manifest_file.write_text("{cut")
        >>> run.read_manifest()  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        fimo.io.DamagedFileError: .../manifest.json is damaged (not a JSON table); ...
        """
        if not (self.manifest_file.exists() or self.manifest_file.is_symlink()):
            return {}
        manifest = _read_json_table(self.manifest_file)
        if manifest is None:
            raise DamagedFileError(
                f"{self.manifest_file} is damaged (not a JSON table); rebuild it with `fimo run "
                f"{self.config_file} --out {self.path}` (finished results are reused)"
            )
        return manifest

    def write_manifest(self, manifest: dict) -> None:
        """Write ``manifest.json`` (atomically).

        >>> import tempfile
        >>> run = RunDir(tempfile.mkdtemp())
        >>> run.write_manifest({"timings": {"gold": 1.5}})
        >>> run.read_manifest()["timings"]
        {'gold': 1.5}
        """
        write_json(self.manifest_file, manifest)

    # -- the final model ---------------------------------------------------------------------
    def read_model_meta(self) -> dict:
        """``model/meta.json``, or ``{}`` when absent or damaged (a warning says so: the final
        model is then trained again, to the same weights).

        >>> import tempfile
        >>> run = RunDir(tempfile.mkdtemp())
        >>> run.model_dir.mkdir()
        >>> _ = run.model_meta.write_text("{garbled")
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     run.read_model_meta(), "is damaged" in str(caught[0].message)
        ({}, True)
        """
        if not self.model_meta.exists():
            return {}
        meta = _read_json_table(self.model_meta)
        if meta is None:
            warnings.warn(
                f"{self.model_meta} is damaged (not a JSON table); training the final model again",
                RuntimeWarning,
                stacklevel=2,
            )
            return {}
        return meta

    def check_gold_stamp(self, overwrite: bool) -> None:
        """A damaged ``further/fingerprint.json`` (not a JSON table): removed with
        ``overwrite`` (the gold standard is then started afresh), else an InputError that says
        so. Checked before any work.

        >>> import tempfile
        >>> run = RunDir(tempfile.mkdtemp())
        >>> run.further.mkdir()
        >>> _ = (run.further / "fingerprint.json").write_text("[1, 2")
        >>> run.check_gold_stamp(overwrite=False)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        fimo.errors.InputError: .../further/fingerprint.json is damaged (not a JSON table); ...
        >>> run.check_gold_stamp(overwrite=True)
        >>> (run.further / "fingerprint.json").exists()
        False
        """
        stamp = self.further / _store().FINGERPRINT
        if not (stamp.exists() or stamp.is_symlink()) or _read_json_table(stamp) is not None:
            return
        if overwrite:
            if stamp.is_dir() and not stamp.is_symlink():
                shutil.rmtree(stamp)
            else:
                stamp.unlink()
            return
        raise InputError(
            f"{stamp} is damaged (not a JSON table); pass --overwrite to compute the gold "
            "standard afresh"
        )

    def write_model_meta(self, meta: dict) -> None:
        """Write ``model/meta.json`` (atomically).

        >>> import tempfile
        >>> run = RunDir(tempfile.mkdtemp())
        >>> run.write_model_meta({"fingerprint": "abc"})
        >>> run.read_model_meta()
        {'fingerprint': 'abc'}
        """
        write_json(self.model_meta, meta)

    def save_final(self, model) -> Path:
        """Save the model's weights (as CPU tensors) to ``model/final.pt``, with checksum.

        >>> import tempfile
        >>> import torch
        >>> run = RunDir(tempfile.mkdtemp())
        >>> run.save_final(torch.nn.Linear(2, 1)).relative_to(run.path).as_posix()
        'model/final.pt'
        """
        import torch

        state = model.state_dict()
        if any(t.device.type != "cpu" for t in state.values()):
            cpu = type(state)((k, t.cpu()) for k, t in state.items())
            cpu._metadata = getattr(state, "_metadata", None)
            state = cpu
        return atomic_write(self.final_weights, lambda p: torch.save(state, p))

    def load_final(self, model) -> dict | None:
        """Load the saved final weights into ``model`` (weights only: no pickled code is run).

        Returns the state dict, or None when the file is damaged (its checksum does not
        match: a warning says so and the model is trained again, to the same weights).

        >>> import tempfile
        >>> run = RunDir(tempfile.mkdtemp())
        >>> import torch
        >>> saved, model = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
        >>> _ = run.save_final(saved)
        >>> sorted(run.load_final(model)), torch.equal(model.weight, saved.weight)
        (['bias', 'weight'], True)
        """
        import torch

        path = self.final_weights
        if checksum_matches(path) is False:
            warnings.warn(
                f"{path} is damaged (its checksum does not match); training the final model again",
                RuntimeWarning,
                stacklevel=3,
            )
            return None
        fix = "delete it (or pass --overwrite) to train the final model again"
        try:
            state = torch.load(path, weights_only=True, map_location="cpu")
        except pickle.UnpicklingError:
            raise InputError(
                f"{path} holds pickled Python objects beyond plain tensors, which fimo never "
                f"loads (they could run code); {fix}"
            ) from None
        except Exception as exc:  # cut short, or not a PyTorch file
            raise InputError(
                f"{path} is damaged or not a PyTorch state dict ({type(exc).__name__}: "
                f"{_first_line(exc)}); {fix}"
            ) from None
        try:
            model.load_state_dict(state)
        except Exception as exc:  # another architecture (e.g. a model factory that changed)
            raise InputError(
                f"{path} does not fit the configured model ({_first_line(exc)}); {fix}"
            ) from None
        return state

    # -- the gold standard and the scores ----------------------------------------------------
    def shard_store(
        self, fingerprint: str, description: dict, overwrite: bool, group_fingerprint=None
    ):
        """The gold standard's shard store in ``further/`` (see :class:`ShardStore`; the group
        shards are tied to ``group_fingerprint``).

        >>> import tempfile
        >>> run = RunDir(tempfile.mkdtemp())
        >>> store = run.shard_store("abc", {"seeds": 1}, overwrite=False)
        >>> store.folder == run.further, [p.name for p in run.further.iterdir()]
        (True, ['fingerprint.json'])
        """
        return _store().ShardStore(
            self.further, fingerprint, description, overwrite, group_fingerprint
        )

    def load_gold(self):
        """The gold standard in ``further/gold.npz``, with the settings recorded beside it.

        >>> import tempfile, torch
        >>> from fimo import ArrayDataset, FurtherSettings, Task
        >>> from fimo.further.runner import gold_standard
        >>> x = torch.linspace(-1, 1, 12).reshape(6, 2)
        >>> task = Task(torch.nn.Linear(2, 1), ArrayDataset(x, x.sum(1)), ArrayDataset(x, x.sum(1)),
        ...             loss="mse")
        >>> gold = gold_standard(task, FurtherSettings(lr=0.1, batch_size=3), [0], [0, 5], [1, 2])
        >>> run = RunDir(tempfile.mkdtemp())
        >>> _ = gold.save(run.gold_file)
        >>> loaded = run.load_gold()
        >>> loaded.left_out.tolist(), loaded.test.tolist(), loaded.loss_without.shape
        ([0, 5], [1, 2], (1, 2, 2, 2))
        """
        from fimo.further.gold import GoldStandard

        stamp = self.further / _store().FINGERPRINT
        recorded = _read_json_table(stamp) if stamp.exists() else {}
        if recorded is None:
            raise InputError(
                f"{stamp} is damaged (not a JSON table); run `fimo run` with the same "
                "configuration and --overwrite to compute the gold standard afresh"
            )
        settings = recorded.get("settings")
        return GoldStandard.load(self.gold_file, settings)

    def cached_scores(self, name: str, fp: str) -> Scores | None:
        """The scores saved for method ``name`` under fingerprint ``fp``, or None: absent,
        made under other settings, or damaged (a warning says so; they are recomputed).

        >>> import tempfile
        >>> run = RunDir(tempfile.mkdtemp())
        >>> scores = Scores(np.ones((1, 2)), [0], [3, 4], "grad_dot", {"fingerprint": "f1"})
        >>> _ = scores.save(run.scores_file("grad_dot"))
        >>> run.cached_scores("grad_dot", "f1").shape, run.cached_scores("grad_dot", "f2")
        ((1, 2), None)
        """
        return _cached_scores(self.scores_file(name), fp)

    def cached_attribution(self, name: str, fp: str, statistic: str = "") -> Scores | None:
        """`fimo attribute`'s scores (or ``statistic``) saved for method ``name`` under
        fingerprint ``fp``, or None, as :meth:`cached_scores`.

        >>> import tempfile
        >>> run = RunDir(tempfile.mkdtemp())
        >>> scores = Scores(np.ones((1, 2)), [0], [3, 4], "unrolled", {"fingerprint": "f1"})
        >>> _ = scores.save(run.attribution_file("unrolled", "sem"))
        >>> run.cached_attribution("unrolled", "f1", "sem").shape, run.cached_attribution("unrolled", "f1")
        ((1, 2), None)
        """
        return _cached_scores(self.attribution_file(name, statistic), fp)

    def run_scores(self, config=None, manifest: dict | None = None, notes=None) -> dict:
        """The scores in ``scores/`` that belong to the run (see the module's docstring).

        Returns ``{name: Scores}``: the configuration's methods first, in its order, then the
        external ones by name; what is left out is said in ``notes``.

        >>> import tempfile
        >>> run = RunDir(tempfile.mkdtemp())
        >>> _ = Scores(np.ones((1, 2)), [0], [3, 4], "grad_dot").save(run.scores_file("grad_dot"))
        >>> list(run.run_scores())
        ['grad_dot']
        """
        notes = [] if notes is None else notes
        names = list(config.methods.names) if config is not None else []
        recorded = ((manifest or {}).get("fingerprints") or {}).get("scores") or {}
        found = {}
        folder = self.scores_dir
        for file in sorted(folder.glob("*.npz")) if folder.is_dir() else []:
            sc = _belonging_scores(
                file, config is not None and file.stem not in names, recorded.get(file.stem), notes
            )
            if sc is not None:
                found[file.stem] = sc
        order = [n for n in names if n in found] + sorted(n for n in found if n not in names)
        return {n: found[n] for n in order}

    def loaded_scores(self, config, manifest: dict, notes: list[str]) -> dict:
        """:meth:`run_scores`, and a warning (on the terminal, as well as a note in the report)
        for each score file left out and each method of the run whose file is gone.

        >>> import tempfile
        >>> run = RunDir(tempfile.mkdtemp())
        >>> manifest = {"fingerprints": {"scores": {"grad_dot": "f1"}}}
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     found = run.loaded_scores(None, manifest, [])
        >>> found, str(caught[0].message)  # doctest: +ELLIPSIS
        ({}, "scores/grad_dot.npz is missing; left out (`fimo run` with the run's ...")
        """
        found: list[str] = []
        scores = self.run_scores(config, manifest, found)
        made = ((manifest or {}).get("fingerprints") or {}).get("scores") or {}
        wanted = list(made) + (list(config.methods.names) if config is not None else [])
        skipped = (manifest or {}).get("skipped_methods") or {}
        for name in dict.fromkeys(wanted):
            if name not in scores and name not in skipped and not self.scores_file(name).exists():
                found.append(
                    f"scores/{name}.npz is missing; left out (`fimo run` with the run's "
                    "configuration recomputes it)."
                )
        for note in found:
            warnings.warn(note, RuntimeWarning, stacklevel=3)
        notes.extend(found)
        return scores

    # -- the whole run -----------------------------------------------------------------------
    def load(self) -> RunFiles:
        """The gold standard, scores, configuration, manifest and data of the run.

        >>> import tempfile
        >>> RunDir(tempfile.mkdtemp() + "/none").load()  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        fimo.errors.InputError: run directory '.../none' does not exist
        """
        self.check_exists()
        notes: list[str] = []
        gold = self.load_gold()
        config, settings = self.read_config(notes)
        manifest = self.read_manifest()
        scores = self.loaded_scores(config, manifest, notes)
        train = test = None
        if config is not None:
            from fimo.experiments.build import load_data

            try:
                train, test = load_data(config)
            except Exception as exc:  # the report is still useful without the data
                notes.append(f"The data {config.data.dataset!r} could not be loaded ({exc}).")
        return RunFiles(self.path, gold, scores, config, settings, manifest, train, test, notes)

    # -- scores made elsewhere (`fimo compare`) ----------------------------------------------
    def read_external(self, scores_file, name: str, orientation: str, sign: str, key=None):
        """The matrix of ``fimo compare``, after checking its name, orientation and sign and
        that this directory exists (before any lock is taken).

        >>> import tempfile
        >>> run = RunDir(tempfile.mkdtemp())
        >>> np.save(run.path / "theirs.npy", np.zeros((3, 2)))
        >>> run.read_external(run.path / "theirs.npy", "theirs", "train,test", "harmful").shape
        (3, 2)
        >>> run.read_external(run.path / "theirs.npy", "grad_dot", "train,test", "harmful")
        Traceback (most recent call last):
        ...
        fimo.errors.InputError: --name: 'grad_dot' is a built-in method's name; ...
        """
        from fimo.scores import load_matrix

        self.check_external(name, orientation, sign)
        matrix = load_matrix(scores_file, key)
        if getattr(matrix, "ndim", 0) != 2:
            raise InputError(
                f"{scores_file}: expected a 2-D score matrix; got shape {tuple(matrix.shape)} (for "
                "one matrix per checkpoint, save fimo.Scores(values, test, train, name, "
                "{'origin': 'external'}, steps=...) as scores/<name>.npz and run fimo report)"
            )
        return matrix

    def check_external(self, name: str, orientation: str, sign: str) -> None:
        """InputError unless ``fimo compare``'s name, orientation and sign are valid and this
        directory exists (checked before the matrix is read or torch is loaded).

        >>> RunDir("runs/x").check_external("theirs", "train,test", "worse")
        Traceback (most recent call last):
        ...
        fimo.errors.InputError: --sign: got 'worse'; allowed: 'helpful', 'harmful'
        """
        from fimo.methods import ALL_METHOD_NAMES
        from fimo.scores import ORIENTATIONS, SIGNS

        if not NAME.match(name or ""):
            raise InputError(
                f"--name: got {name!r}; use letters, digits, '_', '-' or '.', starting with a "
                "letter or digit (it becomes scores/<name>.npz)"
            )
        if name in ALL_METHOD_NAMES:
            raise InputError(
                f"--name: {name!r} is a built-in method's name; choose another, e.g. "
                f"'{name}_external', so that fimo never mistakes it for its own scores"
            )
        check_choice("--orientation", orientation, list(ORIENTATIONS))
        check_choice("--sign", sign, list(SIGNS))
        self.check_exists()

    def add_external(
        self,
        run: RunFiles,
        matrix,
        name: str,
        orientation: str,
        sign: str,
        source: str,
        test_indices=None,
        train_indices=None,
    ) -> Scores:
        """Save the matrix as ``scores/<name>.npz`` once it is known to cover the gold
        standard, and refresh ``run.scores``. The caller holds the lock.

        >>> import tempfile, torch
        >>> from fimo import ArrayDataset, FurtherSettings, Task
        >>> from fimo.further.runner import gold_standard
        >>> x = torch.linspace(-1, 1, 12).reshape(6, 2)
        >>> task = Task(torch.nn.Linear(2, 1), ArrayDataset(x, x.sum(1)), ArrayDataset(x, x.sum(1)),
        ...             loss="mse")
        >>> gold = gold_standard(task, FurtherSettings(lr=0.1, batch_size=3), [0], [0, 5], [1, 2])
        >>> run = RunDir(tempfile.mkdtemp())
        >>> _ = gold.save(run.gold_file)
        >>> files = run.load()
        >>> matrix = np.array([[0.1, 0.2], [0.3, 0.4]])  # gold's 2 test × its 2 left out
        >>> run.add_external(files, matrix, "theirs", "test,train", "helpful", "theirs.npy").shape
        (2, 2)
        >>> list(files.scores), run.scores_file("theirs").exists()
        (['theirs'], True)
        """
        from fimo.scores import ORIENTATIONS, load_indices

        layout = ORIENTATIONS[orientation]
        rows, cols = matrix.shape if layout == "test,train" else matrix.shape[::-1]
        gold = run.gold
        test = gold.test if test_indices is None else _indices(test_indices, load_indices)
        if train_indices is not None:
            train = _indices(train_indices, load_indices)
        else:
            train = _default_train(run, cols)
        if (rows, cols) != (len(test), 0 if train is None else len(train)):
            raise InputError(_shape_message(matrix.shape, orientation, layout, run, test, train))
        scores = Scores.from_external(matrix, orientation, sign, test, train, name, source=source)
        _check_external_coverage(name, gold, test, scores)
        target = self.scores_file(name)
        if target.exists() and Scores.load(target).settings.get("origin") != "external":
            raise InputError(
                f"scores/{name}.npz holds a method computed by fimo; choose another --name"
            )
        scores.save(target)
        run.scores = self.run_scores(run.config, run.manifest, [])
        return scores


def run_lock(out: str | os.PathLike):
    """:meth:`RunDir.lock` of the directory ``out``.

    >>> import tempfile
    >>> with run_lock(tempfile.mkdtemp()) as run:
    ...     run.lock_file.read_text().startswith("pid ")
    True
    """
    return RunDir(out).lock()


def load_run(path) -> RunFiles:
    """:meth:`RunDir.load` of the directory ``path``.

    >>> import tempfile
    >>> load_run(tempfile.mkdtemp())  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    fimo.errors.InputError: .../further/gold.npz: no gold standard here (run `fimo run` first)
    """
    return RunDir(path).load()


#: what fimo writes at the top of a run directory (DESIGN.md ◆ Runs are data)
FIMO_ENTRIES = frozenset(
    {"config.toml", "manifest.json", "model", "further", "scores", "metrics", "plots"}
    | {"report.html", ".lock", "attribution", "attribution.html"}
)


def _is_fimo_entry(folder: Path, entry: Path) -> bool:
    """Whether ``entry`` (at the top of ``folder``) is one of the files fimo writes there, a
    checksum of one, or one of its temporaries."""
    name = entry.name
    if name.endswith(".sha256"):
        name = name[: -len(".sha256")]
    if TEMPORARY_NAME.match(name):
        return True
    return name in FIMO_ENTRIES and (entry.is_dir() == (name in _FIMO_FOLDERS))


_FIMO_FOLDERS = frozenset({"model", "further", "scores", "metrics", "plots", "attribution"})

#: a run directory has at least one of these (the lock is taken first, config.toml written
#: next; a run put together by hand for `fimo report` has further/ or scores/)
_FIRST_FILES = (".lock", "config.toml", "manifest.json", "model", "further", "scores")


def _store():
    """:mod:`fimo.further.store` (it names the files of ``further/``), imported when first
    needed: it loads torch, which checking or verifying a run directory does not need."""
    import fimo.further.store as store

    return store


def _read_json_table(path: Path) -> dict | None:
    """The JSON object in ``path``, or None when the file is not one (garbled, cut short, not
    UTF-8, not a regular file or unreasonably large: :func:`fimo.io.read_small_text`)."""
    try:
        value = json.loads(read_small_text(path))
    except (ValueError, DamagedFileError):
        return None
    return value if isinstance(value, dict) else None


def _open_lock(path: Path, create: bool = True):
    """``path`` opened for reading and writing (created if absent), or only for reading
    (``create=False``: a check that writes nothing), never through a link."""
    flags = os.O_RDWR | os.O_CREAT if create else os.O_RDONLY
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW, 0o666)
    except OSError as exc:
        if path.is_symlink():
            raise InputError(
                f"{path} is a symbolic link; fimo never follows links in a run directory "
                "(it would write where the link points): delete it and start again"
            ) from None
        raise exc
    return os.fdopen(fd, "r+" if create else "r")


def _try_lock(folder: Path, fh) -> None:
    """Take the exclusive lock on the open ``.lock`` file ``fh``, or an InputError naming the
    process that holds it (a second run must stop at once, not wait)."""
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        owner = fh.read().strip() or "another process"
        raise InputError(
            f"{folder} is in use by another fimo run ({owner}); wait for it to finish, "
            "or use another --out"
        ) from None


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:160]


def _belonging_scores(file: Path, foreign: bool, recorded: str | None, notes: list):
    """The Scores in ``file`` if they belong to the run (``foreign``: not one of its methods;
    ``recorded``: the fingerprint the manifest records for them), else None and a note."""
    try:
        sc = Scores.load(file)
    except Exception as exc:  # a damaged file must not stop the report
        notes.append(f"scores/{file.name} could not be read ({exc}); left out.")
        return None
    external = sc.settings.get("origin") == "external"
    if foreign and not external:
        notes.append(f"scores/{file.name} is not one of this run's methods; left out.")
        return None
    fp = sc.settings.get("fingerprint")
    if not external and recorded is not None and fp is not None and fp != recorded:
        notes.append(
            f"scores/{file.name} was made under another fingerprint ({fp}) than the "
            f"manifest records ({recorded}); left out."
        )
        return None
    return sc


def _cached_scores(path: Path, fp: str) -> Scores | None:
    """The Scores in ``path`` if made under fingerprint ``fp``; None when absent, made under
    other settings, or damaged (a warning says so: the caller recomputes them)."""
    if not path.exists():
        return None
    if not checksum_matches(path):
        warnings.warn(
            f"{path} is damaged or incomplete (no checksum, or its bytes do not match it); "
            "recomputing it",
            RuntimeWarning,
            stacklevel=4,
        )
        return None
    try:
        cached = Scores.load(path)
    except (InputError, KeyError, ValueError) as exc:
        warnings.warn(f"{path} cannot be read ({exc}); recomputing it", RuntimeWarning, 4)
        return None
    return cached if cached.settings.get("fingerprint") == fp else None


def _check_external_coverage(name: str, gold, test, scores: Scores) -> None:
    missing = [int(t) for t in gold.test if int(t) not in set(test.tolist())]
    if missing:
        raise InputError(
            f"scores {name!r} cover {len(test)} test instances but not the gold standard's "
            f"{missing[:5]}{' ...' if len(missing) > 5 else ''}; pass --test-indices"
        )
    have = set(scores.train.tolist())
    no_train = [int(i) for i in gold.left_out if int(i) not in have]
    if no_train:
        raise InputError(
            f"scores {name!r} do not cover the left-out training instances "
            f"{no_train[:5]}{' ...' if len(no_train) > 5 else ''}; pass --train-indices"
        )


def _indices(value, loader):
    if isinstance(value, str | Path):
        return loader(value)
    return np.asarray(value, dtype=np.int64).reshape(-1)


def _train_size(run: RunFiles) -> int | None:
    if run.train is not None:
        return len(run.train)
    sizes = [len(sc.train) for sc in run.scores.values() if sc.settings.get("origin") != "external"]
    full = [n for n in sizes if n > len(run.gold.left_out)]
    return max(full) if full else None


def _default_train(run: RunFiles, cols: int):
    if cols == len(run.gold.left_out):
        return run.gold.left_out
    n = _train_size(run)
    if n is not None and cols == n:
        return np.arange(n)
    return None


def _shape_message(shape, orientation, layout, run, test, train) -> str:
    L = len(run.gold.left_out)
    n = _train_size(run)
    want_cols = (
        f"{len(train)} training instances (from --train-indices)"
        if train is not None
        else f"{L} (the left-out instances)" + (f" or {n} (the whole training set)" if n else "")
    )
    read_as = orientation if orientation == layout else f"{orientation} ({layout})"
    text = (
        f"the matrix has shape {tuple(shape)}; read as {read_as} it is "
        f"{shape[0] if layout == 'test,train' else shape[1]} test × "
        f"{shape[1] if layout == 'test,train' else shape[0]} train, but the run needs "
        f"{len(test)} test rows and {want_cols} columns"
    )
    other = shape if layout == "train,test" else shape[::-1]
    if other[0] == len(test) and (
        (train is not None and other[1] == len(train)) or other[1] in (L, n)
    ):
        text += "; the other orientation would fit: check --orientation"
    else:
        text += "; pass --test-indices / --train-indices if it covers other instances"
    return text
