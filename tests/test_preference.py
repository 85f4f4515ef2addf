"""Preference tuning (dpo, orpo, simpo) and reward models in `groundup finetune`: the losses
against hand-computed values and TRL, the LoRA reference, tiny runs through the CLI, bad
input, resume."""

from __future__ import annotations

import copy
import json
import math
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from groundup.cli import main
from groundup.data.tokenizers import Tokenizer
from groundup.finetune.lora import apply_lora
from groundup.finetune.preference import encode_pairs, read_preference_jsonl
from groundup.finetune.preference_loss import (
    PreferenceConfig,
    PreferenceObjective,
    orpo_loss,
    simpo_loss,
)
from groundup.finetune.reference import PreferencePolicy, adapters_disabled, sequence_logps
from groundup.finetune.sft import IGNORE_INDEX, Message
from groundup.models.folders import load_model, save_model_dir
from groundup.models.gpt import GPT, GPTConfig

pytestmark = pytest.mark.usefixtures("one_thread")

# a fixed batch of per-pair statistics: summed reply log-probs, token counts, reference sums
POLICY_C = [-12.5, -3.0, -40.0, -7.25]
POLICY_R = [-14.0, -2.0, -39.0, -9.5]
N_C = [5, 2, 20, 3]
N_R = [6, 1, 18, 4]
REF_C = [-13.0, -2.5, -41.0, -7.0]
REF_R = [-13.5, -2.5, -38.0, -9.0]


def stats() -> torch.Tensor:
    cols = [POLICY_C, POLICY_R, N_C, N_R, REF_C, REF_R]
    return torch.tensor(cols, dtype=torch.float64).T  # (4, 6)


def log_sigmoid(z: float) -> float:
    return -math.log1p(math.exp(-z)) if z > 0 else z - math.log1p(math.exp(z))


def hand_dpo(loss: str, beta: float, smoothing: float = 0.0) -> list[float]:
    out = []
    for pc, pr, nc, nr, rc, rr in zip(POLICY_C, POLICY_R, N_C, N_R, REF_C, REF_R):
        h = (pc - rc) - (pr - rr)
        if loss == "sigmoid":
            z = beta * h
            out.append(-(1 - smoothing) * log_sigmoid(z) - smoothing * log_sigmoid(-z))
        elif loss == "hinge":
            out.append(max(0.0, 1 - beta * h))
        else:  # ipo: per-token mean log-ratios
            d = (pc - rc) / nc - (pr - rr) / nr
            out.append((d - 1 / (2 * beta)) ** 2)
    return out


def hand_simpo(beta: float, gamma: float) -> list[float]:
    return [
        -log_sigmoid(beta * (pc / nc - pr / nr) - gamma)
        for pc, pr, nc, nr in zip(POLICY_C, POLICY_R, N_C, N_R)
    ]


def hand_orpo(lam: float) -> list[float]:
    def log_odds(a: float) -> float:
        return a - math.log(1 - math.exp(a))

    out = []
    for pc, pr, nc, nr in zip(POLICY_C, POLICY_R, N_C, N_R):
        a_c, a_r = pc / nc, pr / nr
        out.append(-a_c - lam * log_sigmoid(log_odds(a_c) - log_odds(a_r)))
    return out


def max_diff(got: torch.Tensor, want: list[float]) -> float:
    return float((got - torch.tensor(want, dtype=torch.float64)).abs().max())


