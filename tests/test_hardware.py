"""The MFU denominators: the measured matmul peak (best over sizes, cached per device and
dtype), the datasheet table, the labels, and the mfu / mfu_datasheet figures a tiny pretrain
writes into its records, results.json, console and report figure."""

from __future__ import annotations

import contextlib
import io
import json
import runpy
import sys
from pathlib import Path

import pytest
import torch

from groundup.cli import main
from groundup.train import hardware, peaks
from groundup.train.console import format_line
from groundup.train.hardware import MatmulRate, PeakProbe
from groundup.train.run_log import rate_logs
from tests.test_pretrain import read_metrics, write_config

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def fresh_cache():
    """An empty peak cache before and after: a stand-in figure must not outlive its test."""
    hardware.measured_peak_flops.cache_clear()
    hardware._PROBES.clear()
    yield
    hardware.measured_peak_flops.cache_clear()
    hardware._PROBES.clear()


def fake_rates(monkeypatch, by_size: dict[int, float]) -> list[int]:
    """Replace the one-size measurement with fixed figures; returns the sizes asked for."""
    asked: list[int] = []

    def rate(size, device, dtype, seconds, op="linear", generator=None):
        asked.append(size)
        return MatmulRate(size, by_size[size], seconds)

    monkeypatch.setattr(hardware, "matmul_rate", rate)
    return asked


# ---------------------------------------------------------------- the probe
def test_probe_keeps_the_best_size(monkeypatch) -> None:
    # the CPU shape of the problem: a peak in the middle, not at either end
    rates = {1024: 1.07e12, 2048: 1.93e12, 3072: 1.6e12, 4096: 1.2e12}
    asked = fake_rates(monkeypatch, rates)
    probe = hardware.probe_peak("cpu", torch.bfloat16, budget=1e9)
    assert asked == [1024, 2048, 3072, 4096]
    assert (probe.flops, probe.size) == (1.93e12, 2048)
    assert [r.size for r in probe.rates] == asked and probe.dtype == torch.bfloat16


def test_probe_skips_sizes_that_would_overrun_its_budget(monkeypatch) -> None:
    # at 1 GFLOP/s one 2048 product takes 17 s: far past a 2.5 s budget, so it is not tried
    asked = fake_rates(monkeypatch, {1024: 1e9, 2048: 1e9, 3072: 1e9, 4096: 1e9})
    probe = hardware.probe_peak("cpu", torch.float32, budget=2.5)
    assert asked == [1024] and probe.size == 1024
    assert hardware.sweep((4096, 1024), budget=None) and asked[-2:] == [1024, 4096]


def test_real_probe_measures_and_leaves_the_seeded_stream_alone() -> None:
    torch.manual_seed(0)
    expected = torch.rand(4)
    torch.manual_seed(0)
    probe = hardware.probe_peak("cpu", torch.float32, sizes=(32, 64), seconds=0.01)
    assert torch.equal(torch.rand(4), expected)
    assert probe.flops > 0 and probe.size in (32, 64)
    assert probe.flops == max(r.flops for r in probe.rates)
    matmul = hardware.sweep((32,), seconds=0.01, op="matmul")
    assert [r.size for r in matmul] == [32] and matmul[0].flops > 0


def test_measured_peak_is_cached_per_device_and_dtype(monkeypatch, fresh_cache) -> None:
    calls: list[tuple] = []

    def probe(device_type="cpu", dtype=torch.float32):
        calls.append((device_type, dtype))
        flops = 1e12 * len(calls)
        return PeakProbe(flops, 512 * len(calls), device_type, dtype, ())

    monkeypatch.setattr(hardware, "probe_peak", probe)
    assert hardware.last_probe("cpu", torch.float32) is None
    first = hardware.measured_peak_flops("cpu", torch.float32)
    assert hardware.measured_peak_flops("cpu", torch.float32) == first
    other = hardware.measured_peak_flops("cpu", torch.bfloat16)
    assert calls == [("cpu", torch.float32), ("cpu", torch.bfloat16)] and other != first
    assert hardware.last_probe("cpu", torch.float32).flops == first
    assert hardware.last_probe("cpu", torch.bfloat16).size == 1024


