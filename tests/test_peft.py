"""PEFT-format LoRA adapters: a groundup LoRA run's adapter loads with
`peft.PeftModel.from_pretrained` onto the Hugging Face export of its base and gives the merged
export's logits; PEFT adapters (ours and peft's own) load back onto our GPT; bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from groundup.config import from_dict
from groundup.data.tokenizers import Tokenizer
from groundup.errors import CheckpointError, ConfigError, MissingFileError
from groundup.finetune.lora import LoRALinear
from groundup.interop.peft_adapter import export_peft, load_peft_adapter
from groundup.jobs.export import run_export
from groundup.jobs.finetune import FinetuneConfig, run_finetune
from groundup.models.folders import load_model, save_model_dir
from groundup.models.gpt import GPT, GPTConfig

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

SHAPES = {
    "gpt2": dict(flavour="gpt2", n_layer=2, n_head=2, n_embd=32, block_size=64),
    "llama": dict(flavour="llama", n_layer=2, n_head=4, n_kv_head=2, n_embd=32, block_size=64),
}
TARGETS = {
    "gpt2": ["*.attn.qkv", "*.attn.proj", "*.mlp.up", "blocks.1.mlp.down"],  # one layer only
    "llama": ["*.attn.qkv", "*.attn.proj", "*.mlp.gate", "*.mlp.up", "*.mlp.down"],
}
IDS = torch.tensor([list(b"add 3 and 4")])


@pytest.fixture(scope="module", params=list(SHAPES))
def runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny base run, a LoRA SFT run on it, and the base's and the run's exports."""
    flavour = request.param
    root = tmp_path_factory.mktemp(flavour)
    tok = Tokenizer.train(None, kind="bytes")
    torch.manual_seed(0)
    save_model_dir(root / "base" / "model", GPT(GPTConfig(vocab_size=320, **SHAPES[flavour])), tok)
    rows = [{"prompt": f"add {a} and {a + 1}", "response": str(2 * a + 1)} for a in range(16)]
    train = root / "train.jsonl"
    train.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    cfg = from_dict(
        FinetuneConfig,
        {
            "run_dir": str(root / "lora"),
            "task": "sft",
            "method": "lora",
            "base": {"path": str(root / "base")},
            "lora": {"targets": TARGETS[flavour], "rank": 4, "alpha": 12},
            "data": {"train": str(train)},
            "optim": {"name": "adamw", "lr": 2e-2},
            "train": {"max_steps": 3, "batch_size": 8, "device": "cpu", "precision": "fp32"},
        },
    )
    run_finetune(None, config=cfg, verbose=0)
    return {
        "flavour": flavour,
        "root": root,
        "lora": root / "lora",
        "base_hf": run_export(root / "base", root / "base-hf", format="hf", verbose=0),
        "merged_hf": run_export(root / "lora", root / "merged-hf", format="hf", verbose=0),
        "peft": run_export(root / "lora", root / "peft", format="peft", verbose=0),
    }


def hf_logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


def test_peft_loads_our_adapter_with_the_merged_logits(runs: dict) -> None:
    base = transformers.AutoModelForCausalLM.from_pretrained(str(runs["base_hf"])).eval()
    without = hf_logits(base)
    tuned = peft.PeftModel.from_pretrained(base, str(runs["peft"])).eval()
    merged = transformers.AutoModelForCausalLM.from_pretrained(str(runs["merged_hf"])).eval()
    got, want = hf_logits(tuned), hf_logits(merged)
    assert (got - want).abs().max() < 1e-4
    assert (got - without).abs().max() > 1e-3  # the adapter does change the model
    with torch.no_grad():
        ours = load_model(runs["lora"]).model(IDS)
    assert (got - ours).abs().max() < 1e-4
    n_layers = len(
        [n for n, m in tuned.named_modules() if type(m).__name__ == "Linear" and "lora_A" in n]
    )
    assert n_layers > 0


def test_adapter_config_is_peft_layout(runs: dict) -> None:
    folder = runs["peft"]
    assert sorted(p.name for p in folder.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM"
    assert (config["r"], config["lora_alpha"]) == (4, 12)
    gpt2 = runs["flavour"] == "gpt2"
    assert config["fan_in_fan_out"] is gpt2  # GPT-2's Conv1D layers
    if gpt2:  # mlp.c_proj only in layer 1: named in full; the rest by suffix
        assert config["target_modules"] == [
            "attn.c_attn",
            "attn.c_proj",
            "mlp.c_fc",
            "transformer.h.1.mlp.c_proj",
        ]
    else:
        assert config["target_modules"] == [
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
        ]
    assert config["base_model_name_or_path"] == str((runs["root"] / "base" / "model").resolve())
    from safetensors.torch import load_file

    keys = load_file(str(folder / "adapter_model.safetensors"))
    assert all(k.startswith("base_model.model.") for k in keys)
    assert all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in keys)