@pytest.mark.parametrize(
    ("task", "loss", "extra"),
    [
        ("dpo", "sigmoid", {}),
        ("dpo", "sigmoid", {"label_smoothing": 0.1}),
        ("dpo", "ipo", {}),
        ("dpo", "hinge", {}),
        ("simpo", "sigmoid", {"simpo_gamma": 0.7}),
        ("orpo", "sigmoid", {"orpo_lambda": 0.3}),
    ],
)
def test_losses_match_hand_computed_values(task: str, loss: str, extra: dict) -> None:
    cfg = PreferenceConfig(loss=loss, beta=0.5, **extra)
    objective = PreferenceObjective(task, cfg)
    per_pair, chosen, rejected = objective.per_pair(stats())
    if task == "dpo":
        want = hand_dpo(loss, 0.5, cfg.label_smoothing)
        want_c = [0.5 * (p - r) for p, r in zip(POLICY_C, REF_C)]
        want_r = [0.5 * (p - r) for p, r in zip(POLICY_R, REF_R)]
    else:
        want = hand_simpo(0.5, 0.7) if task == "simpo" else hand_orpo(0.3)
        want_c = [0.5 * p / n for p, n in zip(POLICY_C, N_C)]
        want_r = [0.5 * p / n for p, n in zip(POLICY_R, N_R)]
    assert max_diff(per_pair, want) < 1e-12
    assert max_diff(chosen, want_c) < 1e-12 and max_diff(rejected, want_r) < 1e-12
    # the Trainer's view: a sum over pairs and a count of pairs
    targets = torch.zeros(4, dtype=torch.int64)
    assert objective.count(targets) == 4
    assert float(objective(stats(), targets)) == pytest.approx(sum(want) / 4, abs=1e-12)
    rewards = objective.probabilities()(stats())  # what the metrics read
    assert torch.equal(rewards, torch.stack([chosen, rejected], dim=1))


def trl_dpo_loss(loss: str, beta: float) -> tuple[list[float], list[float], list[float]]:
    """TRL's DPO loss, pair by pair, through DPOTrainer's own code with a stand-in model that
    returns the per-token log-probabilities of the fixed batch (reference ones precomputed)."""
    from trl import DPOTrainer

    losses, chosen, rejected = [], [], []
    for i in range(len(POLICY_C)):
        T = 1 + max(N_C[i], N_R[i])
        mask = torch.zeros(2, T, dtype=torch.long)
        logps = torch.zeros(2, T - 1, dtype=torch.float64)  # over the shifted positions
        for row, (total, n) in enumerate(((POLICY_C[i], N_C[i]), (POLICY_R[i], N_R[i]))):
            mask[row, T - n :] = 1
            logps[row, T - 1 - n :] = total / n  # spread over the reply; the sum is `total`

        def model(logps=logps, **kwargs):
            zeros = torch.zeros_like(logps)
            return SimpleNamespace(
                log_probs=logps, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool()
            )

        metrics: dict = {"train": defaultdict(list), "eval": defaultdict(list)}
        fake = SimpleNamespace(
            model=SimpleNamespace(training=True),
            accelerator=SimpleNamespace(
                device=torch.device("cpu"), gather=lambda t: t, gather_for_metrics=lambda t: t
            ),
            aux_loss_enabled=False,
            ld_alpha=None,
            precompute_ref_logps=True,
            f_divergence_type="reverse_kl",
            loss_types=[loss],
            loss_weights=[1.0],
            beta=beta,
            label_smoothing=0.0,
            use_weighting=False,
            _metrics=metrics,
            _total_train_tokens=0,
            _tp_size=1,
        )
        inputs = {
            "input_ids": torch.ones(2, T, dtype=torch.long),
            "attention_mask": torch.ones(2, T, dtype=torch.long),
            "completion_mask": mask,
            "ref_chosen_logps": torch.tensor([REF_C[i]], dtype=torch.float64),
            "ref_rejected_logps": torch.tensor([REF_R[i]], dtype=torch.float64),
        }
        losses.append(float(DPOTrainer._compute_loss(fake, model, inputs, False)))
        chosen.append(metrics["train"]["rewards/chosen"][0])
        rejected.append(metrics["train"]["rewards/rejected"][0])
    return losses, chosen, rejected