# ---------------------------------------------------------------- datasheet and labels
@pytest.mark.parametrize(
    "name, tflops",
    [
        ("NVIDIA H100 80GB HBM3", 989.4),
        ("NVIDIA H100 PCIe", 756.5),
        ("NVIDIA H100 NVL", 835.5),
        ("NVIDIA H200", 989.4),
        ("NVIDIA H200 NVL", 835.5),
        ("NVIDIA GH200 480GB", 989.4),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA A100 80GB PCIe", 312.0),
        ("NVIDIA A10", 125.0),
        ("NVIDIA A10G", None),
        ("NVIDIA L4", 121.0),
        ("NVIDIA L40", 181.05),
        ("NVIDIA L40S", 362.05),
        ("NVIDIA GeForce RTX 4090", 165.2),
        ("NVIDIA GeForce RTX 4090 Laptop GPU", None),
        ("NVIDIA GeForce RTX 3090", 71.0),
        ("NVIDIA GeForce RTX 3090 Ti", None),
        ("AMD Instinct MI300X", 1307.4),
        ("Tesla T4", None),
        ("", None),
    ],
)
def test_datasheet_peak_by_device_name(name: str, tflops: float | None) -> None:
    got = peaks.datasheet_peak_flops(name, torch.bfloat16)
    assert got == (None if tflops is None else pytest.approx(tflops * 1e12))
    assert peaks.datasheet_peak_flops(name, torch.float16) == got  # same tensor-core rate


def test_datasheet_has_no_fp32_figure_and_no_cpu() -> None:
    assert peaks.datasheet_peak_flops("NVIDIA H100 80GB HBM3", torch.float32) is None
    assert peaks.device_datasheet_peak(torch.device("cpu"), torch.bfloat16) == ("cpu", None)


def test_labels_name_the_denominator() -> None:
    assert peaks.flops_text(6.82e14) == "682 TFLOP/s"
    assert peaks.flops_text(1.93e12) == "1.93 TFLOP/s"
    assert peaks.flops_text(9.31e11) == "931 GFLOP/s"
    assert peaks.flops_text(2.25e15) == "2.25 PFLOP/s"
    assert peaks.measured_label(6.82e14) == "MFU (measured peak 682 TFLOP/s)"
    assert peaks.datasheet_label(9.894e14) == "MFU (datasheet 989 TFLOP/s)"
    line = format_line("step 5", {"loss": 1.0, "mfu": 0.535, "mfu_datasheet": 0.369})
    assert line == "step 5 - loss 1.0000 - mfu 53.5% - mfu(datasheet) 36.9%"


def test_rate_logs_divide_by_each_peak_per_device() -> None:
    common = dict(samples_seen=10, tokens_seen=0, flops_per_sample=1e9)
    one = rate_logs(10, 2.0, world_size=1, peak_flops=1e10, datasheet_flops=2e10, **common)
    assert one["mfu"] == pytest.approx(0.5) and one["mfu_datasheet"] == pytest.approx(0.25)
    two = rate_logs(10, 2.0, world_size=2, peak_flops=1e10, datasheet_flops=None, **common)
    assert two["mfu"] == pytest.approx(0.25) and "mfu_datasheet" not in two


# ---------------------------------------------------------------- a tiny pretrain
@pytest.fixture(scope="module")
def labelled_run(tmp_path_factory) -> tuple[Path, str]:
    """A 10-step pretrain (run folder, stdout) whose probe reports 2 TFLOP/s at N=2048 and
    whose device the datasheet table gives 4 TFLOP/s (a CPU has none: the lookup is stood in
    for)."""

    def probe(device_type="cpu", dtype=torch.float32):
        return PeakProbe(2e12, 2048, device_type, dtype, (MatmulRate(2048, 2e12, 0.3),))

    folder = tmp_path_factory.mktemp("mfu")
    train = {"max_steps": 10, "log_every": 5, "eval_every": 10, "eval_batches": 2}
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out):
        mp.setattr(hardware, "probe_peak", probe)
        mp.setattr(peaks, "device_datasheet_peak", lambda device, dtype: ("Test GPU", 4e12))
        hardware.measured_peak_flops.cache_clear()
        try:
            assert main(["pretrain", str(write_config(folder, train=train))]) == 0
        finally:
            hardware.measured_peak_flops.cache_clear()  # the stand-in must not outlive this
            hardware._PROBES.clear()
    return folder / "run", out.getvalue()


