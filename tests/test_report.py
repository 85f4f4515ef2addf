"""`groundup report`: the self-contained HTML report of a run and the comparison of several.

Real tiny `groundup train` runs (a 2-layer MLP on digits, a second of CPU) for the page of a
run and for comparing two; hand-written metrics.jsonl files for the shapes a real run would
take long to reach (a classifier's confusion matrix, samples, messages, an lr_find.json, old
records without the newer keys, a 2,000-step log). Figures are checked through the SVG they
embed (matplotlib writes each text as an XML comment beside its glyphs).
"""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from groundup.cli import main
from groundup.errors import ConfigError, DataError, MissingFileError
from groundup.jobs.report import run_report
from groundup.report.build import REPORT_FILE, write_report, write_run_report
from groundup.report.compare import config_differences, flatten, summarize
from groundup.report.figures import thin
from groundup.report.run_data import load_run

NOT_A_RUN = "give a folder that groundup train, pretrain or finetune wrote"
LOGGED_NOTHING = "the run has logged nothing yet; report it once it has trained for "


# tiny matmuls: threads only contend on a shared machine (the fixture is in conftest.py)
pytestmark = pytest.mark.usefixtures("one_thread")


def train_config(folder: Path, name: str, units: int) -> Path:
    cfg = {
        "run_dir": str(folder / name),
        "seed": 0,
        "data": {"dataset": "digits", "test_size": 0.2, "val_size": 0.1},
        "layers": [
            {"type": "Dense", "units": units, "activation": "relu"},
            {"type": "Dense", "units": 10, "activation": "softmax"},
        ],
        "loss": "sparse_categorical_crossentropy",
        "metrics": ["accuracy"],
        "optim": {"name": "adam", "lr": 1e-3},
        "train": {"epochs": 2, "batch_size": 64, "log_every": 2, "device": "cpu"},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> tuple[Path, Path]:
    """Two finished `groundup train` runs that differ in the first layer's width."""
    folder = tmp_path_factory.mktemp("runs")
    for name, units in (("narrow", 16), ("wide", 32)):
        assert main(["train", str(train_config(folder, name, units))]) == 0
    return folder / "narrow", folder / "wide"


def copy_run(run: Path, to: Path) -> Path:
    target = to / run.name
    shutil.copytree(run, target)
    (target / REPORT_FILE).unlink(missing_ok=True)  # what the run's own end wrote, if anything
    return target


def figures(text: str) -> dict[str, str]:
    """figure key -> the SVG it embeds, decoded."""
    found = re.findall(
        r'<figure id="fig-([^"]+)">.*?src="data:image/svg\+xml;base64,([^"]+)"', text
    )
    return {key: base64.b64decode(data).decode("utf-8") for key, data in found}


def svg_texts(svg: str) -> list[str]:
    """The texts drawn in a matplotlib SVG (each glyph group carries its text as a comment)."""
    return [t.strip() for t in re.findall(r"<!-- (.*?) -->", svg)]


def write_fake_run(folder: Path, records: list[dict], results: dict | None = None, **files) -> Path:
    folder.mkdir(parents=True)
    config = {"run_dir": str(folder), "model": {"preset": "gpt2-tiny"}, "tokenizer": {}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    lines = "".join(json.dumps(r) + "\n" for r in records)
    (folder / "metrics.jsonl").write_text(lines, encoding="utf-8")
    if results is not None:
        (folder / "results.json").write_text(json.dumps(results), encoding="utf-8")
    for name, content in files.items():
        (folder / name.replace("_json", ".json")).write_text(json.dumps(content), "utf-8")
    return folder


def old_records(steps: int = 6) -> list[dict]:
    """Records as an older groundup wrote them: no grad_norm, time_s, tokens, data_wait."""
    records = []
    for step in range(1, steps + 1):
        records.append({"event": "train", "step": step, "epoch": 0, "loss": 3.0 / step, "lr": 0.1})
    records.append({"event": "eval", "step": steps, "val_loss": 0.9, "val_perplexity": 2.46})
    return records


# ---------------------------------------------------------------- one real run
def test_report_of_a_run_shows_its_figures_and_headline(two_runs, tmp_path) -> None:
    from groundup import load_model

    run = copy_run(two_runs[1], tmp_path)
    out = run_report([str(run)], None, verbose=0)
    assert out == run / REPORT_FILE
    text = out.read_text(encoding="utf-8")
    shown = figures(text)
    for key in ("loss-step", "loss-samples", "loss-time_s", "lr", "grad_norm", "throughput"):
        assert key in shown, key
    assert "metrics" in shown and "data-wait" in shown
    assert "accuracy" in svg_texts(shown["metrics"])
    # the headline: params counted from model/model.safetensors, best val loss and its step
    params = sum(p.numel() for p in load_model(run).parameters())
    assert f'<td class="num">{params:,}</td>' in text
    epochs = [r for r in load_run(run).records if r["event"] == "epoch"]
    best = min(epochs, key=lambda r: r["val_loss"])
    assert f"{best['val_loss']:.4g} at step {best['step']:,}" in text
    assert "config.yaml of wide" in text and "<details>" in text
    assert "groundup train" in text and "· finished" in text and "not finished" not in text


def test_report_page_has_no_external_address(two_runs, tmp_path) -> None:
    run = copy_run(two_runs[0], tmp_path)
    text = write_report([run], tmp_path / "r.html").read_text(encoding="utf-8")
    attributes = re.findall(r"""(?:src|href)\s*=\s*["']?([^"'\s>]*)""", text, flags=re.I)
    assert attributes, "no figure found"
    assert not [a for a in attributes if "http" in a.lower() or a.startswith("//")]
    assert all(a.startswith("data:image/svg+xml;base64,") for a in attributes)
    assert "<script" not in text and "<link" not in text and "url(" not in text
    assert "@import" not in text


def test_compare_two_runs_names_the_differing_key_and_overlays_both(two_runs, tmp_path) -> None:
    narrow, wide = two_runs
    out = run_report([str(narrow), str(wide)], str(tmp_path / "cmp.html"), verbose=0)
    text = out.read_text(encoding="utf-8")
    differences = text[text.index('class="differences"') :].split("</table>")[0]
    row = re.search(r"<tr><td>layers\.0\.units</td>(.*?)</tr>", differences)
    assert row and re.findall(r">(\d+)</td>", row.group(1)) == ["16", "32"]
    assert "run_dir" not in differences and "optim.lr" not in differences
    legend = svg_texts(figures(text)["loss-step"])
    for name in ("narrow", "wide"):
        assert f"{name} train" in legend and f"{name} val" in legend
    table = text[text.index('class="compare"') :].split("</table>")[0]
    for run in (narrow, wide):
        s = summarize(load_run(run))
        assert f"<td>{run.name}</td>" in table
        assert f"{s.best_val_loss:.4g}" in table and f"{s.params:,}" in table


def test_compare_runs_of_the_same_name_tells_them_apart(two_runs, tmp_path) -> None:
    a = copy_run(two_runs[0], tmp_path / "a")
    b = copy_run(two_runs[0], tmp_path / "b")
    text = write_report([a, b, two_runs[1]], tmp_path / "c.html").read_text(encoding="utf-8")
    table = text[text.index('class="compare"') :].split("</table>")[0]
    assert "<td>a/narrow</td>" in table and "<td>b/narrow</td>" in table
    assert "<td>wide</td>" in table  # only names that clash get their parent folder


def test_interrupted_run_reports_without_results(two_runs, tmp_path) -> None:
    run = copy_run(two_runs[0], tmp_path)
    (run / "results.json").unlink()
    with open(run / "metrics.jsonl", "a", encoding="utf-8") as fh:
        fh.write('{"event": "train", "step": 99, "lo')  # a kill mid-line
    loaded = load_run(run)
    assert not loaded.finished and all(r.get("step") != 99 for r in loaded.records)
    text = write_report([run], tmp_path / "r.html").read_text(encoding="utf-8")
    assert "not finished" in text and "Final figures" not in text
    assert "metrics.jsonl:" in text and "was cut short" in text
    assert "loss-step" in figures(text)


def test_end_of_run_report_is_written_and_never_raises(two_runs, tmp_path) -> None:
    run = copy_run(two_runs[0], tmp_path)
    assert write_run_report(run) == run / REPORT_FILE
    assert "loss-step" in figures((run / REPORT_FILE).read_text(encoding="utf-8"))
    assert not [p for p in run.iterdir() if p.name.startswith(".")]  # no temporary left
    # a run that logged nothing yet: nothing to show, no file, no error
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(run / "config.yaml", bare / "config.yaml")
    assert write_run_report(bare) is None and not (bare / REPORT_FILE).exists()
    (bare / "metrics.jsonl").write_text("", encoding="utf-8")
    assert write_run_report(bare) is None
    # a damaged line is left out with a note instead of failing the run's end
    lines = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    lines.insert(2, "garbage")
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert write_run_report(run) == run / REPORT_FILE
    assert "metrics.jsonl:3 is not a JSON record" in (run / REPORT_FILE).read_text("utf-8")
    # not a run folder at all: a warning, not an exception
    with pytest.warns(RuntimeWarning, match="report.html not written"):
        assert write_run_report(tmp_path / "nowhere") is None


# ---------------------------------------------------------------- bad input
def test_bad_input_is_one_clear_error(tmp_path) -> None:
    folder = tmp_path / "plain"
    folder.mkdir()
    with pytest.raises(MissingFileError) as info:
        run_report([str(folder)], None)
    assert str(info.value) == f"{folder} is not a run folder (no config.yaml); {NOT_A_RUN}"
    with pytest.raises(MissingFileError, match="^no run folder "):
        run_report([str(tmp_path / "missing")], None)

    run = write_fake_run(tmp_path / "empty", [])
    with pytest.raises(DataError) as info:
        run_report([str(run)], None)
    assert (
        str(info.value)
        == f"{run / 'metrics.jsonl'} is empty: {LOGGED_NOTHING}train.log_every steps"
    )

    run = write_fake_run(tmp_path / "broken", old_records())
    lines = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    lines[2] = lines[2][:20]  # the third line cut, then more lines after it
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        run_report([str(run)], None)
    assert str(info.value) == (
        f"{run / 'metrics.jsonl'}:3 is not a JSON record; the file is damaged: fix or delete "
        "that line"
    )
    (run / "config.yaml").write_text("model: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"config\.yaml:2 is not valid YAML"):
        run_report([str(run)], None)
    with pytest.raises(ConfigError, match="given twice"):
        run_report([str(folder), str(folder) + "/"], None)
    with pytest.raises(ConfigError, match="is a folder; give a file name"):
        write_report([write_fake_run(tmp_path / "ok", old_records())], tmp_path)
    assert not list(tmp_path.rglob(REPORT_FILE))  # nothing written by any of them


@pytest.mark.parametrize("case", ["not_a_run", "empty", "broken"])
def test_cli_report_bad_input_exits_2_with_one_line(case, tmp_path, capsys) -> None:
    folder = tmp_path / case
    if case == "not_a_run":
        folder.mkdir()
    else:
        records = old_records()
        write_fake_run(folder, [] if case == "empty" else records)
        if case == "broken":
            text = (folder / "metrics.jsonl").read_text(encoding="utf-8")
            (folder / "metrics.jsonl").write_text("{oops\n" + text, encoding="utf-8")
    assert main(["report", str(folder)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    expected = {"not_a_run": "is not a run folder", "empty": "is empty", "broken": ":1 is not"}
    assert expected[case] in err[0]


def test_cli_report_writes_the_page(two_runs, tmp_path, capsys) -> None:
    out = tmp_path / "sub" / "both.html"
    assert main(["report", str(two_runs[0]), str(two_runs[1]), "--out", str(out)]) == 0
    assert "loss-step" in figures(out.read_text(encoding="utf-8"))
    assert str(out) in capsys.readouterr().out


# ---------------------------------------------------------------- shapes of records
def test_classifier_samples_messages_and_lr_find_are_shown(tmp_path) -> None:
    records = old_records()
    records.insert(3, {"event": "message", "step": 3, "text": "rolled back <after NaN>"})
    records.append({"event": "sample", "step": 6, "text": "if x < 3 && y: <b>print</b>"})
    results = {
        "steps": 6,
        "sample": "final & done",
        "test_accuracy": 0.75,
        "per_class": {"a": {"f1": 1.0}},
        "confusion_matrix": {"labels": ["cat", "dog"], "matrix": [[7, 1], [2, 5]]},
    }
    lr_find = {"lrs": [1e-5, 1e-4, 1e-3, 1e-2], "losses": [3.0, 2.5, 2.0, 4.0], "suggestion": 1e-4}
    run = write_fake_run(tmp_path / "clf", records, results, lr_find_json=lr_find)
    text = write_report([run], tmp_path / "r.html").read_text(encoding="utf-8")
    shown = figures(text)
    cells = svg_texts(shown["confusion"])
    for label in ("cat", "dog", "7", "1", "2", "5", "predicted", "true"):
        assert label in cells, label
    assert "suggested 0.0001" in svg_texts(shown["lr-find"])
    assert "if x &lt; 3 &amp;&amp; y: &lt;b&gt;print&lt;/b&gt;" in text and "<b>print" not in text
    assert "<h3>step 6</h3><pre>final &amp; done</pre>" in text
    assert "rolled back &lt;after NaN&gt;" in text
    assert "test_accuracy" in text and "per_class" not in text.split("Final figures")[1][:400]


def test_old_records_draw_only_what_they_hold(tmp_path) -> None:
    run = write_fake_run(tmp_path / "old", old_records())
    text = write_report([run], tmp_path / "r.html").read_text(encoding="utf-8")
    assert sorted(figures(text)) == ["loss-step", "lr", "metrics"]
    assert "perplexity" in svg_texts(figures(text)["metrics"])
    assert "not finished" in text


def test_records_logged_twice_for_a_step_count_once(tmp_path) -> None:
    records = old_records(6)
    replayed = [dict(r, loss=9.0) for r in records[3:6]]  # an old resume logged 4..6 again
    run = write_fake_run(tmp_path / "twice", records[:6] + replayed + records[6:])
    loaded = load_run(run)
    train = [r for r in loaded.records if r["event"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in train][3:] == [9.0, 9.0, 9.0]


def test_long_run_page_stays_small(tmp_path) -> None:
    records = []
    for step in range(1, 2001):
        records.append(
            {
                "event": "train",
                "step": step,
                "loss": 5.0 / step**0.3,
                "lr": 1e-3,
                "grad_norm": 1.0 + (step % 7) / 10,
                "tokens_per_s": 1000.0 + step % 13,
                "mfu": 0.3,
                "data_wait": 0.05,
                "time_s": step * 0.5,
                "tokens": step * 4096,
            }
        )
        if step % 100 == 0:
            records.append({"event": "eval", "step": step, "val_loss": 5.0 / step**0.3})
    run = write_fake_run(tmp_path / "long", records)
    out = write_report([run], tmp_path / "r.html")
    assert out.stat().st_size < 1_000_000
    assert len(figures(out.read_text(encoding="utf-8"))) == 7  # all but the metrics


# ---------------------------------------------------------------- the parts
def test_thin_keeps_every_spike() -> None:
    xs = [float(i) for i in range(10_000)]
    ys = [1.0] * 10_000
    ys[4321], ys[77] = 50.0, -3.0
    tx, ty = thin(xs, ys, limit=500)
    assert len(tx) <= 510 and max(ty) == 50.0 and min(ty) == -3.0
    assert 4321.0 in tx and tx == sorted(tx)
    assert thin(xs[:10], ys[:10], limit=500) == (xs[:10], ys[:10])


def test_config_differences_are_dotted_keys() -> None:
    class Run:
        def __init__(self, config):
            self.config = config

    a = {"run_dir": "a", "optim": {"lr": 1e-3, "name": "adam"}, "layers": [{"units": 16}]}
    b = {"run_dir": "b", "optim": {"lr": 3e-4, "name": "adam"}, "layers": [{"units": 16}, {}]}
    assert flatten(a)["layers.0.units"] == 16
    differences = config_differences([Run(a), Run(b)])
    assert differences == {
        "optim.lr": [1e-3, 3e-4],
        "layers.length": [1, 2],
        "layers.1": ["(absent)", {}],
    }


def test_every_run_ends_with_its_report_and_diagnosis(tmp_path, monkeypatch, capsys) -> None:
    """The lifecycle's end writes report.html into the folder (GROUNDUP_REPORT=0, as in this
    suite, turns it off) and prints where it is."""
    monkeypatch.setenv("GROUNDUP_REPORT", "1")
    assert main(["train", str(train_config(tmp_path, "ends", 16))]) == 0
    page = tmp_path / "ends" / REPORT_FILE
    assert page.is_file() and "<svg" in base64.b64decode(
        re.search(r'src="data:image/svg\+xml;base64,([^"]+)"', page.read_text()).group(1)
    ).decode("utf-8")
    assert f"report: {page}" in capsys.readouterr().out
    monkeypatch.setenv("GROUNDUP_REPORT", "0")
    assert main(["train", str(train_config(tmp_path, "quiet", 16))]) == 0
    assert not (tmp_path / "quiet" / REPORT_FILE).exists()
