#!/usr/bin/env bash
# Distributed check on a machine with >= 1 CUDA GPU (under 5 minutes): DDP and FSDP2 tiny
# pretrains through torchrun, loss equivalence with one process, and checkpoint resume with
# another number of ranks. Prints one PASS/FAIL line per check; exits 1 if any failed.
#
#   bash benchmarks/gpu_check.sh            # from the repository root
#
# With 1 GPU: FSDP2 (bf16 params, fp32 reduce, activation checkpointing) on 1 rank, plus the
# 2-rank multi-rank path on CPUs (gloo) whose sharded checkpoint then resumes on the GPU.
# With >= 2 GPUs: DDP and FSDP2 on 2 GPUs (nccl) against one process, and a 2-GPU FSDP2
# checkpoint resumed on 1 GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
PY=${PYTHON:-python3}
WORK=$(mktemp -d /tmp/gu-gpu-check.XXXXXX)
NGPU=$($PY -c "import torch; print(torch.cuda.device_count())")
echo "torch $($PY -c 'import torch; print(torch.__version__)'), $NGPU GPU(s), work dir $WORK"
FAILED=0

# configs: a tiny GPT on repetitive sentences (char tokenizer), shards shared by every run
$PY - "$WORK" <<'EOF'
import random, sys, yaml
from pathlib import Path
work = Path(sys.argv[1])
rng = random.Random(0)
words = [["the cat", "a dog", "my friend", "the old man"], ["sat on", "looked at", "ran to"],
         ["the mat", "the red door", "a tall tree", "the river"]]
(work / "corpus.txt").write_text("\n".join(" ".join(rng.choice(w) for w in words) + "."
                                           for _ in range(2000)) + "\n")
