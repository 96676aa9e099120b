"""The ``fimo`` command.

Exit codes: 0 success; 2 bad input (a one-line message naming the setting, what came and
what is allowed) or a damaged file; 1 numerical trouble, a file the system would not write
(a full disk, an unwritable directory: the message names the file) or an internal error.
Warnings (a damaged shard being recomputed, a method's convergence) print as one line each.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fimo.errors import InputError, NumericalError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="fimo: final-model-only training data attribution (further training as the gold "
    "standard, and the gradient-based methods it unifies).",
)
err = Console(stderr=True, emoji=False)  # ":M:" in a message is text, not an emoji


#: the options of ``fimo run`` (declared here so that the command reads as a list of names)
Source = Annotated[
    str, typer.Argument(help="A preset name (see `fimo presets`) or a path to a .toml file.")
]
OutDir = Annotated[Path | None, typer.Option(help="Run directory (default: runs/<name>).")]
Seeds = Annotated[int | None, typer.Option(help="Number of further-training seeds.")]
LeftOut = Annotated[
    int | None, typer.Option("--left-out", help="Number of left-out training instances.")
]
Epochs = Annotated[int | None, typer.Option(help="Further-training epochs.")]
Optimizer = Annotated[
    str | None, typer.Option(help="Further-training optimizer: sgd, adam or adamw.")
]
Lr = Annotated[float | None, typer.Option(help="Further-training learning rate.")]
Methods = Annotated[
    str | None, typer.Option(help="Comma-separated methods, e.g. grad_dot,grad_cos.")
]
NTest = Annotated[int | None, typer.Option("--n-test", help="Number of test instances.")]
Dtype = Annotated[
    str | None, typer.Option(help="Precision of further training: float32 or float64.")
]
Device = Annotated[str | None, typer.Option(help="cpu, cuda or cuda:N.")]
Executor = Annotated[str | None, typer.Option(help="Where shards run: local (default) or ray.")]
Workers = Annotated[
    int | None,
    typer.Option(
        help="Local worker processes for further training (default 0: one per free core when "
        "the work is long)."
    ),
]
Threads = Annotated[
    int | None,
    typer.Option(help="torch threads of final training and the methods (default: from the load)."),
]
Address = Annotated[
    str | None,
    typer.Option(help="Ray cluster: auto, ray://HOST:PORT, or local to start one here."),
]
Groups = Annotated[
    str | None,
    typer.Option(
        help="Groups the gold standard also leaves out (FT-LDS): random:COUNT:FRACTION "
        "(e.g. random:50:0.01), nested:COUNT:FRACTION (of the left-out instances), label, "
        "feature:NAME, feature:NAME:bins=K, file:PATH or none (replaces the "
        "configuration's groups table)."
    ),
]
Overwrite = Annotated[
    bool, typer.Option(help="Discard results made under other settings and start afresh.")
]
Quiet = Annotated[bool, typer.Option(help="No progress bars or tables.")]
Scale = Annotated[
    str,
    typer.Option(help="quick (default: minutes) or paper (the paper's sizes; see `fimo presets`)."),
]


@app.command("run")
def run_command(
    source: Source = "adult",
    out: OutDir = None,
    seeds: Seeds = None,
    left_out: LeftOut = None,
    epochs: Epochs = None,
    optimizer: Optimizer = None,
    lr: Lr = None,
    methods: Methods = None,
    n_test: NTest = None,
    dtype: Dtype = None,
    device: Device = None,
    executor: Executor = None,
    workers: Workers = None,
    threads: Threads = None,
    address: Address = None,
    groups: Groups = None,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    scale: Scale = "quick",
) -> None:
    """Run an experiment: final model, gold standard, methods, metrics and report.

    Settings are checked before any work; a refused run exits with 2 (the one-line message
    goes to stderr):

    >>> import tempfile
    >>> main(["run", "adult", "--seeds", "0", "--out", tempfile.mkdtemp()])
    2
    >>> main(["run", "no_such_preset"]), main(["run", "--no-such-option"])
    (2, 2)
    >>> main(["run", "adult", "--groups", "random:2:0.01", "--out", tempfile.mkdtemp()])
    2
    """
    overrides = dict(
        seeds=seeds, left_out=left_out, epochs=epochs, optimizer=optimizer, lr=lr,
        methods=_method_names(methods), n_test=n_test, dtype=dtype, device=device,
        executor=executor, workers=workers, address=address, groups=groups, threads=threads,
    )  # fmt: skip
    config, out = _checked_run(source, scale, overrides, out)
    from fimo.experiments.pipeline import run

    result = run(config, out, overwrite=overwrite, quiet=quiet)
    _print_summary(result.rows, result.report, quiet)


def _checked_run(source: str, scale: str, overrides: dict, out: Path | None):
    """``(config, run directory)`` of ``fimo run``, every setting and the directory checked
    before torch loads where they can be: a held or foreign ``--out`` first, then every
    setting but the methods' own (:func:`fimo.experiments.config.from_dict`)."""
    from fimo.experiments.rundir import RunDir

    if out is not None:
        RunDir(out).check_free()
    from fimo.experiments.config import default_run_dir, load_config, with_overrides

    config = with_overrides(load_config(source, scale=scale, check_methods=False), **overrides)
    if out is None:
        out = default_run_dir(config)
        RunDir(out).check_free()
    return config, out


