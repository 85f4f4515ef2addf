"""The Keras-style examples in examples/ run in their quick mode (fewer samples and epochs),
print their result and learn: each beats chance by a wide margin (the full runs reach
0.98-1.00; the margins here leave room for any CPU's rounding)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

import groundup as gu

pytestmark = pytest.mark.usefixtures("one_thread")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _fresh(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    gu.utils.clear_session()


def test_mnist_cnn_learns_the_digits(capsys):
    accuracy = _load("mnist_cnn").main(quick=True)
    assert accuracy > 0.6  # chance: 0.1
    assert f"test accuracy: {accuracy:.4f}" in capsys.readouterr().out


def test_imdb_text_classifier_reads_negations(capsys):
    module = _load("imdb_text_classifier")
    texts, labels = module.make_reviews(50, seed=3)
    assert any(" not " in t for t in texts) and any(" but " in t for t in texts)
    assert 0 < labels.mean() < 1
    accuracy = module.main(quick=True)
    assert accuracy > 0.7  # chance: 0.5
    assert f"test accuracy: {accuracy:.4f}" in capsys.readouterr().out


def test_functional_two_inputs_answers_both_questions(capsys):
    logs = _load("functional_two_inputs").main(quick=True)
    assert logs["digit_accuracy"] > 0.6  # chance: 0.1
    assert logs["even_accuracy"] > 0.65  # chance: 0.5
    assert list(logs)[:3] == ["loss", "digit_loss", "even_loss"]
    assert "test accuracy: digit" in capsys.readouterr().out


def test_timeseries_conv1d_tells_the_wave_shapes_apart(capsys):
    module = _load("timeseries_conv1d")
    x, y = module.make_series(12, seed=0)
    assert x.shape == (12, module.STEPS, 1) and set(y) <= {0, 1, 2}
    accuracy = module.main(quick=True)
    assert accuracy > 0.6  # chance: 1/3
    assert f"test accuracy: {accuracy:.4f}" in capsys.readouterr().out
