"""Evaluation tasks: metrics, the runner's scoring against a fake scorer with known answers,
task spec files and their errors, and the built-in tasks."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from groundup.errors import ConfigError, DataError, MissingFileError
from groundup.evals.metrics import (
    centered,
    choice_predictions,
    exact_match,
    normalize_answer,
    perplexity,
    random_baseline,
    token_f1,
)
from groundup.evals.runner import evaluate_tasks, fewshot_prefix, format_table, write_predictions
from groundup.evals.tasks import Item, Task, load_task, load_tasks

BUILTIN = ["stdlib-describe", "stdlib-module", "stdlib-cloze", "stdlib-qa"]


class FakeScorer:
    """Answers from tables: loglik[(context, continuation)] and generated[prompt]; it records
    every request, so a test sees exactly what the runner asked."""

    def __init__(self, loglik=None, generated=None, default=(-5.0, False)):
        self.loglik = loglik or {}
        self.generated = generated or {}
        self.default = default
        self.ll_requests: list[tuple[str, str]] = []
        self.gen_requests: list[tuple[str, dict]] = []

    def loglikelihood(self, requests):
        self.ll_requests += list(requests)
        return [self.loglik.get(r, self.default) for r in requests]

    def generate_until(self, requests):
        self.gen_requests += list(requests)
        return [self.generated.get(prompt, "") for prompt, _ in requests]


# ---- metrics ---------------------------------------------------------------------------
def test_squad_normalisation_exact_match_and_token_f1():
    assert normalize_answer("The  Cat, sat on a mat!") == "cat sat on mat"
    assert exact_match("the cat.", ["A dog", "Cat"]) == 1.0
    assert exact_match("cat sat", ["cat"]) == 0.0
    # pred {quick, brown, fox} vs ref {quick, fox, jumps}: 2 shared, P = R = 2/3
    assert token_f1("The quick brown fox", ["quick fox jumps"]) == pytest.approx(2 / 3)
    assert token_f1("quick", ["nothing shared", "quick fox"]) == pytest.approx(2 / 3)  # best ref
    assert token_f1("", ["a"]) == 1.0  # both normalise to nothing: SQuAD counts a match
    assert token_f1("", ["cat"]) == 0.0


def test_acc_norm_divides_by_characters_of_the_choice_as_lm_eval_does():
    # per character: -1.1 vs -1.0 -> choice 1; per UTF-8 byte it would be -0.55 vs -1.0 -> 0
    assert choice_predictions([-2.2, -3.0], ["éé", "abc"]) == (0, 1)
    assert choice_predictions([-1.0, -1.0], ["a", "b"]) == (0, 0)  # a tie: the first, like argmax


def test_baseline_centered_and_perplexity():
    assert random_baseline([2, 4]) == pytest.approx(0.375)
    assert centered(0.625, 0.25) == pytest.approx(0.5)
    assert centered(0.25, 0.25) == 0.0 and centered(0.1, 0.0) == pytest.approx(0.1)
    assert perplexity([-1.0, -3.0]) == pytest.approx(math.exp(2.0))
    assert perplexity([-1e4]) == math.inf


# ---- the runner ------------------------------------------------------------------------
def _mc_task(**kw) -> Task:
    items = [
        Item("q0", choices=("a", "bbbb"), gold=1),
        Item("q1", choices=("x", "y", "z"), gold=2),
        Item("q2", choices=("cc", "d"), gold=0),
    ]
    return Task("mc", "multiple_choice", items, **kw)


MC_LOGLIK = {
    ("q0", " a"): (-1.0, False),  # acc picks "a" (wrong); per char -1 vs -0.5: "bbbb" (right)
    ("q0", " bbbb"): (-2.0, False),
    ("q1", " x"): (-3.0, False),  # both pick "z" (right)
    ("q1", " y"): (-2.0, False),
    ("q1", " z"): (-1.0, True),
    ("q2", " cc"): (-3.0, False),  # both pick "d": per char -1.5 vs -0.9 (wrong)
    ("q2", " d"): (-0.9, True),
}


def test_multiple_choice_scores_match_a_hand_computation():
    scorer = FakeScorer(MC_LOGLIK)
    res = evaluate_tasks(scorer, [_mc_task()])
    assert sorted(scorer.ll_requests) == sorted(MC_LOGLIK)  # context + " " + each choice
    mc = res["tasks"]["mc"]
    assert (mc["n"], mc["kind"], mc["metric"]) == (3, "multiple_choice", "acc_norm")
    assert mc["acc"] == pytest.approx(1 / 3) and mc["acc_norm"] == pytest.approx(2 / 3)
    baseline = (1 / 2 + 1 / 3 + 1 / 2) / 3
    assert mc["baseline"] == pytest.approx(baseline)
    assert mc["centered"] == pytest.approx((2 / 3 - baseline) / (1 - baseline))
    assert res["mean_centered"] == pytest.approx(mc["centered"])
    first = res["predictions"]["mc"][0]
    assert (first["gold"], first["predicted"], first["predicted_norm"]) == (1, 0, 1)
    assert first["logliks"] == [-1.0, -2.0]
    acc_task = _mc_task(metric="acc")
    assert evaluate_tasks(FakeScorer(MC_LOGLIK), [acc_task])["tasks"]["mc"]["score"] == mc["acc"]


def test_cloze_accuracy_is_greedy_match_and_perplexity_of_the_target():
    items = [Item("a b", references=("c",)), Item("d e", references=("f", "g"))]
    scorer = FakeScorer(
        {("a b", " c"): (-2.0, True), ("d e", " f"): (-4.0, False), ("d e", " g"): (-3.0, False)}
    )
    res = evaluate_tasks(scorer, [Task("cz", "cloze", items)], log=lambda line: None)["tasks"]["cz"]
    assert res["acc"] == 0.5 and res["baseline"] == 0.0 and res["centered"] == 0.5
    assert res["loglik"] == pytest.approx(-2.5)  # the best reference of each item: -2, -3
    assert res["perplexity"] == pytest.approx(math.exp(2.5))


def test_generation_cuts_at_stop_strings_and_scores_f1_and_exact_match():
    items = [
        Item("Q: one?", references=("The first answer.",), chat_prompt="one?"),
        Item("Q: two?", references=("alpha beta", "gamma")),
    ]
    task = Task("gen", "generation", items, until=("\n",), max_gen_toks=7)
    out = {"Q: one?": " the first answer\nQ: next", "Q: two?": " alpha delta"}
    scorer = FakeScorer(generated=out)
    res = evaluate_tasks(scorer, [task])
    assert scorer.gen_requests[0] == ("Q: one?", {"until": ["\n"], "max_gen_toks": 7})
    gen = res["tasks"]["gen"]
    assert gen["exact_match"] == 0.5 and gen["f1"] == pytest.approx((1.0 + 0.5) / 2)
    assert res["predictions"]["gen"][0]["predicted"] == " the first answer"
    # a chat model is asked the chat prompt (or the context) through format_prompt
    chat = FakeScorer()
    evaluate_tasks(chat, [task], format_prompt=lambda q: f"<user>{q}</user>")
    assert [p for p, _ in chat.gen_requests] == ["<user>one?</user>", "<user>Q: two?</user>"]


def _fewshot_task() -> Task:
    pool = [Item(f"shot{i}", choices=(f"s{i}", "no"), gold=0) for i in range(6)]
    items = [Item(f"item{i}", choices=("yes", "no"), gold=0) for i in range(5)]
    return Task("fs", "multiple_choice", items, fewshot=pool, fewshot_delimiter="\n\n")


def test_fewshot_examples_come_from_the_fewshot_split_deterministically():
    task = _fewshot_task()
    prefix = fewshot_prefix(task, 3, 2)
    shots = prefix.split("\n\n")[:-1]
    assert len(shots) == 2 and len(set(shots)) == 2
    for shot in shots:  # "context<delim>gold choice", from the pool only
        ctx, answer = shot.split(" ")
        assert ctx.startswith("shot") and answer == f"s{ctx[4:]}"
    assert prefix == fewshot_prefix(_fewshot_task(), 3, 2)
    assert {fewshot_prefix(task, i, 2) for i in range(5)} != {prefix}  # drawn per item
    scorer = FakeScorer()
    evaluate_tasks(scorer, [task], num_fewshot=2, limit=2)
    contexts = sorted({c for c, _ in scorer.ll_requests})
    assert contexts == sorted(fewshot_prefix(task, i, 2) + f"item{i}" for i in range(2))
    assert not any("item" in c.split("\n\n")[0] for c in contexts)


def test_runner_settings_are_checked_before_any_scoring():
    scorer = FakeScorer()
    with pytest.raises(ConfigError, match="fewer than num_fewshot=7"):
        evaluate_tasks(scorer, [_mc_task(), _fewshot_task()], num_fewshot=7)
    with pytest.raises(ConfigError, match="limit must be a positive"):
        evaluate_tasks(scorer, [_mc_task()], limit=0)
    gen = Task(
        "g", "generation", [Item("q", references=("a",))], fewshot=[Item("p", references=("b",))]
    )
    with pytest.raises(ConfigError, match="num_fewshot=0 with a chat"):
        evaluate_tasks(scorer, [gen], num_fewshot=1, format_prompt=str)
    with pytest.raises(ConfigError, match="two tasks are named 'mc'"):
        evaluate_tasks(scorer, [_mc_task(), _mc_task()])
    with pytest.raises(ConfigError, match="did you mean 'stdlib-cloze'"):
        evaluate_tasks(scorer, [_mc_task(), "stdlib-clozee"])
    assert scorer.ll_requests == [] and scorer.gen_requests == []


def test_task_built_in_python_is_checked():
    with pytest.raises(ConfigError, match="did you mean 'multiple_choice'"):
        Task("t", "multiple_choise", [Item("q", choices=("a", "b"))])
    with pytest.raises(ConfigError, match="valid metrics: f1, exact_match"):
        Task("t", "generation", [Item("q", references=("a",))], metric="acc")
    with pytest.raises(DataError, match="item 0: needs >= 2 choices"):
        Task("t", "multiple_choice", [Item("q", choices=("a",))])
    with pytest.raises(DataError, match="has no items"):
        Task("t", "cloze", [])


def test_format_table_has_a_column_per_model_and_write_predictions(tmp_path):
    a = evaluate_tasks(FakeScorer(MC_LOGLIK), [_mc_task()])
    b = evaluate_tasks(
        FakeScorer(), [_mc_task(), Task("cz", "cloze", [Item("x", references=("y",))])]
    )
    table = format_table({"model-a": a, "model-b": b})
    lines = table.splitlines()
    assert lines[0].split() == ["task", "n", "metric", "random", "model-a", "model-b"]
    acc_norm = next(line for line in lines if "acc_norm*" in line).split()
    assert acc_norm[-2:] == [
        f"{a['tasks']['mc']['acc_norm']:.4f}",
        f"{b['tasks']['mc']['acc_norm']:.4f}",
    ]
    cz = next(line for line in lines if line.startswith("cz")).split()
    assert cz[-2:] == ["-", "0.0000"]  # model-a has no cloze task
    assert lines[-1].split()[-2:] == [f"{a['mean_centered']:.4f}", f"{b['mean_centered']:.4f}"]
    paths = write_predictions(b, tmp_path / "pred")
    assert sorted(p.name for p in paths) == ["cz.jsonl", "mc.jsonl"]
    rows = [json.loads(line) for line in (tmp_path / "pred" / "mc.jsonl").read_text().splitlines()]
    assert [r["context"] for r in rows] == ["q0", "q1", "q2"]


# ---- spec files ------------------------------------------------------------------------
def _write(folder: Path, spec: str, rows: list, name: str = "data.jsonl") -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    (folder / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    path = folder / "task.yaml"
    path.write_text(spec, encoding="utf-8")
    return path


MC_SPEC = "kind: multiple_choice\ndata: data.jsonl\ncontext_field: question\n"


def test_spec_file_loads_every_kind(tmp_path):
    rows = [
        {"question": "2+2=", "choices": ["3", "4"], "answer": 1},
        {"question": "1+1=", "choices": ["2", "5"], "answer": "2"},
    ]
    spec = _write(
        tmp_path, MC_SPEC + "name: sums\nfewshot_data: train.jsonl\nnum_fewshot: 1\n", rows
    )
    (tmp_path / "train.jsonl").write_text(json.dumps(rows[0]) + "\n", encoding="utf-8")
    task = load_task(spec)
    assert (task.name, task.kind, task.num_fewshot, len(task.fewshot)) == (
        "sums",
        "multiple_choice",
        1,
        1,
    )
    assert [(i.context, i.choices, i.gold) for i in task.items] == [
        ("2+2=", ("3", "4"), 1),
        ("1+1=", ("2", "5"), 0),
    ]
    assert task.items[0].doc == rows[0]
    (tmp_path / "g.jsonl").write_text(
        '{"context": "Q", "answer": ["a", "b"], "ask": "q?"}\n', encoding="utf-8"
    )
    (tmp_path / "g.json").write_text(
        json.dumps({"kind": "generation", "data": "g.jsonl", "until": "\n\n", "chat_field": "ask"})
    )
    gen = load_task(tmp_path / "g.json")
    assert (gen.name, gen.until, gen.items[0].references, gen.items[0].chat_prompt) == (
        "g",
        ("\n\n",),
        ("a", "b"),
        "q?",
    )


@pytest.mark.parametrize(
    "spec, rows, error, match",
    [
        (
            MC_SPEC,
            [{"question": "q", "choices": ["a", "b"], "answer": 4}],
            DataError,
            r"data.jsonl:1: 'answer' 4 is out of range for 2 choices; give an index from 0 to 1",
        ),
        (
            MC_SPEC,
            [{"question": "q", "choices": ["a"], "answer": 0}],
            DataError,
            "'choices' must be a list of at least 2 choices, got a list of 1",
        ),
        (
            MC_SPEC,
            [{"question": "q", "choices": ["a", "b"], "answer": "c"}],
            DataError,
            "'answer' 'c' is not one of the choices",
        ),
        (
            MC_SPEC,
            [{"question": "q", "choices": ["a", "a"], "answer": 0}],
            DataError,
            "listed twice",
        ),
        (
            MC_SPEC,
            [{"question": "q", "choices": ["a", "b"], "answer": True}],
            DataError,
            "got bool",
        ),
        (
            MC_SPEC,
            [{"quest": "q", "choices": ["a", "b"], "answer": 0}],
            DataError,
            r"data.jsonl:1: no 'question' field \(did you mean 'quest'\?\) \(fields present: quest, choices, answer\); set context_field",
        ),
        (MC_SPEC, ['{"question": "q",'], DataError, r"data.jsonl:1: invalid JSON"),
        (
            MC_SPEC,
            [{"question": "q", "choices": ["a", "b"], "answer": 0}, "[1]"],
            DataError,
            "data.jsonl:2: a line must be a JSON object",
        ),
        (
            "kind: multiple_choise\ndata: data.jsonl\n",
            [],
            ConfigError,
            "did you mean 'multiple_choice'",
        ),
        (
            "kind: cloze\ndata: data.jsonl\ncontext_feld: x\n",
            [],
            ConfigError,
            "unknown task spec key 'context_feld' \\(did you mean 'context_field'\\?\\)",
        ),
        ("kind: cloze\n", [], ConfigError, r"no 'data' field \(fields present: kind\)"),
        (
            "kind: cloze\ndata: other.jsonl\n",
            [],
            MissingFileError,
            "data file .*other.jsonl not found",
        ),
        (
            "kind: cloze\ndata: data.jsonl\n",
            [{"context": "q", "answer": []}],
            DataError,
            "non-empty list of strings",
        ),
        (
            "kind: cloze\ndata: data.jsonl\n",
            [{"context": "", "answer": "a"}],
            DataError,
            "'context' must be non-empty text",
        ),
        (
            "kind: cloze\ndata: data.jsonl\nfewshot_data: data.jsonl\n",
            [{"context": "q", "answer": "a"}],
            ConfigError,
            "fewshot_data is the scored data file",
        ),
        (
            "kind: cloze\ndata: data.jsonl\nnum_fewshot: 2\n",
            [{"context": "q", "answer": "a"}],
            ConfigError,
            "num_fewshot is 2 but there is no fewshot_data",
        ),
        (
            "kind: cloze\ndata: data.jsonl\nchat_field: q\n",
            [{"context": "q", "answer": "a"}],
            ConfigError,
            "chat_field is used by generation tasks only",
        ),
        (
            "kind: generation\ndata: data.jsonl\nmetric: acc\n",
            [{"context": "q", "answer": "a"}],
            ConfigError,
            "metric 'acc' does not apply",
        ),
        ("kind: cloze\ndata: data.jsonl\n", [], DataError, "holds no rows"),
    ],
)
def test_bad_specs_and_rows_are_one_line_typed_errors(tmp_path, spec, rows, error, match):
    path = _write(tmp_path, spec, rows)
    with pytest.raises(error, match=match) as info:
        load_task(path)
    assert "\n" not in str(info.value)
    assert str(path) in str(info.value) or str(tmp_path / "data.jsonl") in str(info.value)


def test_task_references_that_are_not_specs(tmp_path):
    (tmp_path / "rows.jsonl").write_text('{"context": "a"}\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="is a data file, not a task spec; write a YAML spec"):
        load_task(tmp_path / "rows.jsonl")
    with pytest.raises(MissingFileError, match="not found"):
        load_task(tmp_path / "missing.yaml")
    with pytest.raises(
        ConfigError,
        match="unknown evaluation task 'stdlib-descibe' \\(did you mean 'stdlib-describe'\\?\\)",
    ):
        load_task("stdlib-descibe")
    with pytest.raises(ConfigError, match="no evaluation tasks"):
        load_tasks([])


# ---- built-in tasks --------------------------------------------------------------------
@pytest.fixture(scope="module")
def builtin_tasks() -> dict[str, Task]:
    return {name: load_task(name) for name in BUILTIN}


def test_builtin_tasks_are_sized_shaped_and_deterministic(builtin_tasks):
    from groundup.data.heldout import is_heldout

    for name, task in builtin_tasks.items():
        assert 150 <= len(task.items) <= 500, (name, len(task.items))
        assert task.source.startswith("builtin") and len(task.fewshot) >= 10
        assert all(is_heldout(item.doc["name"]) for item in task.items)
        assert not any(is_heldout(ex.doc["name"]) for ex in task.fewshot)
        assert load_task(name.upper()).items == task.items  # same items every build
    for name in ("stdlib-describe", "stdlib-module"):
        items = builtin_tasks[name].items
        assert all(len(set(i.choices)) == 4 for i in items)
        golds = [i.gold for i in items]
        assert all(golds.count(g) > len(items) / 8 for g in range(4))  # the answer moves around
    describe = builtin_tasks["stdlib-describe"].items[0]
    assert describe.choices[describe.gold] == describe.doc["sentence"]
    assert (
        describe.context == f"{describe.doc['name']}:" or describe.doc["module"] == "builtins.str"
    )
    for item in builtin_tasks["stdlib-cloze"].items:
        (word,) = item.references
        assert word.isalpha() and len(word) >= 3
        assert f"{item.context.split(': ', 1)[1]} {word}." == item.doc["sentence"]
    qa = builtin_tasks["stdlib-qa"]
    assert qa.items[0].chat_prompt == f"What does {qa.items[0].doc['name']} do?"
    assert qa.items[0].references[0] == qa.items[0].doc["sentence"]


def test_random_scorer_scores_near_chance_on_builtin_tasks(builtin_tasks):
    import hashlib

    class HashScorer(FakeScorer):  # log-likelihoods that know nothing: a hash of the request
        def loglikelihood(self, requests):
            return [
                (-int(hashlib.sha256((c + x).encode()).hexdigest()[:8], 16) / 2**28, False)
                for c, x in requests
            ]

    res = evaluate_tasks(HashScorer(), list(builtin_tasks.values()), limit=200)
    for name in ("stdlib-describe", "stdlib-module"):
        assert abs(res["tasks"][name]["acc"] - 0.25) < 0.1  # 200 items: 3.4 standard errors
    assert res["tasks"]["stdlib-cloze"]["acc"] == 0.0 and res["tasks"]["stdlib-qa"]["f1"] == 0.0


def test_end_to_end_with_the_real_scorer_on_a_tiny_gpt():
    lm = pytest.importorskip("groundup.evals.lm", reason="the LMScorer is not there yet")
    import torch

    from groundup.data.tokenizers import Tokenizer
    from groundup.models.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    tok = Tokenizer.train(None, kind="bytes")
    model = GPT(
        GPTConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=16, block_size=256)
    )
    scorer = lm.LMScorer(model.eval(), tok, batch_size=8, device="cpu")
    res = evaluate_tasks(scorer, BUILTIN, limit=4)
    for name in BUILTIN:
        entry = res["tasks"][name]
        assert entry["n"] == 4 and 0.0 <= entry["score"] <= 1.0
    lls = res["predictions"]["stdlib-describe"][0]["logliks"]
    assert len(lls) == 4 and all(ll < 0 for ll in lls)
    assert math.isfinite(res["mean_centered"])


def test_distinct_n_tells_degenerate_answers_from_varied_ones() -> None:
    from groundup.evals.metrics import distinct_n

    assert distinct_n(["the value of the value of the value of"], 2) == pytest.approx(3 / 8)
    assert distinct_n(["Return a copy.", "Open the file for reading."], 2) == 1.0
    assert distinct_n(["one", ""], 2) == 0.0  # no bigram at all
    # across answers: the same answer to every question repeats every bigram
    assert distinct_n(["close the file"] * 4, 2) == pytest.approx(2 / 8)