@pytest.mark.parametrize("loss", ["sigmoid", "ipo", "hinge"])
def test_dpo_matches_trl(loss: str) -> None:
    pytest.importorskip("trl")
    from trl import DPOTrainer

    if not hasattr(DPOTrainer, "_compute_loss") or hasattr(DPOTrainer, "dpo_loss"):
        pytest.skip("this test reads the DPO loss of trl 1.x (DPOTrainer._compute_loss)")
    want, want_c, want_r = trl_dpo_loss(loss, 0.5)
    got, chosen, rejected = PreferenceObjective("dpo", PreferenceConfig(loss, 0.5)).per_pair(
        stats()
    )
    assert max_diff(got, want) < 1e-12
    assert max_diff(chosen, want_c) < 1e-12 and max_diff(rejected, want_r) < 1e-12


def test_orpo_and_simpo_match_trl() -> None:
    pytest.importorskip("trl")
    import os

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl.experimental.cpo import CPOTrainer
    from trl.experimental.orpo import ORPOTrainer

    mean_c = torch.tensor(POLICY_C, dtype=torch.float64) / torch.tensor(N_C)
    mean_r = torch.tensor(POLICY_R, dtype=torch.float64) / torch.tensor(N_R)
    device = SimpleNamespace(device=torch.device("cpu"))
    # ORPO: TRL's loss is nll - mean(beta * log sigmoid(log odds)), its beta our lambda
    fake = SimpleNamespace(beta=0.3, accelerator=device)
    ratio, chosen, rejected, _, _ = ORPOTrainer.odds_ratio_loss(fake, mean_c, mean_r)
    ours, our_c, our_r = orpo_loss(mean_c, mean_r, lam=0.3, beta=0.3)
    assert float((ours - (-mean_c - ratio)).abs().max()) < 1e-6  # TRL computes in float32
    assert float((our_c - chosen).abs().max()) < 1e-6
    fake = SimpleNamespace(
        beta=2.0, simpo_gamma=0.7, label_smoothing=0.1, loss_type="simpo", alpha=0.0,
        cpo_alpha=0.0, accelerator=device,
    )  # fmt: skip
    losses, chosen, rejected = CPOTrainer.cpo_loss(fake, mean_c, mean_r)
    ours, our_c, our_r = simpo_loss(mean_c, mean_r, 2.0, 0.7, "sigmoid", 0.1)
    assert float((ours - losses).abs().max()) < 1e-12
    assert float((our_c - chosen).abs().max()) < 1e-12
    assert float((our_r - rejected).abs().max()) < 1e-12


def tiny_gpt(block_size: int = 64) -> GPT:
    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=block_size, vocab_size=300)
    return GPT(cfg)


def test_lora_reference_is_the_base_model_exactly() -> None:
    torch.manual_seed(0)
    policy = tiny_gpt()
    base = copy.deepcopy(policy).eval()
    apply_lora(policy, ["*.attn.qkv", "*.attn.proj"], rank=4, alpha=8, dropout=0.1)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if name.endswith("lora_b"):
                p.normal_()  # trained adapters: the policy now differs from the base
    ids = torch.randint(0, 300, (4, 16))
    targets = torch.where(torch.rand(4, 16) < 0.5, torch.randint(0, 300, (4, 16)), -100)
    policy.train()
    with torch.no_grad():
        assert not torch.equal(policy.eval()(ids), base(ids))
        policy.train()
        with adapters_disabled(policy):
            disabled = policy.eval()(ids)
        policy.train()
        assert torch.equal(disabled, base(ids))  # exactly the base's logits
        want = sequence_logps(base(ids), targets)[0]
    wrapped = PreferencePolicy(policy, "adapters")
    assert torch.equal(wrapped.reference_logps(ids, targets), want)
    assert policy.training  # the reference pass put the policy back in train mode
    assert not torch.equal(policy.eval()(ids), base(ids))  # the adapters are back on