def test_pretrain_records_both_mfus_and_their_peaks(labelled_run) -> None:
    run, out = labelled_run
    train = [r for r in read_metrics(run) if r["event"] == "train"]
    assert train and all(0 < r["mfu"] < 1 for r in train)
    for r in train:  # the same achieved FLOP/s over a peak twice as large
        assert r["mfu_datasheet"] == pytest.approx(r["mfu"] / 2)
    results = json.loads((run / "results.json").read_text())
    assert results["peak_flops"] == 2e12 and results["peak_matmul_size"] == 2048
    assert results["peak_dtype"] == "float32" and results["device_name"] == "Test GPU"
    assert results["datasheet_peak_flops"] == 4e12
    assert results["mfu_label"] == "MFU (measured peak 2 TFLOP/s)"
    assert results["mfu_datasheet_label"] == "MFU (datasheet 4 TFLOP/s)"
    assert results["mfu_datasheet"] == pytest.approx(results["mfu"] / 2)
    assert "mfu: MFU (measured peak 2 TFLOP/s), float32 matmul, best at N=2048" in out
    assert "mfu(datasheet) " in out  # each train line
    assert f"MFU (datasheet 4 TFLOP/s) {results['mfu_datasheet']:.1%}" in out  # the last line


def test_report_legends_say_which_peak(labelled_run, monkeypatch) -> None:
    pytest.importorskip("matplotlib")
    from groundup.report import figures
    from groundup.report.run_data import load_run

    drawn: list = []
    original = figures._finish

    def finish(fig, key, title, legend_axes):
        plot = original(fig, key, title, legend_axes)
        drawn.extend(ax.get_legend() for ax in legend_axes if ax.get_legend() is not None)
        return plot

    monkeypatch.setattr(figures, "_finish", finish)
    run = load_run(labelled_run[0])
    assert figures.throughput_plot([run]) is not None
    texts = [t.get_text() for legend in drawn for t in legend.get_texts()]
    assert texts == ["MFU (measured peak 2 TFLOP/s)", "MFU (datasheet 4 TFLOP/s)"]
    run.results = None  # a run still going: the kind of peak, without its figure
    assert figures.mfu_label(run, "mfu_datasheet") == "MFU (datasheet peak)"


# ---------------------------------------------------------------- the benchmarks still run
def test_gpu_bench_dry_run_prints_both_labels(monkeypatch, fresh_cache, capsys) -> None:
    """benchmarks/gpu_bench.py needs a GPU; its --dry-run (tiny configs on the CPU) keeps the
    script from rotting. The probe is stood in for, the datasheet too (a CPU has none)."""

    def probe(device_type="cpu", dtype=torch.float32):
        return PeakProbe(2e12, 2048, device_type, dtype, (MatmulRate(2048, 2e12, 0.3),))

    monkeypatch.setattr(hardware, "probe_peak", probe)
    monkeypatch.setattr(peaks, "device_datasheet_peak", lambda device, dtype: ("Test GPU", 4e12))
    monkeypatch.setattr(sys, "argv", ["gpu_bench.py", "--dry-run"])
    runpy.run_path(str(ROOT / "benchmarks" / "gpu_bench.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "MFU (measured peak 2 TFLOP/s)" in out and "MFU (datasheet 4 TFLOP/s)" in out
    table = out[out.index("MFU (measured peak 2 TFLOP/s)") :].splitlines()
    assert table[1].startswith("gpt2-tiny")
    assert table[2].startswith("modern-tiny") or "modern-tiny: skipped" in out
