"""Experiment configuration: presets and TOML files, validated in full before any work.

A configuration is a TOML document with the tables below. Every key is checked: an unknown
key names the closest valid one; a wrong type or an out-of-range value names the setting,
the value received and what is allowed (:class:`fimo.errors.InputError`, exit code 2).

.. code-block:: toml

    name = "adult"
    [data]      dataset = "adult", n_test = 100
    [model]     hidden = [128, 128], seed = 0
    [training]  optimizer = "sgd", lr = 0.01, epochs = 100, batch_size = 128, seed = 0
    [further]   optimizer = "sgd", lr = 1e-4, epochs = 2, seeds = 8, left_out = 40, ...
    [methods]   names = ["grad_dot", "grad_cos"], train = "all"
    [run]       device = "cpu"
    [groups]    kind = "random", count = 50, fraction = 0.5   (optional: group runs, FT-LDS)
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path

import tomli_w
import tomllib

from fimo.errors import InputError, check_choice, check_keys, closest
from fimo.settings import FurtherSettings, TrainingSettings, check_lora_settings


@dataclass
class DataConfig:
    """The table ``[data]``: which dataset, how much of it is scored and used.

    >>> from_dict({"data": {"dataset": "concrete", "n_test": 20}}).data
    DataConfig(dataset='concrete', n_test=20, factory='', options={}, n_train=0)
    """

    dataset: str = "adult"
    n_test: int = 100  # the first n_test test instances are scored and recorded
    factory: str = ""  # "package.module:function" returning (train, test); overrides dataset
    options: dict = field(default_factory=dict)  # keyword arguments of the dataset's loader
    n_train: int = 0  # use only the first n_train training instances (0: all)


@dataclass
class ModelConfig:
    """The table ``[model]``: the architecture, its initialisation seed, what is trained.

    >>> m = from_dict({"model": {"hidden": [16]}}).model
    >>> m.kind, m.hidden, m.trainable
    ('mlp', [16], [])
    """

    kind: str = "mlp"
    hidden: list[int] = field(default_factory=lambda: [128, 128])
    seed: int = 0
    factory: str = ""  # "package.module:function" (train, test) -> nn.Module; overrides kind
    trainable: list[str] = field(default_factory=list)  # parameter names; empty: all


@dataclass
class GoldConfig:
    """The gold standard's size and precision; the run settings are FurtherSettings.

    In a TOML file both sit in the table ``[further]``:

    >>> config = from_dict({"further": {"seeds": 4, "left_out": 10, "lr": 0.05}})
    >>> config.gold.seeds, config.gold.left_out, config.further.lr
    (4, 10, 0.05)
    >>> from_dict({"further": {"lora": {"rank": 8, "targets": ["query", "value"]}}}).gold.lora
    {'rank': 8, 'targets': ['query', 'value']}
    """

    seeds: int = 16
    first_seed: int = 0
    left_out: int = 40
    left_out_seed: int = 0
    dtype: str = "float32"
    #: left-out runs per shard; 0: as many as fit in memory_budget_mb
    left_out_per_shard: int = 0
    memory_budget_mb: int = 2048
    #: LoRA further training, {rank, targets, alpha, seed} (fimo.lora.with_lora); empty: none
    lora: dict = field(default_factory=dict)


@dataclass
class MethodsConfig:
    """The table ``[methods]``: the methods to score with and their settings.

    >>> m = from_dict({"methods": {"names": ["cg"], "cg": {"damping": 0.01}}}).methods
    >>> m.names, m.train, m.settings
    (['cg'], 'all', {'cg': {'damping': 0.01}})
    """

    names: list[str] = field(default_factory=lambda: ["grad_dot", "grad_cos"])
    train: str = "all"  # score every training instance ("all") or only the left-out ones
    #: per-method settings, from the tables [methods.<name>]
    settings: dict[str, dict] = field(default_factory=dict)


@dataclass
class RunConfig:
    """The table ``[run]``: where the work runs (device, executor, workers, Ray address,
    torch threads of final training and the methods).

    >>> from_dict({"run": {"workers": 2}}).run
    RunConfig(device='cpu', executor='local', workers=2, address='auto', threads=0)
    """

    device: str = "cpu"
    executor: str = "local"  # local or ray
    #: local worker processes of further training; 0: one per free core when the work is long
    #: enough to repay starting them, else none (fimo.further.threads.auto_workers)
    workers: int = 0
    address: str = "auto"  # Ray cluster: auto, ray://HOST:PORT, or local (start one here)
    #: torch threads of final training and the methods; 0: from the cores and the load
    #: (fimo.threads; FIMO_THREADS or OMP_NUM_THREADS when set)
    threads: int = 0


#: the kinds of groups a ``[groups]`` table may name, and the keys each one reads
GROUP_KINDS = {
    "none": (),
    "random": ("count", "fraction", "seed"),
    "nested": ("count", "fraction", "seed"),
    "label": (),
    "feature": ("feature", "bins"),
    "file": ("file",),
}


@dataclass
class GroupsConfig:
    """The table ``[groups]``: which groups of training instances the gold standard also
    leaves out, each in a run of its own (docs/groups.md); none by default.

    ``kind``: ``"random"`` (``count`` groups of a ``fraction`` of the training set, drawn with
    ``seed``), ``"nested"`` (``count`` groups of a ``fraction`` of the single left-out
    instances: the additivity design), ``"label"`` (one group per class), ``"feature"`` (one
    per value of the column ``feature``, or with ``bins`` one per quantile bin; ``kind =
    "feature:age:bins=5"`` is short for all three), ``"file"`` (one per line of ``file``, a
    path relative to the working directory).

    >>> from_dict({"groups": {"kind": "random", "count": 20}}).groups
    GroupsConfig(kind='random', count=20, fraction=0.5, seed=0, feature='', file='', bins=0)
    >>> from_dict({"groups": {"kind": "feature:sex"}}).groups.feature
    'sex'
    """

    kind: str = "none"
    count: int = 50
    fraction: float = 0.5  # measured on diabetes against 0.01 (docs/groups.md)
    seed: int = 0
    feature: str = ""
    file: str = ""
    bins: int = 0  # feature: 0 = one group per value, else quantile bins

    @property
    def active(self) -> bool:
        """Whether any groups are left out.

        >>> GroupsConfig().active, GroupsConfig(kind="label").active
        (False, True)
        """
        return self.kind != "none"

    def describe(self) -> str:
        """The groups in the words of ``--groups``.

        >>> GroupsConfig(kind="random", count=20, fraction=0.5).describe()
        'random:20:0.5'
        >>> GroupsConfig(kind="feature", feature="sex").describe()
        'feature:sex'
        >>> GroupsConfig(kind="feature", feature="age", bins=5).describe()
        'feature:age:bins=5'
        """
        if self.kind in ("random", "nested"):
            return f"{self.kind}:{self.count}:{self.fraction:g}"
        if self.kind == "feature" and self.bins:
            return f"feature:{self.feature}:bins={self.bins}"
        value = {"feature": self.feature, "file": self.file}.get(self.kind)
        return self.kind if value is None else f"{self.kind}:{value}"


@dataclass
class Config:
    """A whole experiment: one section per table of the TOML file.

    >>> config = Config(name="tiny", gold=GoldConfig(seeds=2))
    >>> config.name, config.gold.seeds, config.data.dataset, config.further.scheme
    ('tiny', 2, 'adult', 'drop')
    """

    name: str = "adult"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    further: FurtherSettings = field(default_factory=FurtherSettings)
    gold: GoldConfig = field(default_factory=GoldConfig)
    methods: MethodsConfig = field(default_factory=MethodsConfig)
    run: RunConfig = field(default_factory=RunConfig)
    groups: GroupsConfig = field(default_factory=GroupsConfig)

    def to_dict(self) -> dict:
        """The configuration as a TOML-ready dict (``further`` holds the gold settings too).

        >>> Config().to_dict()["further"]["seeds"]
        16
        """
        further = self.further.as_dict()
        further.update(_plain(self.gold))
        if further.get("max_steps") is None:
            further.pop("max_steps", None)
        if not further.get("lora"):
            further.pop("lora", None)
        out = {
            "name": self.name,
            "data": _plain(self.data),
            "model": _plain(self.model),
            "training": self.training.as_dict(),
            "further": further,
            "methods": _methods_table(self.methods),
            "run": _plain(self.run),
        }
        if self.groups.active:  # a configuration without groups reads as it always did
            keys = ("kind", *GROUP_KINDS[self.groups.kind])
            out["groups"] = {k: getattr(self.groups, k) for k in keys}
            if not self.groups.bins:
                out["groups"].pop("bins", None)
        return out

    def to_toml(self) -> str:
        """The configuration as TOML text (what ``config.toml`` holds).

        >>> Config(name="tiny").to_toml().splitlines()[0]
        'name = "tiny"'
        """
        return tomli_w.dumps(self.to_dict())


SECTIONS = {
    "data": DataConfig,
    "model": ModelConfig,
    "training": TrainingSettings,
    "further": (FurtherSettings, GoldConfig),
    "methods": MethodsConfig,
    "run": RunConfig,
    "groups": GroupsConfig,
}


def _methods_table(methods: MethodsConfig) -> dict:
    table = {"names": list(methods.names), "train": methods.train}
    table.update({name: dict(values) for name, values in methods.settings.items() if values})
    return table


def _settings_table(name: str, table) -> dict:
    """A copy of a [methods.<name>] table, refused unless it is a table."""
    if not isinstance(table, dict):
        raise InputError(f"methods.{name}: expected a table of settings; got {table!r}")
    return dict(table)


def _method_settings(name: str, table: dict) -> dict:
    """Validate a [methods.<name>] table against the method's keyword arguments (this imports
    the method, hence torch)."""
    from fimo.methods import method_defaults

    defaults = method_defaults(name)
    out = {}
    for key, value in table.items():
        if key not in defaults:
            allowed = ", ".join(sorted(defaults)) or "none"
            raise InputError(
                f"methods.{name}: unknown setting {key!r}{closest(key, defaults)}; "
                f"allowed: {allowed}"
            )
        default = defaults[key]
        if default is None or (isinstance(default, str) and not isinstance(value, str)):
            out[key] = value  # settings that take a number or a word (e.g. scale = "auto")
        else:
            out[key] = _check_type(f"methods.{name}", key, value, default)
    return out


def _plain(obj) -> dict:
    return {f.name: copy.deepcopy(getattr(obj, f.name)) for f in fields(obj)}


def _allowed(cls) -> dict:
    return {f.name: getattr(cls(), f.name) for f in fields(cls)}


_ELEMENT_TYPES = {"int": int, "float": float, "str": str}


def _elements(cls, key: str) -> tuple[type | None, int | None]:
    """The element type of a list or tuple setting and, for a fixed-size tuple, its length.

    Read from the dataclass annotation (``list[int]``, ``tuple[float, float]``), which is a
    string under ``from __future__ import annotations``.
    """
    annotation = next((f.type for f in fields(cls) if f.name == key), "")
    text = annotation if isinstance(annotation, str) else repr(annotation)
    found = re.fullmatch(r"\s*(list|tuple)\[([^\]]*)\]\s*", text)
    if not found:
        return None, None
    parts = [part.strip() for part in found.group(2).split(",")]
    kind = _ELEMENT_TYPES.get(parts[0])
    length = len(parts) if found.group(1) == "tuple" and "..." not in parts else None
    return kind, length


def _check_elements(where: str, value: list, kind: type | None, length: int | None) -> list:
    if length is not None and len(value) != length:
        raise InputError(f"{where}: got {value!r}; expected a list of {length} values")
    if kind is None:
        return value
    names = {int: "whole numbers", float: "numbers", str: "strings"}
    out = []
    for item in value:
        wrong = isinstance(item, bool) or (
            not isinstance(item, int | float) if kind is float else not isinstance(item, kind)
        )
        if wrong:
            raise InputError(
                f"{where}: got {value!r}; element {item!r} is not allowed: expected a list of "
                f"{names[kind]}"
            )
        out.append(float(item) if kind is float else item)
    return out


#: (type of the default, does a value fit it, what is expected, the value as stored), in the
#: order they are tried: bool before int, of which it is a subclass
_TYPE_RULES = (
    (bool, lambda v: isinstance(v, bool), "true or false", None),
    (int, lambda v: isinstance(v, int) and not isinstance(v, bool), "a whole number", None),
    (float, lambda v: isinstance(v, int | float) and not isinstance(v, bool), "a number", float),
    (str, lambda v: isinstance(v, str), "a string", None),
    (list | tuple, lambda v: isinstance(v, list | tuple), "a list", list),
    (dict, lambda v: isinstance(v, dict), "a table of settings", dict),
)


def _check_type(section: str, key: str, value, default, elements=(None, None)):
    """Check ``value`` against the type of ``default``; ``elements`` is the element type and
    fixed length of a list setting (:func:`_elements`).

    >>> _check_type("further", "lr", 1, 0.5)
    1.0
    >>> _check_type("further", "epochs", 2.5, 1)
    Traceback (most recent call last):
    ...
    fimo.errors.InputError: further.epochs: got 2.5; expected a whole number
    """
    where = f"{section}.{key}"
    if default is None:  # optional integers (max_steps)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise InputError(f"{where}: got {value!r}; expected a whole number")
        return value
    for kind, fits, expected, convert in _TYPE_RULES:
        if isinstance(default, kind):
            if not fits(value):
                raise InputError(f"{where}: got {value!r}; expected {expected}")
            if convert is list:
                return _check_elements(where, list(value), *elements)
            return value if convert is None else convert(value)
    return value


def from_dict(raw: dict, check_methods: bool = True) -> Config:
    """Validate a configuration dict (as read from TOML) and build a Config.

    Every setting that needs no method imported is checked first, so a mistake in one
    (``further.seeds = 0``) is refused without loading torch; the methods' own tables come last
    (checking them imports every method, hence torch). ``check_methods=False`` leaves those
    out: for listing the presets, which the tests check.

    >>> from_dict({"name": "tiny", "further": {"seeds": 2, "lr": 0.05}}).gold.seeds
    2
    >>> from_dict({"further": {"seed": 3}})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    fimo.errors.InputError: further: unknown key 'seed' (did you mean 'seeds'?); allowed: ...
    """
    if not isinstance(raw, dict):
        raise InputError(f"configuration: expected a table of settings; got {type(raw).__name__}")
    top = {"name", *SECTIONS}
    check_keys("configuration", raw, top)
    name = raw.get("name", "experiment")
    if not isinstance(name, str) or not name:
        raise InputError(f"name: got {name!r}; expected a non-empty string")
    built = {}
    for section, classes in SECTIONS.items():
        built.update(_build_section(section, classes, raw.get(section, {})))
    config = Config(
        name=name,
        data=built[DataConfig],
        model=built[ModelConfig],
        training=built[TrainingSettings],
        further=built[FurtherSettings],
        gold=built[GoldConfig],
        methods=built[MethodsConfig],
        run=built[RunConfig],
        groups=built[GroupsConfig],
    )
    validate(config, check_methods)
    return config


def _build_section(section: str, classes, table) -> dict:
    """The settings objects of one section (``further`` fills two classes), each key checked
    against the classes' fields and their types; a method's own table is checked later, by
    :func:`_validate_methods`, after every setting that needs no method imported."""
    if not isinstance(table, dict):
        raise InputError(f"{section}: expected a table of settings; got {table!r}")
    classes = classes if isinstance(classes, tuple) else (classes,)
    allowed = {}
    for cls in classes:
        allowed.update({k: (cls, v) for k, v in _allowed(cls).items()})
    values = {cls: {} for cls in classes}
    if section == "groups":
        table = _groups_table(table)
    if section == "methods":
        from fimo.methods import ALL_METHOD_NAMES

        per_method = {k: table[k] for k in table if k in ALL_METHOD_NAMES}
        table = {k: v for k, v in table.items() if k not in ALL_METHOD_NAMES}
        values[MethodsConfig]["settings"] = {
            name: _settings_table(name, sub) for name, sub in per_method.items()
        }
    for key, value in table.items():
        if key not in allowed or key == "settings":
            raise InputError(
                f"{section}: unknown key {key!r}{closest(key, allowed)}; "
                f"allowed: {', '.join(sorted(allowed))}"
            )
        cls, default = allowed[key]
        values[cls][key] = _check_type(section, key, value, default, _elements(cls, key))
    return {cls: cls(**values[cls]) for cls in classes}


def _groups_table(table: dict) -> dict:
    """A ``[groups]`` table with ``kind = "feature:NAME"`` (``"feature:NAME:bins=K"``) /
    ``"file:PATH"`` split into kind and values, and every key checked against the kind (a key
    another kind reads is refused).

    >>> _groups_table({"kind": "file:g.txt"})
    {'kind': 'file', 'file': 'g.txt'}
    >>> _groups_table({"kind": "feature:age:bins=5"})
    {'kind': 'feature', 'feature': 'age', 'bins': 5}
    >>> _groups_table({"kind": "label", "count": 5})
    Traceback (most recent call last):
    ...
    fimo.errors.InputError: groups.count: only read with kind = 'random' or 'nested'; got kind = 'label'
    """
    table = dict(table)
    implied = next((k for k in ("feature", "file") if k in table), "random" if table else "none")
    kind = table.get("kind", implied)
    if not isinstance(kind, str):
        raise InputError(f"groups.kind: got {kind!r}; expected a string, e.g. 'random'")
    head, sep, value = kind.partition(":")
    if sep and head in ("feature", "file"):
        if head in table and table[head] != value:
            raise InputError(
                f"groups.{head}: got {table[head]!r} and kind = {kind!r}; give one of them"
            )
        kind, table[head] = head, value
        if head == "feature":
            table.update(_feature_bins(value))
    check_choice("groups.kind", kind, tuple(GROUP_KINDS))
    table["kind"] = kind
    for key in table:
        owners = [k for k, keys in GROUP_KINDS.items() if key in keys]
        if owners and kind not in owners:
            raise InputError(
                f"groups.{key}: only read with kind = {' or '.join(map(repr, owners))}; got "
                f"kind = {kind!r}"
            )
    return table


def _feature_bins(spec: str) -> dict:
    """``{"feature": NAME}`` or, for ``NAME:bins=K``, ``{"feature": NAME, "bins": K}``."""
    name, sep, rest = spec.rpartition(":")
    if not sep or not rest.startswith("bins="):
        return {"feature": spec}
    try:
        return {"feature": name, "bins": int(rest.removeprefix("bins="))}
    except ValueError:
        raise InputError(
            f"groups.kind: got 'feature:{spec}'; expected feature:NAME:bins=K with a whole K "
            "(e.g. feature:age:bins=5)"
        ) from None


def _validate_groups(g: GroupsConfig) -> None:
    if g.kind == "feature" and g.bins and g.bins < 2:
        raise InputError(f"groups.bins: got {g.bins}; must be ≥ 2 (or 0: one group per value)")
    if g.kind in ("random", "nested"):
        if g.count < 3:
            raise InputError(
                f"groups.count: got {g.count}; FT-LDS ranks the groups, so it needs at least 3 "
                "(e.g. 50)"
            )
        if not 0 < g.fraction < 1 and not (g.kind == "nested" and g.fraction == 1):
            raise InputError(
                f"groups.fraction: got {g.fraction}; must lie strictly between 0 and 1 "
                "(e.g. 0.01 for 1 %)"
            )
        if not 0 <= g.seed <= MAX_SEED:
            raise InputError(f"groups.seed: got {g.seed}; must be between 0 and {MAX_SEED}")
    for key in ("feature", "file"):
        if g.kind == key and not getattr(g, key).strip():
            raise InputError(
                f"groups.{key}: empty; kind = {key!r} needs one, e.g. {key} = "
                f"{'sex' if key == 'feature' else 'groups.txt'!r}"
            )


def validate(config: Config, check_methods: bool = True) -> None:
    """Range checks across the whole configuration (before any work starts).

    >>> validate(Config())
    >>> validate(Config(run=RunConfig(workers=-1)))
    Traceback (most recent call last):
    ...
    fimo.errors.InputError: run.workers: got -1; must be ≥ 1 (or 0: chosen from the free cores and the work)
    """
    _validate_gold(config.gold)
    _validate_run(config.run)
    _validate_groups(config.groups)
    if config.data.n_train < 0:
        raise InputError(f"data.n_train: got {config.data.n_train}; must be ≥ 0 (0: all)")
    if config.data.n_test < 1:
        raise InputError(f"data.n_test: got {config.data.n_test}; need at least 1 test instance")
    if not config.model.hidden or any(h < 1 for h in config.model.hidden):
        raise InputError(f"model.hidden: got {config.model.hidden}; widths must be ≥ 1")
    check_choice("model.kind", config.model.kind, MODEL_KINDS)
    if not (config.run.device == "cpu" or config.run.device.startswith("cuda")):
        raise InputError(f"run.device: got {config.run.device!r}; allowed: 'cpu', 'cuda', 'cuda:N'")
    if check_methods:  # last: it imports the methods (and torch)
        _validate_methods(config.methods)


#: seeds are drawn as first_seed, first_seed + 1, ...; all must fit a 32-bit seed
MAX_SEED = 2**31 - 1


def _validate_gold(g: GoldConfig) -> None:
    if g.seeds < 1:
        raise InputError(f"further.seeds: got {g.seeds}; need at least 1 seed")
    if g.first_seed < 0:
        raise InputError(f"further.first_seed: got {g.first_seed}; must be ≥ 0")
    if g.first_seed + g.seeds - 1 > MAX_SEED:
        raise InputError(
            f"further.seeds: got {g.seeds} from first_seed {g.first_seed}; the last seed must "
            f"be ≤ {MAX_SEED}"
        )
    for name in ("left_out", "left_out_per_shard", "memory_budget_mb"):
        if getattr(g, name) > MAX_SEED:
            raise InputError(f"further.{name}: got {getattr(g, name)}; must be ≤ {MAX_SEED}")
    if g.left_out < 2:
        raise InputError(
            f"further.left_out: got {g.left_out}; need at least 2 left-out instances "
            "(centring subtracts their mean)"
        )
    check_choice("further.dtype", g.dtype, ("float32", "float64"))
    if g.left_out_per_shard < 0:
        raise InputError(f"further.left_out_per_shard: got {g.left_out_per_shard}; must be ≥ 0")
    if g.memory_budget_mb < 1:
        raise InputError(f"further.memory_budget_mb: got {g.memory_budget_mb}; must be ≥ 1")
    if g.lora:
        g.lora = check_lora_settings(g.lora)


def _validate_run(run: RunConfig) -> None:
    from fimo.further.ray_address import ray_endpoint

    check_choice("run.executor", run.executor, ("local", "ray"))
    ray_endpoint(run.address)  # its form; whether it answers is checked before the run's work
    if run.workers < 0:
        raise InputError(
            f"run.workers: got {run.workers}; must be ≥ 1 (or 0: chosen from the free cores "
            "and the work)"
        )
    if run.threads < 0:
        raise InputError(
            f"run.threads: got {run.threads}; must be ≥ 1 (or 0: chosen from the load)"
        )


def _validate_methods(methods: MethodsConfig) -> None:
    """The methods' names and settings: first what needs no method imported (names the
    contract reserves, duplicates, shared ranges such as damping), then each method's own
    keys and types, which import the methods (and torch). Stores the checked settings."""
    from fimo.methods import ALL_METHOD_NAMES, available_methods

    check_choice("methods.train", methods.train, ("all", "left_out"))
    for name in methods.names:
        check_choice("methods.names", name, ALL_METHOD_NAMES)
    if len(set(methods.names)) != len(methods.names):
        raise InputError(f"methods.names: got duplicates in {methods.names}")
    for name, settings in methods.settings.items():
        for key, value in settings.items():
            _check_method_setting(f"methods.{name}.{key}", key, value)
    available = tuple(available_methods())
    for name in methods.names:
        check_choice("methods.names", name, available)
    methods.settings = {
        name: _method_settings(name, settings) for name, settings in methods.settings.items()
    }


def _check_method_setting(where: str, key: str, value) -> None:
    """Range checks of the settings several methods share (damping, chunk sizes), so that a
    bad one stops the run before further training, not after it.

    >>> _check_method_setting("methods.cg.damping", "damping", 0.01)
    >>> _check_method_setting("methods.cg.damping", "damping", -1.0)
    Traceback (most recent call last):
    ...
    fimo.errors.InputError: methods.cg.damping: got -1.0; must be a finite number ≥ 0
    """
    if value is None or isinstance(value, bool):
        return
    if "damping" in key and isinstance(value, int | float) and not 0 <= value < math.inf:
        raise InputError(f"{where}: got {value!r}; must be a finite number ≥ 0")
    if key.endswith("chunk_size") and isinstance(value, int) and value < 1:
        raise InputError(f"{where}: got {value!r}; must be a whole number ≥ 1 (or absent)")
    if key == "proj_dim" and not (isinstance(value, int) and value >= 1):
        raise InputError(f"{where}: got {value!r}; must be a whole number ≥ 1 (or absent: none)")
    if key == "proj_structure":  # TRAK's; the choices of fimo.methods.kron_projection
        check_choice(where, value, TRAK_PROJ_STRUCTURES)


#: TRAK's ``proj_structure`` values, checked here without importing torch (the same tuple as
#: :data:`fimo.methods.kron_projection.PROJ_STRUCTURES`, which a test compares).
TRAK_PROJ_STRUCTURES = ("dense", "kronecker", "auto")
MODEL_KINDS = ("mlp", "resnet_small", "minilm")
SCALES = ("quick", "paper")


def preset_names() -> list[str]:
    """The built-in presets, by name.

    >>> "adult" in preset_names()
    True
    """
    folder = resources.files("fimo.experiments") / "presets"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


#: a configuration's name becomes the folder runs/<name>: no separators, no "..", not hidden
RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def default_run_dir(config: Config) -> Path:
    """``runs/<config.name>``, or an InputError if the name is not a plain word.

    >>> default_run_dir(Config(name="adult")).as_posix()
    'runs/adult'
    """
    if not RUN_NAME.match(config.name):
        raise InputError(
            f"name: got {config.name!r}; the run directory is runs/<name>, so the name must "
            "be a plain word (letters, digits, '_', '-', '.'); rename it or pass --out"
        )
    return Path("runs") / config.name


def load_config(
    source: str | Path | None = None, scale: str = "quick", check_methods: bool = True
) -> Config:
    """A preset by name (default ``adult``), or a TOML file by path, at a ``scale``.

    A configuration may carry a ``[scales.paper]`` table of overrides (same sections and keys
    as the configuration itself) that ``scale="paper"`` applies on top; ``"quick"`` (the
    default) uses the configuration as written. An ``[about]`` table (what the preset
    stands for, measured times) is descriptive and read by :func:`preset_about`.
    ``check_methods``: see :func:`from_dict`.

    >>> load_config("concrete").name, load_config("concrete", scale="paper").name
    ('concrete', 'concrete-paper')
    """
    raw = _read_raw(source)
    return from_dict(apply_scale(raw, scale, source), check_methods)


def preset_about(source: str) -> dict:
    """The ``[about]`` table of a preset or configuration file (empty when it has none).

    >>> "summary" in preset_about("adult")
    True
    """
    about = _read_raw(source).get("about", {})
    return about if isinstance(about, dict) else {}


def apply_scale(raw: dict, scale: str, source=None) -> dict:
    """``raw`` without its ``about`` and ``scales`` tables, with ``scales.<scale>`` merged in.

    >>> apply_scale({"name": "x", "scales": {"paper": {"further": {"seeds": 100}}}}, "paper")
    {'name': 'x', 'further': {'seeds': 100}}
    """
    check_choice("scale", scale, SCALES)
    raw = copy.deepcopy(raw)
    _check_about(raw.pop("about", {}))
    scales = raw.pop("scales", {})
    if not isinstance(scales, dict):
        raise InputError(f"scales: expected tables of overrides; got {scales!r}")
    unknown = [k for k in scales if k not in SCALES]
    if unknown:
        raise InputError(
            f"scales: unknown scale {unknown[0]!r}{closest(unknown[0], SCALES)}; "
            f"allowed: {', '.join(SCALES)}"
        )
    for name, table in scales.items():  # every scale's keys, whichever scale runs
        _check_override_keys(table, f"scales.{name}")
    if scale == "quick":
        return raw
    overrides = scales.get(scale)
    if overrides is None:
        raise InputError(
            f"scale: {source or 'this configuration'} has no [scales.{scale}] table; "
            f"run it at scale 'quick' or add one"
        )
    _merge(raw, overrides, "scales." + scale)
    return raw


#: the keys of an ``[about]`` table (read by :func:`preset_about`)
ABOUT_KEYS = (
    "summary",
    "paper_counterpart",
    "quick_minutes",
    "paper_hours",
    "paper_hours_measured",
    "paper_measured_on",
)


def _check_about(about) -> None:
    """InputError for an ``[about]`` table that is not one, or has a key fimo does not read.

    >>> _check_about({"summary": "x"})
    >>> _check_about({"sumary": "x"})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    fimo.errors.InputError: about: unknown key 'sumary' (did you mean 'summary'?); allowed: ...
    """
    if not isinstance(about, dict):
        raise InputError(f"about: expected a table; got {about!r}")
    check_keys("about", about, ABOUT_KEYS, ordered=False)


def _check_override_keys(table, where: str) -> None:
    """InputError for a key of a ``[scales.*]`` table that no configuration has (checked even
    when that scale is not the one run, so a misspelling never waits for the long run).

    >>> _check_override_keys({"further": {"seeds": 100}}, "scales.paper")
    >>> _check_override_keys({"further": {"sead": 100}}, "scales.paper")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    fimo.errors.InputError: scales.paper.further: unknown key 'sead' (did you mean 'seeds'?)...
    """
    from fimo.methods import ALL_METHOD_NAMES

    if not isinstance(table, dict):
        raise InputError(f"{where}: expected a table of overrides; got {table!r}")
    top = {"name", *SECTIONS}
    check_keys(where, table, top)
    for key, value in table.items():
        if key == "name":
            continue
        if not isinstance(value, dict):
            raise InputError(f"{where}.{key}: expected a table of settings; got {value!r}")
        classes = SECTIONS[key] if isinstance(SECTIONS[key], tuple) else (SECTIONS[key],)
        allowed = {k for cls in classes for k in _allowed(cls)} - {"settings"}
        if key == "methods":
            allowed |= set(ALL_METHOD_NAMES)
        check_keys(f"{where}.{key}", value, allowed)


def _merge(base: dict, overrides: dict, where: str) -> None:
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value, f"{where}.{key}")
        elif isinstance(value, dict) and key in SECTIONS and key not in base:
            base[key] = copy.deepcopy(value)
        else:
            base[key] = value


def _read_raw(source: str | Path | None) -> dict:
    source = "adult" if source is None else str(source)
    if source.endswith(".toml"):
        path = Path(source)
        if not path.is_file():
            raise InputError(f"configuration file {source!r} does not exist")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(
                f"configuration file {source!r} is not UTF-8 text (byte {exc.object[exc.start]:#04x}"
                f" at {exc.start}); save it as UTF-8"
            ) from None
    else:
        names = preset_names()
        if source not in names:
            raise InputError(
                f"unknown preset {source!r}{closest(source, names)}; available: {', '.join(names)} "
                "(or give a path to a .toml configuration)"
            )
        text = (resources.files("fimo.experiments") / "presets" / f"{source}.toml").read_text()
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"configuration {source!r} is not valid TOML: {exc}") from exc
    return raw


def parse_groups(spec: str) -> dict:
    """The ``[groups]`` table that ``fimo run --groups SPEC`` stands for: ``random:M:α``
    (``random:M`` takes α = 0.5; α may be written ``1%``), ``nested:M:α`` (α of the left-out
    instances), ``label``, ``feature:NAME`` (``feature:NAME:bins=K``), ``file:PATH`` or
    ``none``.

    >>> parse_groups("random:50:1%"), parse_groups("feature:sex")
    ({'kind': 'random', 'count': 50, 'fraction': 0.01}, {'kind': 'feature:sex'})
    >>> parse_groups("random:many")
    Traceback (most recent call last):
    ...
    fimo.errors.InputError: --groups: got 'random:many'; expected random:COUNT:FRACTION with a whole COUNT and a FRACTION such as 0.01 or 1% (e.g. random:50:0.01)
    """
    kind, _, rest = spec.strip().partition(":")
    if kind not in ("random", "nested"):
        return {"kind": spec.strip()}
    parts = rest.split(":") if rest else []
    try:
        if not 1 <= len(parts) <= 2:
            raise ValueError
        table = {"kind": kind, "count": int(parts[0])}
        if len(parts) == 2:
            text = parts[1].strip()
            table["fraction"] = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise InputError(
            f"--groups: got {spec!r}; expected {kind}:COUNT:FRACTION with a whole COUNT and a "
            "FRACTION such as 0.01 or 1% (e.g. random:50:0.01)"
        ) from None
    return table


def with_overrides(config: Config, **overrides) -> Config:
    """Apply CLI-style overrides (None = keep), revalidating the result.

    A method in ``methods`` that the configuration does not list takes the settings its
    family has in the configuration (:mod:`fimo.experiments.families`): named on the command
    line for ``adult``, ``lissa_hessian`` gets the influence family's ``hessian_samples``.

    >>> with_overrides(Config(), seeds=4, lr=None).gold.seeds
    4
    >>> with_overrides(Config(), groups="random:20:0.5").groups.describe()
    'random:20:0.5'
    """
    raw = config.to_dict()
    if overrides.get("groups") is not None:  # --groups replaces the whole [groups] table
        raw["groups"] = parse_groups(overrides.pop("groups"))
    overrides.pop("groups", None)
    mapping = {
        "seeds": ("further", "seeds"),
        "left_out": ("further", "left_out"),
        "epochs": ("further", "epochs"),
        "optimizer": ("further", "optimizer"),
        "lr": ("further", "lr"),
        "device": ("run", "device"),
        "methods": ("methods", "names"),
        "n_test": ("data", "n_test"),
        "dtype": ("further", "dtype"),
        "executor": ("run", "executor"),
        "workers": ("run", "workers"),
        "address": ("run", "address"),
        "threads": ("run", "threads"),
    }
    if (
        overrides.get("address") is not None
        and (overrides.get("executor") or config.run.executor) != "ray"
    ):
        raise InputError(
            f"--address: got {overrides['address']!r}, but the executor is local; pass "
            "--executor ray with it (or leave --address out)"
        )
    for key, value in overrides.items():
        if key not in mapping:
            raise InputError(
                f"override {key!r} is unknown{closest(key, mapping)}; allowed: "
                f"{', '.join(mapping)} (other settings: edit the Config or a TOML file)"
            )
        if value is None:
            continue
        section, name = mapping[key]
        raw[section][name] = value
    if overrides.get("methods") is not None:  # a method the configuration did not list
        from fimo.experiments.families import with_family_settings  # takes its family's

        from_dict(raw, check_methods=False)  # the rest first: finding the family imports torch

        methods = config.methods
        raw["methods"].update(
            with_family_settings(overrides["methods"], methods.names, methods.settings)
        )
    return from_dict(raw)