def test_full_reference_is_a_frozen_copy_outside_the_checkpoint() -> None:
    torch.manual_seed(0)
    policy = tiny_gpt()
    wrapped = PreferencePolicy(policy, "copy")
    assert all(k.startswith("policy.") for k in wrapped.state_dict())
    assert len(list(wrapped.parameters())) == len(list(policy.parameters()))
    pairs = torch.randint(0, 300, (3, 2, 2, 12))
    before = wrapped(pairs)
    assert torch.equal(before[:, 4:], before[:, :2])  # the reference starts as the policy
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.01)
    after = wrapped(pairs)
    assert torch.equal(after[:, 4:], before[:, 4:])  # the reference did not move
    assert not torch.equal(after[:, :2], before[:, :2])
    assert wrapped.double()(pairs).dtype == torch.float64  # .to() reaches the copy too


def test_accumulated_micro_batches_give_one_batch_s_step() -> None:
    """Pairs are the items: 2 micro-batches of 4 pairs step exactly as one batch of 8 (fp64),
    though each micro-batch is cut to its own longest sequence."""
    from groundup.finetune.preference import PairBatches
    from groundup.train.trainer import Trainer

    torch.manual_seed(0)
    policy = tiny_gpt()
    pairs = torch.randint(0, 300, (8, 2, 2, 12))
    lengths = torch.randint(4, 13, (8, 2))  # ragged: padding differs between micro-batches
    positions = torch.arange(12)
    pairs[:, :, 1] = torch.where(positions < lengths[..., None], pairs[:, :, 1], IGNORE_INDEX)
    pairs[:, :, 1, :2] = IGNORE_INDEX  # a prompt
    weights = []
    for batch_size, accum in ((8, 1), (4, 2)):
        wrapped = PreferencePolicy(copy.deepcopy(policy), "copy")
        objective = PreferenceObjective("dpo", PreferenceConfig(beta=0.5))
        trainer = Trainer(
            wrapped, loss=objective, optimizer="sgd", lr=0.1, grad_accum=accum,
            precision="fp64", device="cpu", verbose=0,
        )  # fmt: skip
        for _ in range(2):  # the second step has a reference that differs from the policy
            trainer.fit(PairBatches(pairs, batch_size=batch_size, shuffle=False), max_steps=1)
        weights.append(torch.cat([p.detach().reshape(-1) for p in wrapped.policy.parameters()]))
    assert not torch.equal(
        weights[0], torch.cat([p.reshape(-1) for p in policy.double().parameters()])
    )
    assert float((weights[0] - weights[1]).abs().max()) < 1e-12


def test_chat_pairs_train_only_the_final_reply(tmp_path: Path) -> None:
    tok = Tokenizer.train(None, kind="bytes")
    turns = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "2+2?"},
    ]
    line = {
        "chosen": [*turns, {"role": "assistant", "content": "4."}],
        "rejected": [*turns, {"role": "assistant", "content": "5"}],
    }
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps(line) + "\n", encoding="utf-8")
    [pair] = read_preference_jsonl(path)
    assert pair.prompt[-1] == Message("user", "2+2?") and (pair.chosen, pair.rejected) == (
        "4.",
        "5",
    )
    t = encode_pairs([pair], tok, max_len=200, template="chatml")
    targets = t.pairs[0, :, 1]
    assert [tok.decode([i for i in row.tolist() if i != IGNORE_INDEX]) for row in targets] == [
        "4.<|im_end|>",
        "5<|im_end|>",
    ]  # "hello", the earlier assistant turn, is prompt here


# ------------------------------------------------------------------ runs through the CLI
@pytest.fixture(scope="module")
def base_gpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("base")
    tok = Tokenizer.train(None, kind="bytes")
    torch.manual_seed(1234)
    cfg = GPTConfig(
        n_layer=2, n_head=2, n_embd=32, block_size=128, vocab_size=tok.vocab_size, dropout=0.0
    )
    save_model_dir(root / "model", GPT(cfg), tok)
    return root


