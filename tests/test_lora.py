"""LoRA: exact no-op at start, only adapters train, merge/unmerge/export, save/load, errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import groundup as gu
from groundup.errors import CheckpointError, ConfigError
from groundup.finetune.lora import (
    LoRALinear,
    apply_lora,
    load_lora,
    lora_state_dict,
    merge_lora,
    save_lora,
    trainable_parameters,
)
from groundup.models.gpt import GPT, GPTConfig

ATTN = ["*.attn.qkv", "*.attn.proj"]


def make_gpt(name: str = "gpt2-tiny", seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig.from_name(name)).eval()


def tokens(seed: int = 1, batch: int = 2, T: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 96, (batch, T), generator=g)


def randomize_b(model: nn.Module, seed: int = 2) -> None:
    """B starts at 0 (a no-op adapter): give it values so merge/save tests can fail."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_b.copy_(torch.randn(m.lora_b.shape, generator=g) * 0.1)


@pytest.mark.parametrize(
    "name,targets",
    [("gpt2-tiny", ATTN), ("llama-tiny", ATTN + ["*.mlp.gate", "*.mlp.up", "*.mlp.down"])],
)
def test_initial_output_equals_base(name, targets):
    base, model = make_gpt(name), make_gpt(name)
    x = tokens()
    replaced = apply_lora(model, targets, rank=4, alpha=8)
    assert replaced == [f"blocks.{i}.{t[2:]}" for i in range(2) for t in targets]
    assert all(isinstance(model.get_submodule(n), LoRALinear) for n in replaced)
    with torch.no_grad():
        assert torch.equal(model(x), base(x))


def test_state_dict_keeps_base_keys():
    base = make_gpt()
    model = make_gpt(seed=5)
    apply_lora(model, ATTN)
    keys = set(model.state_dict())
    assert set(base.state_dict()) <= keys  # 'blocks.0.attn.qkv.weight' etc. unchanged
    assert keys - set(base.state_dict()) == set(lora_state_dict(model))
    missing, unexpected = model.load_state_dict(base.state_dict(), strict=False)
    assert unexpected == [] and all(k.endswith((".lora_a", ".lora_b")) for k in missing)
    with torch.no_grad():
        assert torch.equal(model(tokens()), base(tokens()))


def test_only_adapters_train():
    model = make_gpt()
    apply_lora(model, ATTN, rank=4, alpha=8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-2)
    x = tokens()
    model.train()
    for _ in range(3):
        loss = nn.functional.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad()
    after = model.state_dict()
    adapter_keys = set(lora_state_dict(model))
    assert len(trainable) == len(adapter_keys) == 8
    for k, v in after.items():
        if k in adapter_keys:
            assert not torch.equal(v, before[k]), k
        else:
            assert torch.equal(v, before[k]), k  # bit-identical base weights


def test_merge_unmerge_and_merge_lora():
    model = make_gpt("llama-tiny")
    apply_lora(model, ATTN + ["*.mlp.down"], rank=4, alpha=8)
    randomize_b(model)
    x = tokens()
    with torch.no_grad():
        ref = model(x)
        qkv = model.blocks[0].attn.qkv
        w0 = qkv.weight.clone()
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.merge()
        assert qkv.merged
        expected_w = w0 + qkv.lora_b @ qkv.lora_a * (8 / 4)
        assert (qkv.weight - expected_w).abs().max() < 1e-6
        assert (model(x) - ref).abs().max() < 1e-5
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.unmerge()
        assert (qkv.weight - w0).abs().max() < 1e-6
        assert (model(x) - ref).abs().max() < 1e-5

        merged = merge_lora(model)
        assert merged is model
        assert not any(isinstance(m, LoRALinear) for m in model.modules())
        assert type(model.blocks[1].attn.qkv) is nn.Linear
        assert not any(k.endswith(("lora_a", "lora_b")) for k in model.state_dict())
        assert set(model.state_dict()) == set(make_gpt("llama-tiny").state_dict())
        assert (model(x) - ref).abs().max() < 1e-5


def test_bf16_autocast():
    model = make_gpt()
    apply_lora(model, ATTN, rank=4, alpha=8)
    randomize_b(model)
    x = tokens()
    with torch.no_grad():
        ref = model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        assert out.dtype == torch.bfloat16
        out.float().logsumexp(-1).mean().backward()
    qkv = model.blocks[0].attn.qkv
    assert qkv.lora_a.grad is not None and torch.isfinite(qkv.lora_a.grad).all()
    assert qkv.weight.grad is None  # frozen
    assert (out.float() - ref).abs().max() < 0.05


def test_save_load_round_trip(tmp_path):
    model = make_gpt("llama-tiny")
    apply_lora(model, ATTN, rank=4, alpha=8)
    randomize_b(model)
    x = tokens()
    with torch.no_grad():
        ref = model(x)
    out = save_lora(model, tmp_path / "adapter", {"base": "llama-tiny"})
    saved = load_file(str(out / "adapter.safetensors"))
    assert set(saved) == set(lora_state_dict(model))  # only adapter tensors
    assert all(k.endswith((".lora_a", ".lora_b")) for k in saved)
    meta = json.loads((out / "adapter_config.json").read_text())
    assert (meta["rank"], meta["alpha"], meta["config"]) == (4, 8.0, {"base": "llama-tiny"})
    assert meta["targets"] == ["blocks.0.attn.qkv", "blocks.0.attn.proj"] + [
        "blocks.1.attn.qkv",
        "blocks.1.attn.proj",
    ]

    fresh = make_gpt("llama-tiny")  # same base weights, no adapters
    with torch.no_grad():
        assert not torch.allclose(fresh(x), ref)
    assert load_lora(fresh, out) == meta["targets"]
    with torch.no_grad():
        assert torch.equal(fresh(x), ref)
    assert trainable_parameters(fresh)[0] == sum(t.numel() for t in saved.values())
    load_lora(fresh, out)  # into existing adapters (resume): same result
    with torch.no_grad():
        assert torch.equal(fresh(x), ref)


