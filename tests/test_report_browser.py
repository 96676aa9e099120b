"""The report opened the way a person opens it: in a browser (headless Chromium).

Checks that the page loads with no console messages (it has no script, so any message is
an error), that every figure is present, decoded and not blank, that nothing outside the
page is referenced, and that the summary names the methods. The screenshot is kept as a
test artefact (its path is printed). Skipped, with the reason, when Chromium is absent;
`.ci/run` installs Debian's `chromium`.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from test_report import FIGURES

CHROMIUM = shutil.which("chromium") or (
    "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None
)
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Chromium is not installed (Debian: apt-get install -y chromium; .ci/run installs it)",
)

# Added to a copy of the page (the report itself has no script): what the browser made of it.
CHECKER = """
<script>
window.addEventListener("load", () => {
  const images = [...document.images].map(i => ({
    alt: i.alt, ok: i.complete && i.naturalWidth > 0, w: i.naturalWidth, h: i.naturalHeight}));
  const outside = [...document.querySelectorAll("[src], [href]")]
    .map(e => e.getAttribute("src") || e.getAttribute("href"))
    .filter(u => !u.startsWith("data:") && !u.startsWith("#"));
  const summary = document.querySelector(".summary");
  const out = document.createElement("pre");
  out.id = "fimo-check";
  out.textContent = JSON.stringify({images, outside,
    summary: summary ? summary.innerText : "", title: document.title,
    width: document.documentElement.scrollWidth});
  document.body.appendChild(out);
});
</script>
"""


def chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"Chromium did not finish in 180 s: {' '.join(cmd)}\n{exc.stderr}")


def console_messages(stderr: str) -> list[str]:
    """Console output and failed loads in Chromium's log (not its own D-Bus or GPU chatter)."""
    return [
        line
        for line in stderr.splitlines()
        if ":CONSOLE" in line or "Failed to load resource" in line or "net::ERR_" in line
    ]


@pytest.fixture(scope="module")
def report(handmade_report) -> Path:
    """The hand-made run's report (conftest: built once, only read here)."""
    return handmade_report[0] / "report.html"


def test_report_in_headless_chromium(report, tmp_path_factory, record_property):
    art = tmp_path_factory.mktemp("artefacts")
    shot = art / "report.png"
    done = chromium(
        ["--enable-logging=stderr", "--v=0", "--window-size=1280,2400",
         f"--screenshot={shot}", report.as_uri()],
        art / "profile-shot",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert console_messages(done.stderr) == []
    print(f"\nscreenshot of the report: {shot}")
    record_property("screenshot", str(shot))
    pixels = imread(shot)
    assert pixels.shape[:2] == (2400, 1280)
    assert pixels[..., :3].std() > 0.05  # a page, not a blank window

    # what the browser made of every element
    checked = art / "check.html"
    checked.write_text(report.read_text().replace("</body>", CHECKER + "</body>"))
    done = chromium(
        ["--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000", "--dump-dom",
         checked.as_uri()],
        art / "profile-dom",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert console_messages(done.stderr) == []
    found = re.search(r'<pre id="fimo-check">(.*?)</pre>', done.stdout, re.S)
    assert found, "the page did not finish loading"
    import html

    state = json.loads(html.unescape(found.group(1)))
    assert state["outside"] == []
    assert state["title"] == "fimo: handmade"
    assert len(state["images"]) == len(FIGURES)
    for image in state["images"]:
        assert image["ok"] and image["w"] > 300 and image["h"] > 200, image
    assert "grad_dot" in state["summary"] and "grad_cos" in state["summary"]
    assert "agrees best" in state["summary"]
    assert state["width"] <= 1280  # readable on a laptop: no sideways scrolling


def test_every_figure_decodes_to_a_non_blank_image(report):
    text = report.read_text()
    blobs = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", text)
    alts = re.findall(r"<img class='plot' alt='([^']+)'", text)
    assert len(blobs) == len(alts) == len(FIGURES)
    for blob, alt in zip(blobs, alts, strict=True):
        pixels = imread(io.BytesIO(base64.b64decode(blob)), format="png")[..., :3]
        assert pixels.std() > 0.02, alt
        assert np.mean(pixels < 0.5) > 0.001, alt  # lines and labels, not an empty frame