def test_our_adapter_round_trips_onto_our_gpt(runs: dict) -> None:
    trained = load_model(runs["lora"]).model
    fresh = load_model(runs["root"] / "base").model
    names = load_peft_adapter(fresh, runs["peft"])
    layers = {n: m for n, m in fresh.named_modules() if isinstance(m, LoRALinear)}
    want = {n: m for n, m in trained.named_modules() if isinstance(m, LoRALinear)}
    assert names == list(layers) == list(want)
    for name, layer in layers.items():  # q/k/v share A: fused back to rank 4 exactly
        assert layer.rank == 4 and layer.alpha == 12
        assert torch.equal(layer.lora_a, want[name].lora_a)
        assert torch.equal(layer.lora_b, want[name].lora_b)
    trainable = {n for n, p in fresh.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(("lora_a", "lora_b")) for n in trainable)


def test_peft_made_adapter_loads_onto_our_gpt(runs: dict, tmp_path: Path) -> None:
    """An adapter peft itself made on the Hugging Face base (random A and B, separate q and v
    adapters of another rank than o_proj): our GPT with it computes peft's logits."""
    gpt2 = runs["flavour"] == "gpt2"
    base = transformers.AutoModelForCausalLM.from_pretrained(str(runs["base_hf"])).eval()
    targets = ["c_attn", "c_fc"] if gpt2 else ["q_proj", "v_proj", "o_proj", "up_proj"]
    pattern = {"c_fc": 2} if gpt2 else {"o_proj": 2}
    config = peft.LoraConfig(
        r=3,
        lora_alpha=6,
        target_modules=targets,
        rank_pattern=pattern,  # per-layer rank: alpha / r differs, folded into B
        init_lora_weights=False,  # random B too, so the adapter changes the logits
        fan_in_fan_out=gpt2,
    )
    torch.manual_seed(0)
    tuned = peft.get_peft_model(base, config).eval()
    want = hf_logits(tuned)
    tuned.save_pretrained(str(tmp_path / "adapter"))

    ours = load_model(runs["root"] / "base").model
    with torch.no_grad():
        before = ours(IDS)
    names = load_peft_adapter(ours, tmp_path / "adapter")
    with torch.no_grad():
        got = ours(IDS)
    assert (got - want).abs().max() < 1e-4
    assert (got - before).abs().max() > 1e-3
    assert len({m.rank for m in ours.modules() if isinstance(m, LoRALinear)}) == 1
    if not gpt2:  # separate q and v adapters (k absent): rank 3 + 3 on the fused qkv
        assert ours.get_submodule("blocks.0.attn.qkv").rank == 6
        assert "blocks.0.attn.proj" in names


def test_bad_input(runs: dict, tmp_path: Path) -> None:
    base = runs["root"] / "base"
    with pytest.raises(ConfigError, match="LoRA fine-tune run"):
        run_export(base, tmp_path / "p", format="peft", verbose=0)
    with pytest.raises(ConfigError, match="no LoRA adapters"):
        export_peft(load_model(base).model, tmp_path / "p")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        run_export(runs["lora"], tmp_path / "busy", format="peft", verbose=0)
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"

    model = load_model(base).model
    with pytest.raises(MissingFileError):
        load_peft_adapter(model, tmp_path / "nowhere")
    # an adapter for another model: a module this GPT does not have
    bad = tmp_path / "bad"
    bad.mkdir()
    config = json.loads((runs["peft"] / "adapter_config.json").read_text())
    (bad / "adapter_config.json").write_text(json.dumps(config))
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(runs["peft"] / "adapter_model.safetensors"))
    renamed = {k.replace(".0.", ".7.", 1): v for k, v in tensors.items()}
    save_file(renamed, str(bad / "adapter_model.safetensors"))
    with pytest.raises(CheckpointError, match="does not have"):
        load_peft_adapter(model, bad)
    # an option LoRALinear does not implement
    (bad / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    save_file(tensors, str(bad / "adapter_model.safetensors"))
    with pytest.raises(ConfigError, match="use_dora"):
        load_peft_adapter(model, bad)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())  # left unchanged
