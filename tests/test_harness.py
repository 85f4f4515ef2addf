"""The lm-evaluation-harness adapter, cross-checked against lm-eval's own `hf` model.

A tiny random GPT (gpt2 and llama flavours) is saved as a groundup model folder and exported to
a Hugging Face folder; the same local tasks (multiple choice, rolling log-likelihood, greedy
generation) are scored through our adapter and through lm-eval's `hf` model on the export
(float32, CPU, batch size 1). Tasks read JSONL files made here (`dataset_path: json`), and the
network is blocked, so nothing can download.

Tolerance: both sides compute in float32 with different kernels (transformers' attention vs
ours), so a log-probability differs by float32 rounding of logits of size ~10: about 1e-6 per
token, summed over at most ~100 tokens of a rolling window. TOL = 2e-4 nats leaves ~20x room
over the largest difference measured (about 1e-5), while a real tokenization or position slip
moves a score by nats.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval")
pytest.importorskip("transformers")

from groundup.data.tokenizers import Tokenizer  # noqa: E402
from groundup.errors import ConfigError, DependencyError, MissingFileError  # noqa: E402
from groundup.evals.harness import (  # noqa: E402
    GroundupLM,
    harness_metrics,
    resolve_tasks,
    run_harness,
)
from groundup.evals.lm import LMScorer  # noqa: E402
from groundup.interop.hf_export import export_hf  # noqa: E402
from groundup.models.folders import save_model_dir  # noqa: E402
from groundup.models.gpt import GPT, GPTConfig  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread", "offline")  # one_thread: conftest.py

TOL = 2e-4
BLOCK = 48
CORPUS = (
    "Question: which animal barks?\nAnswer: the dog.\n"
    "Question: which animal is quick and brown?\nAnswer: the fox.\n"
    "The quick brown fox jumps over the lazy dog. The dog sleeps.\n"
) * 4


@pytest.fixture
def offline(monkeypatch):
    """No network: the Hub and datasets in offline mode, and any socket connection refused."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import datasets
    import huggingface_hub

    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True, raising=False)

    def refuse(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            raise OSError(f"network access attempted in a test: {address}")
        return real_connect(self, address)

    real_connect = socket.socket.connect
    monkeypatch.setattr(socket.socket, "connect", refuse)


def write_tasks(folder: Path) -> dict[str, Path]:
    """Three lm-eval task YAMLs over local JSONL files (one cache folder inside `folder`)."""
    folder.mkdir(parents=True, exist_ok=True)
    animals = ["dog", "fox", "cat", "bird"]
    questions = [
        {"question": f"which animal {verb}?", "choices": [f" {a}" if i % 2 else a for a in animals],
         "label": i % 4}
        for i, verb in enumerate(["barks", "is quick", "sleeps", "jumps over", "is lazy", "is brown"])
    ]  # fmt: skip
    docs = [
        {"text": "The quick brown fox jumps over the lazy dog."},
        {"text": "The dog sleeps. " * 14},  # longer than BLOCK tokens: several windows
        {"text": "A fox.<|endoftext|>The dog."},  # special-token text: its id, as hf encodes it
    ]
    for name, rows in (("mc", questions), ("docs", docs)):
        (folder / f"{name}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")

    def source(name: str) -> str:
        return (
            f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {folder / name}\n"
            f"  cache_dir: {folder / 'hf-cache'}\ntest_split: test\n"
        )

    q = '"Question: {{question}}\\nAnswer:"'
    specs = {
        # a context ending in a space, choices with and without one: the space must move over
        "tiny_mc": 'output_type: multiple_choice\ndoc_to_text: "Question: {{question}}\\nAnswer: "'
        '\ntarget_delimiter: ""\ndoc_to_target: label\n'
        'doc_to_choice: "{{choices}}"\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n',
        "tiny_roll": 'output_type: loglikelihood_rolling\ndoc_to_text: ""\n'
        'doc_to_target: "{{text}}"\nmetric_list:\n  - metric: word_perplexity\n'
        "  - metric: bits_per_byte\n",
        "tiny_gen": f"output_type: generate_until\ndoc_to_text: {q}\n"
        'doc_to_target: "{{choices[label]}}"\ngeneration_kwargs:\n  until: ["\\n", "."]\n'
        "  max_gen_toks: 6\n  do_sample: false\nmetric_list:\n  - metric: exact_match\n",
    }
    paths = {}
    for task, body in specs.items():
        data = "docs.jsonl" if task == "tiny_roll" else "mc.jsonl"
        paths[task] = folder / f"{task}.yaml"
        paths[task].write_text(f"task: {task}\n{source(data)}{body}")
    return paths


@pytest.fixture(scope="module")
def tasks(tmp_path_factory) -> dict[str, Path]:
    return write_tasks(tmp_path_factory.mktemp("tasks"))


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train([CORPUS], kind="bpe", vocab_size=300, min_frequency=1)


def make_model(flavour: str, tok: Tokenizer, folder: Path, pad: int) -> tuple[Path, Path]:
    """(groundup run folder, Hugging Face export) of a random GPT. init_std 0.3: sharp,
    position-dependent attention, so choices get clearly different scores."""
    torch.manual_seed(0)
    extra = {"n_kv_head": 2} if flavour == "llama" else {}
    cfg = GPTConfig(
        flavour=flavour, n_layer=2, n_head=4, n_embd=32, block_size=BLOCK, init_std=0.3,
        vocab_size=tok.vocab_size + pad, **extra,
    )  # fmt: skip
    model = GPT(cfg)
    run = folder / f"run-{flavour}"
    save_model_dir(run / "model", model, tok)
    return run, export_hf(model, folder / f"hf-{flavour}", tokenizer=tok)


def samples(raw: dict, task: str) -> list[list]:
    return [s["resps"] for s in sorted(raw["samples"][task], key=lambda s: s["doc_id"])]


# ----------------------------------------------------------------------- the key cross-check


@pytest.mark.parametrize("flavour,pad", [("gpt2", 0), ("llama", 20)])
def test_adapter_matches_lm_eval_hf_model(flavour, pad, tok, tasks, tmp_path):
    pytest.importorskip("accelerate")  # lm-eval's hf model imports it
    run, hf_dir = make_model(flavour, tok, tmp_path, pad)
    files = [str(p) for p in tasks.values()]
    out = tmp_path / "ours.json"
    ours = run_harness(
        run, files, device="cpu", batch_size=4, bootstrap_iters=0, log_samples=True, output=out
    )
    mine = json.loads(out.read_text())
    specs, manager = resolve_tasks(files)
    ref = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={hf_dir},dtype=float32",
        tasks=specs,
        batch_size=1,
        device="cpu",
        task_manager=manager,
        log_samples=True,
        bootstrap_iters=0,
    )
    theirs = harness_metrics(ref)
    for metric in ("acc", "acc_norm"):
        assert abs(ours["tiny_mc"][metric] - theirs["tiny_mc"][metric]) < 1e-4
    assert ours["tiny_roll"]["bits_per_byte"] == pytest.approx(
        theirs["tiny_roll"]["bits_per_byte"], rel=1e-5
    )
    worst = 0.0
    mc_a, mc_b = samples(mine, "tiny_mc"), samples(ref, "tiny_mc")
    assert len(mc_a) == 6 and len(mc_a[0]) == 4
    lls = []
    for doc_a, doc_b in zip(mc_a, mc_b):
        for [(a, greedy_a)], [(b, greedy_b)] in zip(doc_a, doc_b):
            worst = max(worst, abs(a - b))
            lls.append(a)
            if pad == 0:  # a padded vocabulary: hf's greedy check may pick a padding id
                assert greedy_a == greedy_b
    assert max(lls) - min(lls) > 1.0  # the scores are not all alike
    for [[a]], [[b]] in zip(samples(mine, "tiny_roll"), samples(ref, "tiny_roll")):
        worst = max(worst, abs(a - b))
    assert worst < TOL, worst
    print(f"{flavour}: largest log-likelihood difference from lm-eval's hf model {worst:.2e}")
    if pad == 0:  # greedy generation only compares where hf cannot emit a padding id
        assert samples(mine, "tiny_gen") == samples(ref, "tiny_gen")
        assert ours["tiny_gen"]["exact_match"] == theirs["tiny_gen"]["exact_match"]


