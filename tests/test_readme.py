"""The README's Python example runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(capsys):
    text = README.read_text()
    section = text[text.index("## From Python") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    gold, scores = namespace["gold"], namespace["scores"]
    assert gold.mean(centred=True).shape == (1, 10, 8)
    assert scores["grad_dot"].values.shape == (10, 8)
    printed = capsys.readouterr().out.split()
    assert printed[0] == "cosine" and -1 <= float(printed[1]) <= 1