def config(name, device, precision, strategy, ac=False, steps=20, batch=16):
    cfg = {
        "run_dir": str(work / name), "seed": 0,
        "data": {"source": str(work / "corpus.txt"), "shards_dir": str(work / "shards")},
        "tokenizer": {"kind": "char"},
        "model": {"flavour": "llama", "n_layer": 4, "n_head": 4, "n_kv_head": 2, "n_embd": 128,
                  "block_size": 64},
        "optim": {"name": "adamw", "lr": 3e-3, "schedule": "cosine", "warmup_steps": 5},
        "train": {"max_steps": steps, "batch_size": batch, "eval_every": 1000, "eval_batches": 4,
                  "log_every": 1, "checkpoint_every": 10, "keep_last": None,
                  "precision": precision, "device": device},
        "sample": {"prompt": "the", "max_new_tokens": 10},
        "distributed": {"strategy": strategy, "activation_checkpointing": ac},
    }
    (work / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
config("cpu_ref", "cpu", "fp32", "auto")
# batch 16 is the global batch: 2 ranks train on 8 sequences each (slices of the same draw)
config("cpu_fsdp2", "cpu", "fp32", "fsdp")
config("cpu_ddp2", "cpu", "fp32", "ddp")
config("gpu_ref", "cuda", "bf16", "auto")
config("gpu_fsdp", "cuda", "bf16", "fsdp", ac=True)
config("gpu_ddp", "cuda", "bf16", "ddp")
config("gpu_fsdp2", "cuda", "bf16", "fsdp", ac=True)
config("gpu_fp32_resume", "cuda", "fp32", "fsdp")
EOF

run() {  # run NAME NPROC [ARGS...]: NPROC 0 = one plain process
  local name=$1 nproc=$2; shift 2
  local cmd=($PY -m groundup pretrain "$WORK/$name.yaml" "$@")
  [ "$nproc" -gt 0 ] && cmd=($PY -m torch.distributed.run --standalone --nproc_per_node "$nproc" -m groundup pretrain "$WORK/$name.yaml" "$@")
  if "${cmd[@]}" >"$WORK/$name.log" 2>&1; then return 0; fi
  echo "FAIL $name exited non-zero; last lines of $WORK/$name.log:"; tail -15 "$WORK/$name.log"
  FAILED=1; return 1
}

rewind() {  # rewind SRC DST STEP: a copy of run SRC as if killed after its step-STEP checkpoint
  $PY - "$WORK" "$@" <<'EOF'
import json, shutil, sys, yaml
from pathlib import Path
work, src, dst, step = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
shutil.rmtree(work / dst, ignore_errors=True)
shutil.copytree(work / src, work / dst)
ck = work / dst / "checkpoints"
for child in ck.iterdir():
    if child.name.startswith("step-") and int(child.name[5:]) > step:
        shutil.rmtree(child)
(ck / "latest").write_text(f"step-{step:08d}\n")
# resume compares configs: the copy says it was run DST (new run_dir; device and precision
# are where it runs, the training is the same)
target = yaml.safe_load((work / f"{dst}.yaml").read_text())
def patch(cfg):
    cfg["run_dir"] = target["run_dir"]
    for key in ("device", "precision"):
        cfg["train"][key] = target["train"][key]
    return cfg
saved = yaml.safe_load((work / dst / "config.yaml").read_text())
(work / dst / "config.yaml").write_text(yaml.safe_dump(patch(saved)))
state_file = ck / f"step-{step:08d}" / "state.json"
state = json.loads(state_file.read_text())
state["config"] = patch(state["config"])
state_file.write_text(json.dumps(state))
EOF
}

COMPARE='
import json, sys
from pathlib import Path
work, a, b, tol, name = Path(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5]
def losses(run):
    rows = [json.loads(l) for l in (work / run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r.get("event") == "train"}
la, lb = losses(a), losses(b)
assert sorted(la) == sorted(lb) and la, f"{name}: steps differ {sorted(la)} vs {sorted(lb)}"
worst = max(abs(la[s] - lb[s]) / max(abs(la[s]), 1e-9) for s in la)
ok = worst <= tol
print(f"{name}: max relative loss gap {worst:.2e} over {len(la)} steps (tolerance {tol:g})")
sys.exit(0 if ok else 1)
'
compare_py() { if out=$($PY -c "$COMPARE" "$WORK" "$@" 2>&1); then echo "PASS $out"; else echo "FAIL $out"; FAILED=1; fi; }

# ---- the CPU multi-rank path (gloo), fp32: must equal one process to 1e-5 -----------------
run cpu_ref 0 && run cpu_ddp2 2 && compare_py cpu_ref cpu_ddp2 1e-5 "ddp 2 CPU ranks vs 1 process"
run cpu_fsdp2 2 && compare_py cpu_ref cpu_fsdp2 1e-5 "fsdp 2 CPU ranks vs 1 process"

# ---- GPUs ---------------------------------------------------------------------------------
run gpu_ref 0
if [ "$NGPU" -ge 2 ]; then
  run gpu_ddp 2 && compare_py gpu_ref gpu_ddp 2e-2 "ddp 2 GPUs (nccl, bf16 autocast) vs 1 GPU"
  run gpu_fsdp2 2 && compare_py gpu_ref gpu_fsdp2 3e-2 "fsdp 2 GPUs (bf16 params, fp32 reduce, AC) vs 1 GPU"
  # 2-GPU sharded checkpoint at step 10 resumed on 1 GPU (FSDP2 over 1 rank)
  rewind gpu_fsdp2 gpu_fsdp 10 && run gpu_fsdp 1 --resume \
    && compare_py gpu_fsdp2 gpu_fsdp 3e-2 "fsdp checkpoint of 2 GPUs resumed on 1 GPU"
else
  # FSDP2 on the GPU: bf16 params / fp32 reduce, activation checkpointing, DCP checkpoints
  run gpu_fsdp 1 && compare_py gpu_ref gpu_fsdp 3e-2 "fsdp 1 GPU (bf16 params, fp32 reduce, AC) vs autocast bf16"
  # the 2-rank CPU sharded checkpoint (step 10) resumed on 1 GPU with FSDP2: another rank
  # count and another device, fp32 both sides
  rewind cpu_fsdp2 gpu_fp32_resume 10 && run gpu_fp32_resume 1 --resume \
    && compare_py cpu_fsdp2 gpu_fp32_resume 1e-4 "fsdp checkpoint of 2 CPU ranks resumed on 1 GPU"
fi
# the gathered final model is one safetensors file that loads into a plain GPT
if $PY -c "
from groundup.models.folders import load_model_dir
load_model_dir('$WORK/gpu_fsdp', device='cuda')
load_model_dir('$WORK/cpu_fsdp2', device='cpu')
" >"$WORK/load.log" 2>&1; then echo "PASS final model/ of the FSDP runs loads into a plain GPT"
else echo "FAIL final model/ of an FSDP run does not load:"; tail -5 "$WORK/load.log"; FAILED=1; fi

# ---- the pytest file (2-process gloo tests) under this torch ----------------------------------
if $PY -m pytest -q -p no:cacheprovider tests/test_distributed.py >"$WORK/pytest.log" 2>&1; then
  echo "PASS tests/test_distributed.py: $(tail -1 "$WORK/pytest.log")"
else
  echo "FAIL tests/test_distributed.py:"; tail -20 "$WORK/pytest.log"; FAILED=1
fi
[ "$FAILED" -eq 0 ] && echo "ALL PASS" || echo "SOME CHECKS FAILED (logs in $WORK)"
exit "$FAILED"
