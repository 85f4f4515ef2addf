"""Requests/s and time to first token of `groundup serve`, with 1 and with 8 concurrent clients.

The server runs in its own process (as in use) and the clients are threads of the official
openai client, each request streamed so that the first token's arrival is seen. The model is a
run given with --run, or a random-weight GPT of configs/pretrain-pydocs.yaml's shape (gpt2
flavour, 4 layers x 256, block 128, a 4096-token BPE trained here on the pydocs corpus):
speed does not depend on what the weights know.

One worker answers the requests in turn, so 8 clients share one model: requests/s stays about
the same, and the time to first token grows with the queue (each waits for those before it).

    python benchmarks/bench_serve.py [--run RUN] [--requests 16] [--max-tokens 32] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["The list", "A dictionary maps", "Return the", "The json module", "An iterator is"]


def random_pydocs_run(folder: Path) -> Path:
    """A model folder of the pydocs config's shape, with random weights."""
    from groundup.data.corpus import iter_documents
    from groundup.data.tokenizers import Tokenizer
    from groundup.models.folders import save_model_dir
    from groundup.models.gpt import GPT, GPTConfig

    spec = yaml.safe_load((ROOT / "configs" / "pretrain-pydocs.yaml").read_text())
    docs = [d for d in iter_documents("pydocs") if len(d) > 400]
    tok = Tokenizer.train(docs, kind="bpe", vocab_size=spec["tokenizer"]["vocab_size"])
    torch.manual_seed(0)
    fields = {k: v for k, v in spec["model"].items() if k != "dropout"}
    save_model_dir(folder / "model", GPT(GPTConfig(vocab_size=tok.vocab_size, **fields)), tok)
    return folder


def start(run: Path, log: Path) -> tuple[subprocess.Popen, str]:
    code = (
        "from groundup.jobs.serve import run_serve; "
        f"run_serve({str(run)!r}, port=0, log_level='warning')"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=log.open("w"), stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        text = log.read_text()
        if " at http://" in text:
            return proc, text.split(" at ", 1)[1].split()[0]
        if proc.poll() is not None:
            raise SystemExit(f"the server exited:\n{text}")
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"the server did not start:\n{log.read_text()}")


def one_request(client, model: str, i: int, max_tokens: int) -> dict:
    """A streamed completion: seconds to the first text, seconds in all, tokens."""
    t0 = time.perf_counter()
    first, tokens = None, 0
    stream = client.completions.create(
        model=model,
        prompt=PROMPTS[i % len(PROMPTS)],
        max_tokens=max_tokens,
        temperature=0.8,
        seed=i,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].text:
            first = time.perf_counter() - t0
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    total = time.perf_counter() - t0
    return {"ttft": total if first is None else first, "latency": total, "tokens": tokens}


def measure(client, model: str, clients: int, requests: int, max_tokens: int) -> dict:
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        done = list(pool.map(lambda i: one_request(client, model, i, max_tokens), range(requests)))
    wall = time.perf_counter() - t0
    ttft = sorted(d["ttft"] for d in done)
    return {
        "clients": clients,
        "requests": requests,
        "wall_s": wall,
        "requests_per_s": requests / wall,
        "tokens_per_s": sum(d["tokens"] for d in done) / wall,
        "ttft_p50_ms": 1000 * statistics.median(ttft),
        "ttft_p90_ms": 1000 * ttft[min(len(ttft) - 1, int(0.9 * len(ttft)))],
        "latency_p50_ms": 1000 * statistics.median(d["latency"] for d in done),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=None, help="a run to serve (default: random pydocs GPT)")
    parser.add_argument("--requests", type=int, default=16, help="requests per setting")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args()
    import openai

    from groundup.serve.engine import default_name

    with tempfile.TemporaryDirectory() as tmp:
        run = Path(args.run) if args.run else random_pydocs_run(Path(tmp) / "pydocs-random")
        proc, url = start(run, Path(tmp) / "serve.log")
        try:
            client = openai.OpenAI(api_key="none", base_url=url, max_retries=0, timeout=600)
            name = default_name(run)
            one_request(client, name, 0, 4)  # warm-up
            rows = [measure(client, name, c, args.requests, args.max_tokens) for c in (1, 8)]
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(
        f"groundup serve on {run} ({args.requests} streamed requests of {args.max_tokens} tokens)"
    )
    head = f"{'clients':>7} {'req/s':>7} {'tok/s':>7} {'TTFT p50':>9} {'TTFT p90':>9} {'latency p50':>12}"
    print(head)
    for r in rows:
        print(
            f"{r['clients']:>7} {r['requests_per_s']:>7.2f} {r['tokens_per_s']:>7.1f} "
            f"{r['ttft_p50_ms']:>7.0f}ms {r['ttft_p90_ms']:>7.0f}ms {r['latency_p50_ms']:>10.0f}ms"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