def _method_names(methods: str | None) -> list[str] | None:
    """The names in ``--methods`` (None when it is not given); an InputError when it names none.

    >>> _method_names("grad_dot, grad_cos,"), _method_names(None)
    (['grad_dot', 'grad_cos'], None)
    """
    if methods is None:
        return None
    names = [m.strip() for m in methods.split(",") if m.strip()]
    if not names:
        raise InputError(
            f"--methods: got {methods!r}, which names no method; give comma-separated names, "
            "e.g. grad_dot,grad_cos (or leave it out for the configuration's)"
        )
    return names


def _print_evaluation(ev, run_dir: Path, quiet: bool) -> None:
    from fimo.experiments.rundir import RunDir

    _print_summary(ev.rows["by_checkpoint"], RunDir(run_dir).report, quiet)


def _print_summary(rows: list[dict], report: Path, quiet: bool) -> None:
    """The agreement table (cosine with the centred gold standard), then the report's path."""
    from fimo.terminal import rich_summary_table

    console = Console()
    if not quiet:
        if not console.is_terminal:  # files and pipes get the whole table, unwrapped
            console = Console(width=120)
        console.print(rich_summary_table(rows, metric="cosine", centred=True))
    console.print(f"Report: {report}")


@app.command("attribute")
def attribute_command(
    source: Annotated[
        str, typer.Argument(help="A preset name (see `fimo presets`) or a path to a .toml file.")
    ] = "adult",
    test: Annotated[
        str, typer.Option(help="Test instances (dataset indices, comma-separated), e.g. 0,5,9.")
    ] = "0,1,2",
    method: Annotated[
        str, typer.Option(help="The method (default unrolled_quadratic; see docs/attribute.md).")
    ] = "unrolled_quadratic",
    steps: Annotated[
        int | None,
        typer.Option(help="Further-training steps the estimate looks ahead (default: all)."),
    ] = None,
    seeds: Annotated[int | None, typer.Option(help="Seeds of a method that has them.")] = None,
    top: Annotated[int, typer.Option(help="Helpful and harmful instances shown per test.")] = 5,
    out: Annotated[Path | None, typer.Option(help="Run directory (default: runs/<name>).")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda or cuda:N.")] = None,
    threads: Threads = None,
    overwrite: Annotated[
        bool, typer.Option(help="Discard a final model trained under other settings.")
    ] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bars or tables.")] = False,
    scale: Annotated[str, typer.Option(help="quick (default) or paper.")] = "quick",
) -> None:
    """Score every training instance for chosen test instances, from the final model alone.

    Writes attribution/<method>.npz and attribution.html into the run directory; the same
    command again reuses the scores. Bad settings exit with 2 before any work:

    >>> main(["attribute", "concrete", "--test", "0,-1"]), main(["attribute", "--steps", "0"])
    (2, 2)
    """
    from fimo.experiments.attribute import attribute, parse_indices
    from fimo.terminal import rich_attribution_table

    result = attribute(
        source, parse_indices(test), method=method, steps=steps, seeds=seeds, top=top,
        out=out, device=device, scale=scale, overwrite=overwrite, quiet=quiet,
        threads=threads or 0,
    )  # fmt: skip
    console = Console() if Console().is_terminal else Console(width=120)
    if not quiet:
        for t in result.scores.test.tolist():
            console.print(rich_attribution_table(result, t))
    took = "saved scores reused" if result.reused else f"computed in {result.seconds:.1f} s"
    console.print(f"Attribution: {result.page} ({method}, {took})", soft_wrap=True)


@app.command("report")
def report_command(
    run_dir: Annotated[Path, typer.Argument(help="A run directory made by `fimo run`.")],
    examples: Annotated[
        str | None,
        typer.Option(
            help="Test instances (dataset indices, comma-separated) whose most influential "
            "training instances are shown; default: the first three."
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option(help="Print only the report's path.")] = False,
) -> None:
    """Rebuild the metrics tables, plots and report.html of a run from its files.

    A directory without a gold standard, or ``--examples`` that are not indices, exit with 2:

    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> main(["report", folder]), main(["report", folder, "--examples", "a,b"])
    (2, 2)
    """
    from fimo.experiments.rundir import RunDir

    options = {}
    if examples is not None:
        try:
            options["example_test"] = [int(t) for t in examples.split(",") if t.strip()]
        except ValueError:
            raise InputError(
                f"--examples: got {examples!r}; expected dataset indices such as 0,5,9"
            ) from None
    RunDir(run_dir).check_exists()
    RunDir(run_dir).check_free()  # before torch loads
    from fimo.experiments.outputs import rebuild_report

    ev = rebuild_report(run_dir, **options)
    _print_evaluation(ev, run_dir, quiet)


@app.command("compare")
def compare_command(
    run_dir: Annotated[Path, typer.Argument(help="A run directory made by `fimo run`.")],
    scores: Annotated[
        Path,
        typer.Option(help="The score matrix: .npy, .npz, .pt / .pth or .safetensors."),
    ],
    name: Annotated[str, typer.Option(help="Its name in the tables (scores/<name>.npz).")],
    orientation: Annotated[
        str,
        typer.Option(
            help="Layout of the matrix: test,train (kronfluence, captum) or train,test "
            "(dattri, TRAK)."
        ),
    ],
    sign: Annotated[
        str,
        typer.Option(
            help="helpful: positive already means helpful (fimo's sign); harmful: positive "
            "means the training instance raises the test loss (negated on the way in)."
        ),
    ] = "helpful",
    test_indices: Annotated[
        Path | None,
        typer.Option(
            "--test-indices", help="Dataset indices of the matrix's test instances (file)."
        ),
    ] = None,
    train_indices: Annotated[
        Path | None,
        typer.Option(
            "--train-indices", help="Dataset indices of the matrix's training instances (file)."
        ),
    ] = None,
    key: Annotated[
        str | None, typer.Option(help="The array to use in a file that holds several.")
    ] = None,
    quiet: Annotated[bool, typer.Option(help="Print only the report's path.")] = False,
) -> None:
    """Score a matrix made elsewhere against the run's gold standard and add it to the report.

    The name, orientation and sign are checked first; a built-in method's name is refused:

    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> main(["compare", folder, "--scores", "m.npy", "--name", "grad_dot",
    ...       "--orientation", "test,train"])
    2
    """
    from fimo.experiments.rundir import RunDir

    RunDir(run_dir).check_external(name, orientation, sign)
    RunDir(run_dir).check_free()  # before torch loads
    from fimo.experiments.outputs import compare_run

    sc, ev = compare_run(run_dir, scores, name, orientation, sign, test_indices, train_indices, key)
    if not quiet:
        Console().print(
            f"Saved {RunDir(run_dir).scores_file(name)}: {sc.shape[0]} test × "
            f"{sc.shape[1]} train, {sc.settings['orientation']}, sign {sign}.",
            soft_wrap=True,
        )
    _print_evaluation(ev, run_dir, quiet)


@app.command("verify")
def verify_command(
    run_dir: Annotated[Path, typer.Argument(help="A run directory made by `fimo run`.")],
) -> None:
    """Check every file of a run against its recorded checksum (<file>.sha256).

    >>> import contextlib, io, tempfile
    >>> import numpy as np
    >>> from fimo.experiments.config import Config
    >>> from fimo.experiments.rundir import RunDir
    >>> from fimo.scores import Scores
    >>> run = RunDir(tempfile.mkdtemp())
    >>> _ = run.write_config(Config(name="tiny"))
    >>> _ = Scores(np.ones((1, 2)), [0], [3, 4], "m").save(run.scores_file("m"))
    >>> with contextlib.redirect_stdout(io.StringIO()) as out:
    ...     code = main(["verify", str(run.path)])
    >>> code, out.getvalue().strip().endswith("match their checksums.")
    (0, True)
    >>> _ = run.scores_file("m").write_bytes(b"damaged")
    >>> main(["verify", str(run.path)])  # 1 of 1 files damaged: exit 2
    2
    >>> main(["verify", tempfile.mkdtemp()])  # not a run directory
    2
    """
    from fimo.experiments.rundir import RunDir
    from fimo.io import DamagedFileError

    RunDir(run_dir).check_is_run()
    checked, damaged, missing = RunDir(run_dir).verify()
    parts = []
    if damaged:
        parts.append(f"{len(damaged)} do not match their checksums {_few(damaged, run_dir)}")
    if missing:
        parts.append(f"{len(missing)} are missing {_few(missing, run_dir)}")
    if parts:
        raise DamagedFileError(
            f"of {checked} files in {run_dir}, {' and '.join(parts)}; run `fimo run` with the "
            "same configuration again to recompute them"
        )
    Console().print(f"{checked} files in {run_dir} match their checksums.")


def _few(paths: list[Path], folder: Path) -> str:
    """``(a, b, c ...)``: the first few of ``paths``, relative to ``folder``."""
    names = ", ".join(Path(p).relative_to(folder).as_posix() for p in paths[:5])
    return f"({names}{' ...' if len(paths) > 5 else ''})"


@app.command("presets")
def presets_command() -> None:
    """List the built-in experiments: what each runs and how long it takes on 2 CPU cores.

    >>> import contextlib, io
    >>> with contextlib.redirect_stdout(io.StringIO()) as out:
    ...     code = main(["presets"])
    >>> code, "fimo presets" in out.getvalue(), "adult" in out.getvalue()
    (0, True, True)
    """
    from rich.table import Table

    from fimo.experiments.config import load_config, preset_about, preset_names

    table = Table(title="fimo presets (fimo run NAME [--scale paper])", show_lines=True)
    for column in ("preset", "data · model", "quick scale (default)", "paper scale"):
        table.add_column(column)
    for name in preset_names():
        about = preset_about(name)
        cells = []
        for scale in ("quick", "paper"):
            c = load_config(name, scale=scale, check_methods=False)  # no torch: see from_dict
            g, f = c.gold, c.further
            steps = f"{f.max_steps} steps" if f.max_steps else f"{f.epochs} epochs"
            cells.append(
                f"{g.seeds} seeds × {g.left_out} left out × {c.data.n_test} test; "
                f"{f.optimizer} lr {f.lr:g}, {steps}, {f.scheme}; "
                f"methods {', '.join(c.methods.names)}"
            )
        quick_time = about.get("quick_minutes")
        paper_time = about.get("paper_hours")
        if quick_time:
            cells[0] += f"\n[bold]≈ {quick_time:g} min[/bold] on 2 cores"
        measured = about.get("paper_hours_measured")
        if measured:
            how = f"; {about['paper_measured_on']}" if about.get("paper_measured_on") else ""
            cells[1] += f"\n[bold]{measured:g} h[/bold] measured (estimate {paper_time:g} h{how})"
        elif paper_time:
            cells[1] += f"\n[bold]≈ {paper_time:g} h[/bold] estimated"
        data = (
            f"{about.get('summary', name)}\n[dim]paper: {about.get('paper_counterpart', '-')}[/dim]"
        )
        table.add_row(name, data, *cells)
    Console(width=max(Console().width, 140)).print(table)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app and map errors to exit codes.

    >>> main(["verify", "no/such/run"])  # the message goes to stderr
    2
    """
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        return _main(argv)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    err.print(f"[yellow]warning:[/yellow] {_one_line(message)}", highlight=False, soft_wrap=True)


def _error(kind: str, message) -> None:
    err.print(f"[red]{kind}:[/red] {_one_line(message)}", highlight=False, soft_wrap=True)


def _one_line(message) -> str:
    """Messages are one line, even when they quote another library's longer one, and are
    printed as written (brackets in them are text, not rich markup)."""
    from rich.markup import escape

    return escape(" ".join(str(message).split()))


def _usage_classes() -> tuple[tuple, tuple, tuple]:
    """``(usage errors, exits, aborts)``: the exception classes the CLI layer raises.

    typer 0.29 and later raise their own bundled copies of click's classes (``typer._click``,
    ``typer.exceptions``); older typer raise click's. Both are caught, whichever is installed.

    >>> usage, exits, aborts = _usage_classes()
    >>> import typer.exceptions
    >>> typer.exceptions.Exit in exits or typer.Exit in exits
    True
    """
    usage, exits, aborts = [], [], []
    for errors_module, control_module in (
        ("typer._click.exceptions", "typer.exceptions"),
        ("click.exceptions", "click.exceptions"),
    ):
        try:
            errors = importlib.import_module(errors_module)
            control = importlib.import_module(control_module)
        except ImportError:
            continue
        usage.append(errors.ClickException)
        exits.append(control.Exit)
        aborts.append(control.Abort)
    return tuple(usage), tuple(exits), tuple(aborts)


INTERRUPTED = "interrupted; rerun the same command to continue (finished work is kept)"


def _main(argv: list[str] | None) -> int:
    usage, exits, aborts = _usage_classes()
    try:
        code = app(args=argv, prog_name="fimo", standalone_mode=False)
    except InputError as exc:
        _error("error", exc)
        return 2
    except NumericalError as exc:
        _error("numerical error", exc)
        return 1
    except (KeyboardInterrupt, *aborts):
        err.print(INTERRUPTED, highlight=False, soft_wrap=True)
        return 130
    except OSError as exc:  # a full disk, an unwritable directory: name the file, no traceback
        from fimo.io import describe_os_error

        _error("error", describe_os_error(exc))
        return 1
    except usage as exc:  # a bad option or argument: one line, and where to read more
        _error("error", _usage_message(exc))
        return 2
    except exits as exc:
        code = exc.exit_code
    # typer turns Ctrl-C into an exit code of 130 returned here (not raised)
    if isinstance(code, int) and not isinstance(code, bool):
        if code == 130:
            err.print(INTERRUPTED, highlight=False, soft_wrap=True)
        return code
    return 0


def _usage_message(exc) -> str:
    """click's message for a usage error, with the command whose --help explains it."""
    ctx = getattr(exc, "ctx", None)
    where = f"; see `{ctx.command_path} --help`" if ctx is not None else ""
    return f"{exc.format_message().rstrip('.')}{where}"


def entry() -> None:
    """Console-script entry point: :func:`main` on the command line, its code as exit status.

    >>> from unittest import mock
    >>> with mock.patch("sys.argv", ["fimo", "verify", "no/such/run"]):
    ...     entry()
    Traceback (most recent call last):
    ...
    SystemExit: 2
    """
    sys.exit(main())


if __name__ == "__main__":
    entry()
