"""Fine-tuning on a GPU (bf16 autocast, CUDA): SFT with LoRA and full, a BERT classifier, the
run folders reloaded and exported to transformers. Prints PASS/FAIL lines; about a minute.

    PYTHONPATH=$PWD python3 benchmarks/gpu_finetune_check.py
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from groundup.config import from_dict
from groundup.data.tokenizers import Tokenizer
from groundup.jobs.evaluate import run_evaluate
from groundup.jobs.export import run_export
from groundup.jobs.finetune import FinetuneConfig, run_finetune
from groundup.models.folders import load_model, save_model_dir
from groundup.models.gpt import GPT, GPTConfig

FAILED: list[str] = []


def check(name: str, ok: bool, detail: str) -> None:
    print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)
    if not ok:
        FAILED.append(name)


def main() -> None:
    device = sys.argv[1] if len(sys.argv) > 1 else "cuda"  # "cpu" to try the script itself
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device: this check is for a GPU machine")
    root = Path(tempfile.mkdtemp(prefix="gu-ft-gpu-"))
    tok = Tokenizer.train(None, kind="bytes")
    torch.manual_seed(0)
    cfg = GPTConfig(n_layer=4, n_head=4, n_embd=128, block_size=128, vocab_size=tok.vocab_size)
    save_model_dir(root / "base" / "model", GPT(cfg), tok)
    rows = [
        {"prompt": f"add {a} and {b}", "response": str(a + b)} for a in range(40) for b in range(20)
    ]
    data = root / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    base_loss = run_evaluate(root / "base", data, device=device, task="sft", verbose=0)["loss"]
    for method, lr in (("lora", 3e-3), ("full", 1e-3)):
        run = root / method
        ft = from_dict(
            FinetuneConfig,
            {
                "run_dir": str(run),
                "task": "sft",
                "method": method,
                "base": {"path": str(root / "base")},
                "data": {"train": str(data), "packing": True},
                "optim": {"name": "adamw", "lr": lr},
                "train": {"epochs": 3, "batch_size": 32, "device": device},
            },
        )
        start = time.perf_counter()
        res = run_finetune(None, config=ft, verbose=0)
        wall = time.perf_counter() - start
        again = run_evaluate(run, data, device=device, verbose=0)["loss"]
        check(
            f"sft {method} learns (auto precision)",
            again < base_loss - 1.0,
            f"loss on the data {base_loss:.3f} -> {again:.3f}, {res['steps']} steps, {wall:.1f} s",
        )
        out = run_export(run, root / f"{method}-hf", verbose=0)
        import transformers

        hf = transformers.AutoModelForCausalLM.from_pretrained(str(out)).to(device).eval()
        ours = load_model(run).model.to(device).eval()
        x = torch.tensor([list(b"add 3 and 4")], device=device)
        with torch.no_grad():
            diff = (hf(input_ids=x).logits - ours(x)).abs().max().item()
        check(f"sft {method} export == transformers (fp32)", diff < 1e-3, f"max diff {diff:.2e}")
    print("FAILED: " + ", ".join(FAILED) if FAILED else "ALL PASS", flush=True)
    sys.exit(1 if FAILED else 0)


if __name__ == "__main__":
    main()