# ------------------------------------------------------------------------ adapter, CLI, errors


def test_lm_eval_cli_finds_the_groundup_model(tok, tasks, tmp_path):
    """`python -m groundup.evals.harness` is lm-eval's own command line with "groundup" known."""
    run, _ = make_model("gpt2", tok, tmp_path, 0)
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    args = [sys.executable, "-m", "groundup.evals.harness", "--model", "groundup"]
    args += ["--model_args", f"run={run}", "--device", "cpu", "--batch_size", "2"]
    args += ["--tasks", str(tasks["tiny_mc"]), "--limit", "2", "--output_path", str(tmp_path)]
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    written = list(tmp_path.rglob("results_*.json"))
    assert len(written) == 1
    saved = json.loads(written[0].read_text())
    assert saved["config"]["model"] == "groundup"
    assert saved["config"]["model_args"]["run"] == str(run)
    assert 0.0 <= saved["results"]["tiny_mc"]["acc,none"] <= 1.0


def test_model_args_and_task_errors(tok, tasks, tmp_path):
    run, _ = make_model("llama", tok, tmp_path, 0)
    with pytest.raises(ConfigError, match="unknown groundup model_args temperature"):
        GroundupLM(run=str(run), temperature=1)
    with pytest.raises(ConfigError, match="run=RUN_DIR"):
        GroundupLM()
    with pytest.raises(ConfigError, match="batch_size"):
        GroundupLM(run=str(run), batch_size="many")
    assert GroundupLM(run=str(run), batch_size="auto", device="cpu").scorer.batch_size == 16
    if not torch.cuda.is_available():  # lm-eval's CLI default, cuda:0, falls back as in hf
        assert GroundupLM(run=str(run), device="cuda:0").scorer.device.type == "cpu"
    with pytest.raises(MissingFileError, match="task file not found"):
        run_harness(run, [str(tmp_path / "nope.yaml")])
    with pytest.raises(ConfigError, match="no tasks"):
        run_harness(run, [])
    # a folder of task files stands for every task in it; names resolve through include_path
    folder_specs, _ = resolve_tasks([str(tasks["tiny_mc"].parent)])
    assert sorted(folder_specs) == ["tiny_gen", "tiny_mc", "tiny_roll"]
    named, _ = resolve_tasks("tiny_roll", include_path=tasks["tiny_mc"].parent)
    assert named == ["tiny_roll"]


