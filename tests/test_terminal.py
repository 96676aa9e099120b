"""The terminal's summary table names checkpoints by step when they are not whole epochs."""

from rich.console import Console

from fimo.terminal import rich_summary_table


def _rows(epochs, steps):
    return [
        {"method": "grad_dot", "checkpoint": c, "step": s, "epoch": e, "metric": "cosine",
         "centred": True, "mean": v, "sem": 0.01, "n": 4}
        for c, (e, s, v) in enumerate(zip(epochs, steps, (0.5, 0.9, 0.7), strict=True))
    ]  # fmt: skip


def _text(rows):
    console = Console(width=160, record=True, file=open("/dev/null", "w"))
    console.print(rich_summary_table(rows, also=None))
    return console.export_text()


def test_checkpoints_within_an_epoch_are_named_by_step():
    text = _text(_rows([0.0117, 0.0235, 0.0469], [3, 6, 12]))
    assert "cosine first (step 3)" in text and "cosine last (step 12)" in text
    assert "0.900 (6)" in text  # the peak at step 6, not "(0.0235)"


def test_whole_epochs_keep_the_epoch_label():
    text = _text(_rows([1.0, 2.0, 3.0], [100, 200, 300]))
    assert "cosine first (epoch 1)" in text and "cosine peak (epoch)" in text
    assert "0.900 (2)" in text


def test_error_lines_print_colon_words_as_text(capsys):
    """rich would turn ':M:' into an emoji; a message must reach the user as written."""
    from fimo import cli

    cli._error("error", "--groups: expected random:M:α, e.g. random:50:0.01 [sic]")
    err = capsys.readouterr().err
    assert "random:M:α, e.g. random:50:0.01 [sic]" in err