def period_pairs(n: int, start: int = 0) -> list[dict]:
    """The sum with its full stop is preferred to the sum without one."""
    return [
        {"prompt": f"add {a} and {a + 3}", "chosen": f"it is {2 * a + 3}.", "rejected": f"it is {2 * a + 3}"}
        for a in range(start, start + n)
    ]  # fmt: skip


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def write_config(tmp_path: Path, base: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    head = f"run_dir: {tmp_path / 'run'}\nbase: {{path: {base}}}\n"
    path.write_text(head + text, encoding="utf-8")
    return path


def records(run: Path, event: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == event]


def test_dpo_raises_preference_accuracy_on_the_builtin_set(tmp_path: Path, base_gpt: Path) -> None:
    cfg = write_config(
        tmp_path,
        base_gpt,
        "task: dpo\nmethod: lora\ndata: {builtin: stdlib-pref, max_len: 96}\n"
        "optim: {lr: 3.0e-3}\n"
        "train: {max_steps: 20, batch_size: 8, log_every: 5, device: cpu, precision: fp32}\n",
    )
    assert main(["finetune", str(cfg)]) == 0
    run = tmp_path / "run"
    results = json.loads((run / "results.json").read_text())
    # at step 0 every implicit reward is 0, so no pair is ranked right (accuracy 0)
    assert results["val_pref_accuracy"] > 0.9 and results["val_reward_margin"] > 0
    train = records(run, "train")
    assert [r["step"] for r in train] == [5, 10, 15, 20]
    assert train[-1]["pref_accuracy"] > 0.9 and train[-1]["reward_margin"] > 0
    assert all(k in r for r in train for k in ("chosen_reward", "rejected_reward", "reward_margin"))
    tm = load_model(run)  # a chat model: generate and evaluate read it as an SFT run
    assert tm.task == "sft" and tm.meta["objective"] == "dpo"


def test_orpo_and_simpo_rank_the_chosen_reply_higher(tmp_path: Path, base_gpt: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", period_pairs(48))
    val = write_jsonl(tmp_path / "val.jsonl", period_pairs(16, start=100))
    common = (
        f"method: full\ndata: {{train: {train}, val: {val}, max_len: 64}}\noptim: {{lr: 1.0e-2}}\n"
        "train: {epochs: 4, batch_size: 8, device: cpu, precision: fp32}\n"
    )
    for task in ("orpo", "simpo"):
        cfg = write_config(tmp_path, base_gpt, f"task: {task}\n" + common, f"{task}.yaml")
        assert main(["finetune", str(cfg), f"run_dir={tmp_path / task}"]) == 0
        results = json.loads((tmp_path / task / "results.json").read_text())
        assert results["val_pref_accuracy"] == 1.0, (task, results)
        epochs = records(tmp_path / task, "epoch")
        assert epochs[-1]["val_reward_margin"] > epochs[0]["val_reward_margin"], task


def test_reward_model_learns_and_scores_as_in_training(tmp_path: Path, base_gpt: Path) -> None:
    from groundup.finetune.reward import score_replies

    train = write_jsonl(tmp_path / "train.jsonl", period_pairs(48))
    val_rows = period_pairs(16, start=100)
    val = write_jsonl(tmp_path / "val.jsonl", val_rows)
    cfg = write_config(
        tmp_path,
        base_gpt,
        f"task: reward\nmethod: lora\ndata: {{train: {train}, val: {val}, max_len: 64}}\n"
        "optim: {lr: 1.0e-2}\ntrain: {epochs: 4, batch_size: 8, device: cpu, precision: fp32}\n",
    )
    assert main(["finetune", str(cfg)]) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["val_pref_accuracy"] > 0.9 and results["val_reward_margin"] > 0
    tm = load_model(tmp_path / "run")  # loads like a classifier, with one output
    assert tm.task == "reward" and tm.model.num_labels == 1
    prompts = [r["prompt"] for r in val_rows]
    chosen = score_replies(tm.model, tm.tokenizer, prompts, [r["chosen"] for r in val_rows])
    rejected = score_replies(tm.model, tm.tokenizer, prompts, [r["rejected"] for r in val_rows])
    margin = sum(c - r for c, r in zip(chosen, rejected)) / len(chosen)
    assert margin == pytest.approx(results["val_reward_margin"], abs=1e-4)  # as training read it


BAD_LINES = {
    "no rejected": ({"prompt": "p", "chosen": "a"}, "line 2: no 'rejected' field (the line has: prompt, chosen)"),
    "same replies": ({"prompt": "p", "chosen": "a", "rejected": "a"}, "line 2: chosen and rejected are the same"),
    "empty prompt": ({"prompt": " ", "chosen": "a", "rejected": "b"}, "line 2: the prompt is empty"),
    "empty reply": ({"prompt": "p", "chosen": "", "rejected": "b"}, "line 2: the chosen reply is empty"),
    "prefixes differ": (
        {
            "chosen": [{"role": "user", "content": "p"}, {"role": "assistant", "content": "a"}],
            "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "b"}],
        },
        "line 2: the chosen and rejected conversations differ at message 1",
    ),
}  # fmt: skip


def test_bad_input_is_one_line_and_exit_2_before_any_work(
    tmp_path: Path, base_gpt: Path, capsys: pytest.CaptureFixture
) -> None:
    good = period_pairs(1)[0]
    cfg = write_config(tmp_path, base_gpt, "task: dpo\ntrain: {max_steps: 1, device: cpu}\n")
    for name, (line, message) in BAD_LINES.items():
        data = write_jsonl(tmp_path / "bad.jsonl", [good, line])
        assert main(["finetune", str(cfg), f"data.train={data}"]) == 2, name
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], (name, err)
    data = write_jsonl(tmp_path / "good.jsonl", period_pairs(8))
    assert main(["finetune", str(cfg), f"data.train={data}", "preference.loss=sigmod"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "did you mean 'sigmoid'" in err[0], err
    assert (
        main(["finetune", str(cfg), f"data.train={data}", "preference.loss=ipo", "task=orpo"]) == 2
    )
    assert "does not apply to task orpo" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # found before the run folder was made


def interrupt_at(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    """Ctrl-C once `step` steps are done (as tests/test_pretrain.py does)."""
    from groundup.train.trainer import Trainer

    original = Trainer.train_step

    def train_step(self, micro):
        if self.step == step:
            raise KeyboardInterrupt
        return original(self, micro)

    monkeypatch.setattr(Trainer, "train_step", train_step)


def test_resume_after_an_interrupt_writes_the_same_records(
    tmp_path: Path, base_gpt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", period_pairs(40))
    text = (
        f"task: dpo\nmethod: full\ndata: {{train: {train}, max_len: 64}}\noptim: {{lr: 1.0e-2}}\n"
        "train: {max_steps: 12, batch_size: 4, log_every: 3, eval_every: 4, "
        "checkpoint_every: 5, device: cpu, precision: fp32}\n"
    )
    cfg_a = write_config(tmp_path, base_gpt, text, "a.yaml")
    cfg_b = write_config(tmp_path, base_gpt, text, "b.yaml")
    assert main(["finetune", str(cfg_a), f"run_dir={tmp_path / 'a'}"]) == 0
    with monkeypatch.context() as m:
        interrupt_at(m, 7)  # the newest checkpoint: step 5, in the middle of a log window
        assert main(["finetune", str(cfg_b), f"run_dir={tmp_path / 'b'}"]) == 130
    assert main(["finetune", str(cfg_b), f"run_dir={tmp_path / 'b'}", "--resume"]) == 0

    timing = {"time_s", "data_wait", "samples_per_s", "tokens_per_s", "mfu"}

    def curve(run: str) -> list[dict]:
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return [
            {k: v for k, v in r.items() if k not in timing}
            for r in map(json.loads, lines)
            if r["event"] in ("train", "eval", "epoch")
        ]

    a, b = curve("a"), curve("b")
    assert [r["step"] for r in b if r["event"] == "train"] == [3, 6, 9, 12]
    assert "pref_accuracy" in a[0] and "val_reward_margin" in a[1]
    assert b == a  # exact: CPU, fp32, the same batches and reference