def test_load_mismatch_errors(tmp_path):
    model = make_gpt("llama-tiny")
    apply_lora(model, ATTN, rank=4, alpha=8)
    save_lora(model, tmp_path / "a")
    other = GPT(GPTConfig.from_name("llama-tiny", n_embd=64))
    with pytest.raises(CheckpointError, match="does not fit this model"):
        load_lora(other, tmp_path / "a")
    assert not any(isinstance(m, LoRALinear) for m in other.modules())  # left untouched
    shallow = GPT(GPTConfig.from_name("llama-tiny", n_layer=1))
    with pytest.raises(CheckpointError, match="blocks.1.attn.qkv"):
        load_lora(shallow, tmp_path / "a")
    ranked = make_gpt("llama-tiny")
    apply_lora(ranked, ATTN, rank=2, alpha=8)
    with pytest.raises(CheckpointError, match="rank 2"):
        load_lora(ranked, tmp_path / "a")
    with pytest.raises(gu.errors.MissingFileError, match="not found"):
        load_lora(make_gpt(), tmp_path / "nope")


def test_trainable_share_by_hand():
    model = make_gpt()
    assert trainable_parameters(model) == (30592, 30592)
    apply_lora(model, ATTN, rank=8, alpha=16)
    # gpt2-tiny: n_embd 32, n_layer 2, vocab 96, block 64, tied lm_head.
    # base: tok 96*32 + pos 64*32 + 2 * block(2*64 ln + 32*96+96 + 32*32+32 + 32*128+128
    #       + 128*32+32) + 64 final ln = 3072 + 2048 + 2*12704 + 64 = 30592
    # LoRA per block: qkv 8*32 + 96*8 = 1024, proj 8*32 + 32*8 = 512 -> 2 * 1536 = 3072
    trainable, total = trainable_parameters(model)
    assert (trainable, total) == (3072, 30592 + 3072)
    assert abs(trainable / total - 0.091255) < 1e-6  # 9.1% of the parameters


def test_no_match_and_bad_targets():
    model = make_gpt()
    with pytest.raises(ConfigError, match=r"did you mean '\*\.attn\.qkv'"):
        apply_lora(model, ["*.attn.qvk"])
    with pytest.raises(ConfigError, match=r"Linear modules: \*\.attn\.qkv"):
        apply_lora(model, ["qkv"])
    with pytest.raises(ConfigError, match="not an nn.Linear"):
        apply_lora(model, ["*.attn"])
    with pytest.raises(ConfigError, match="tied to tok_emb.weight"):
        apply_lora(model, ["lm_head"])
    with pytest.raises(ConfigError, match="non-empty list"):
        apply_lora(model, "*.attn.qkv")
    with pytest.raises(ConfigError, match="rank must be a positive integer"):
        apply_lora(model, ATTN, rank=0)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())  # nothing swapped
    assert all(p.requires_grad for p in model.parameters())
    assert apply_lora(model, [r"re:blocks\.1\.attn\.(qkv|proj)"]) == [
        "blocks.1.attn.qkv",
        "blocks.1.attn.proj",
    ]
    with pytest.raises(ConfigError, match="already has a LoRA adapter"):
        apply_lora(model, ["*.attn.qkv"])


def test_trainer_fit_only_adapters():
    model = make_gpt("llama-tiny")
    apply_lora(model, ATTN + ["*.mlp.up", "*.mlp.down"], rank=8, alpha=16)
    frozen = {k: v.clone() for k, v in model.state_dict().items() if "lora_" not in k}
    data = torch.randint(0, 96, (16, 17), generator=torch.Generator().manual_seed(0))
    batches = gu.TensorBatches(data[:, :-1], data[:, 1:], batch_size=8, seed=0)
    trainer = gu.Trainer(
        model,
        loss=gu.losses.SparseCategoricalCrossentropy(from_logits=True),
        optimizer="adamw",
        lr=1e-2,
        device="cpu",
        verbose=0,
    )
    history = trainer.fit(batches, epochs=15)
    losses = history.history["loss"]
    assert losses[-1] < losses[0] - 0.3
    for k, v in model.state_dict().items():
        if k in frozen:
            assert torch.equal(v, frozen[k]), k


def test_lora_linear_formula_and_dropout():
    torch.manual_seed(0)
    base = nn.Linear(6, 5)
    layer = LoRALinear(base, rank=3, alpha=6.0, dropout=0.5)
    assert layer.weight is base.weight and layer.bias is base.bias  # same Parameters, no copy
    with torch.no_grad():
        layer.lora_b.normal_()
    x = torch.randn(4, 6)
    expected = x @ base.weight.T + base.bias + (x @ layer.lora_a.T @ layer.lora_b.T) * 2.0
    layer.eval()  # dropout off
    assert (layer(x) - expected).abs().max() < 1e-5
    layer.train()
    torch.manual_seed(1)
    y = layer(x)
    assert not torch.allclose(y, expected)
    base_out = x @ base.weight.T + base.bias
    # dropout acts on the adapter's input only: zeroed inputs move the output toward base
    assert (y - base_out).abs().sum() < 2 * (expected - base_out).abs().sum() + 1e-3
