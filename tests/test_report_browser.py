"""The reports in a real browser: headless Chromium (the distribution's package) opens the
report of the quickstart's first stage (the tutorial MLP on digits, shortened to 3 epochs), of
a tiny GPT pretraining run, and their comparison; each screenshot must show the figures'
curves, and the page must log nothing to the console (it has no script: any console line is
an error).

The check of the pixels: the curves are drawn in the palette's first colour (#1f77b4), which
nothing else on the page uses; the same page with its images taken out is the baseline.
Skipped when no chromium binary is on PATH (CI installs it: .ci/run).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from groundup.cli import main
from groundup.report.build import write_report
from groundup.report.figures import COLORS

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_pretrain import write_config  # noqa: E402

BROWSER = next((b for b in ("chromium", "chromium-browser") if shutil.which(b)), None)
pytestmark = pytest.mark.skipif(
    BROWSER is None, reason="no chromium on PATH (apt-get install chromium)"
)
WINDOW = (1200, 3000)
MIN_CURVE_PIXELS = 1000  # a few curves' worth (the pages show 2,800 to 5,700); none has 0
CURVE = tuple(int(COLORS[0][i : i + 2], 16) / 255 for i in (1, 3, 5))  # #1f77b4 as RGB 0..1


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict[str, Path]:
    """The quickstart's digits stage (3 epochs), a 40-step GPT, and both compared."""
    from groundup.jobs.quickstart import stage_config
    from groundup.jobs.train_tabular import run_train

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        folder = tmp_path_factory.mktemp("browser")
        digits = stage_config("digits", folder / "digits-mlp", ["train.epochs=3"])
        run_train(None, config=digits, verbose=0)
        gpt = write_config(folder, train={"max_steps": 20, "eval_every": 10, "log_every": 2})
        assert main(["pretrain", str(gpt)]) == 0
    finally:
        torch.set_num_threads(before)
    runs = {"digits": folder / "digits-mlp", "gpt": folder / "run"}
    pages = {name: write_report([run], folder / f"{name}.html") for name, run in runs.items()}
    pages["compare"] = write_report(list(runs.values()), folder / "compare.html")
    return pages


def screenshot(page: Path, out: Path) -> tuple[np.ndarray, str]:
    """(RGB pixels of the screenshot, chromium's log) of `page` opened from disk."""
    import matplotlib.image

    command = [
        BROWSER,
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--no-first-run",
        f"--user-data-dir={out.parent / ('profile-' + out.stem)}",
        "--enable-logging=stderr",
        "--v=0",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        f"--screenshot={out}",
        page.resolve().as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and out.is_file(), done.stderr[-2000:]
    return matplotlib.image.imread(out)[..., :3], done.stderr


def curve_pixels(pixels: np.ndarray) -> int:
    return int((np.abs(pixels - np.array(CURVE)).max(axis=-1) < 0.06).sum())


def console_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if ":CONSOLE" in line]


@pytest.mark.parametrize("name", ["digits", "gpt", "compare"])
def test_report_renders_its_figures_in_chromium(reports, name, tmp_path) -> None:
    page = reports[name]
    text = page.read_text(encoding="utf-8")
    count = len(re.findall(r'<img class="plot"', text))
    assert count >= 6, count
    pixels, log = screenshot(page, tmp_path / f"{name}.png")
    assert pixels.shape[:2] == (WINDOW[1], WINDOW[0])
    assert console_lines(log) == [], console_lines(log)
    drawn = curve_pixels(pixels)
    assert drawn > MIN_CURVE_PIXELS, drawn
    if name == "digits":
        # the same page without its images: the curve colour is then absent, so the count
        # above measures the figures (once is enough: every page has the same CSS)
        blank = tmp_path / "blank.html"
        blank.write_text(re.sub(r'src="data:[^"]*"', 'src=""', text), encoding="utf-8")
        baseline, _ = screenshot(blank, tmp_path / "blank.png")
        assert curve_pixels(baseline) < 50, curve_pixels(baseline)
