"""Multiple-choice scoring throughput of LMScorer: one request a forward, batched, and batched
with the shared-context KV cache, measured in the same run on the same questions.

The model has the shape of configs/pretrain-pydocs.yaml (gpt2 flavour, 4 layers x 256, block
128, a 4096-token BPE trained here on the pydocs corpus) with random weights: throughput does
not depend on what the weights know. Each question is a passage of pydocs text as context and
four continuations of 1-12 tokens. The three paths must give the same scores (fp32: within
1e-3 nats, and the same chosen answer for every question).

    python benchmarks/bench_eval_scoring.py [--questions 100] [--batch-size 16] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from groundup.data.corpus import iter_documents
from groundup.data.tokenizers import Tokenizer
from groundup.evals.lm import LMScorer
from groundup.models.gpt import GPT, GPTConfig

PATHS = {  # name -> LMScorer options (batch_size filled in from --batch-size)
    "(a) one at a time": {"batch_size": 1, "use_cache": False},
    "(b) batched": {"use_cache": False},
    "(c) batched + KV cache": {"use_cache": True},
}


def questions(n: int, seed: int = 0) -> tuple[Tokenizer, list[tuple[str, list[str]]]]:
    """The tokenizer and n (context, 4 choices) made of pydocs text."""
    docs = [d for d in iter_documents("pydocs") if len(d) > 400]
    tok = Tokenizer.train(docs, kind="bpe", vocab_size=4096)
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        doc = rng.choice(docs)
        words = doc.split()
        start = rng.randrange(max(1, len(words) - 80))
        context = " ".join(words[start : start + rng.randint(25, 45)]) + "\nAnswer:"
        choices = []
        for _ in range(4):
            other = rng.choice(docs).split()
            at = rng.randrange(max(1, len(other) - 8))
            choices.append(" " + " ".join(other[at : at + rng.randint(1, 6)]))
        out.append((context, choices))
    return tok, out


def measure(model: GPT, tok: Tokenizer, qs, options: dict, repeats: int) -> dict:
    scorer = LMScorer(model, tok, device="cpu", **options)
    reqs = [(c, choice) for c, choices in qs for choice in choices]
    scorer.loglikelihood(reqs[:8])  # warm-up
    forwards = []
    hook = model.blocks[0].register_forward_hook(lambda m, a, o: forwards.append(o.shape[0]))
    best = float("inf")
    for _ in range(repeats):
        forwards.clear()
        start = time.perf_counter()
        scores = scorer.loglikelihood(reqs)
        best = min(best, time.perf_counter() - start)
    hook.remove()
    return {"seconds": best, "forwards": len(forwards), "scores": [s for s, _ in scores]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per path (best kept)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--json", help="save the figures to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tok, qs = questions(args.questions)
    torch.manual_seed(0)
    config = GPTConfig(
        flavour="gpt2", n_layer=4, n_head=4, n_embd=256, block_size=128, vocab_size=4096,
        activation="gelu",
    )  # fmt: skip
    model = GPT(config).eval()
    lengths = [len(tok.encode(c)) for c, _ in qs]
    print(
        f"{len(qs)} questions x 4 choices, contexts of {min(lengths)}-{max(lengths)} tokens, "
        f"GPT {model.num_params() / 1e6:.1f}M params, batch_size {args.batch_size}, "
        f"{torch.get_num_threads()} threads, fp32 CPU"
    )
    results = {}
    for name, options in PATHS.items():
        opts = {"batch_size": args.batch_size, **options}
        results[name] = measure(model, tok, qs, opts, args.repeats)
    base = results["(a) one at a time"]
    print(f"{'path':<24}{'forwards':>9}{'questions/s':>13}{'vs (a)':>8}{'max |diff| nats':>17}")
    figures = {}
    for name, r in results.items():
        rate = len(qs) / r["seconds"]
        diff = max(abs(a - b) for a, b in zip(r["scores"], base["scores"]))
        ratio = base["seconds"] / r["seconds"]
        print(f"{name:<24}{r['forwards']:>9}{rate:>13.1f}{ratio:>7.2f}x{diff:>17.2e}")
        figures[name] = {"questions_per_s": rate, "ratio_vs_a": ratio, "max_abs_diff": diff,
                         "forwards": r["forwards"]}  # fmt: skip
        assert diff < 1e-3, f"{name} disagrees with (a) by {diff} nats"
        picks = [max(range(4), key=lambda j: r["scores"][4 * q + j]) for q in range(len(qs))]
        base_picks = [
            max(range(4), key=lambda j: base["scores"][4 * q + j]) for q in range(len(qs))
        ]
        assert picks == base_picks, f"{name} picks other answers than (a)"
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