def test_run_harness_takes_a_ready_scorer(tok, tasks, tmp_path):
    run, _ = make_model("gpt2", tok, tmp_path, 0)
    scorer = LMScorer.from_run(run, device="cpu", use_cache=False, batch_size=1)
    got = run_harness(scorer, [str(tasks["tiny_mc"])], bootstrap_iters=0, limit=3)
    assert set(got["tiny_mc"]) >= {"acc", "acc_norm"}


def test_harness_metrics_names():
    raw = {
        "results": {
            "t": {"alias": "t", "acc,none": 0.5, "acc_stderr,none": "N/A", "sample_len": 4},
            "g": {"exact_match,strict-match": 1.0, "exact_match_stderr,strict-match": 0.0},
        }
    }
    assert harness_metrics(raw) == {
        "t": {"acc": 0.5},
        "g": {"exact_match,strict-match": 1.0, "exact_match_stderr,strict-match": 0.0},
    }


def test_missing_lm_eval_names_the_extra(monkeypatch):
    monkeypatch.delitem(sys.modules, "groundup.evals.harness")
    monkeypatch.setitem(sys.modules, "lm_eval.models", None)  # an import of it now fails
    with pytest.raises(DependencyError, match=r'pip install "groundup\[eval\]"'):
        import groundup.evals.harness  # noqa: F401
