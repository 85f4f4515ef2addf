"""What `groundup pretrain` trains, by `objective`: the model, its batches, its folder, its sample.

- clm: a GPT predicting the next token of random windows (the model folder is groundup's own
  `model/`, read by generate, finetune and export);
- mlm: a BERT predicting masked tokens (`groundup.data.masking`: dynamic masks on training
  windows, one fixed mask on validation), scored by masked-token accuracy; its `model/` is a
  Hugging Face BertForMaskedLM folder, which finetune (`base.path: RUN`) and transformers read.

Everything else (tokenizer, shards, Trainer, checkpoints, resume, ranks) is the same job.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from groundup.config import from_dict
from groundup.data.windows import RandomWindows, SequentialWindows
from groundup.errors import ConfigError
from groundup.registry import lookup

OBJECTIVES = ("clm", "mlm")


def model_config(objective: str, model: dict[str, Any], vocab_size: int) -> Any:
    """GPTConfig (clm) or BertConfig (mlm) from the `model:` mapping: an optional preset plus
    typed fields; vocab_size defaults to the tokenizer's (a BPE one padded to a multiple of 64)."""
    from groundup.models import bert, gpt

    family = bert if objective == "mlm" else gpt
    config_class = family.BertConfig if objective == "mlm" else family.GPTConfig
    fields = dict(model)
    preset = fields.pop("preset", None)
    # lookup: case-insensitive, and an unknown name gets "did you mean" (not a KeyError)
    kind = "BERT preset (objective mlm)" if objective == "mlm" else "model preset"
    base = dict(lookup(family.PRESETS, preset, kind)) if preset is not None else {}
    if "vocab_size" not in fields:
        fields["vocab_size"] = vocab_size if vocab_size <= 256 else 64 * math.ceil(vocab_size / 64)
    return from_dict(config_class, {**base, **fields}, prefix="model.")


def sequence_length(objective: str, config: Any, mlm: Any) -> int:
    """Tokens per training sequence: the GPT's block_size, or mlm.seq_len (default: the
    BERT's positions), which must fit the model's position table."""
    if objective != "mlm" or mlm.seq_len is None:
        return config.block_size
    if mlm.seq_len > config.block_size:
        raise ConfigError(
            f"mlm.seq_len {mlm.seq_len} is above the model's {config.block_size} positions "
            f"(model.block_size); lower mlm.seq_len or raise model.block_size"
        )
    return mlm.seq_len


@dataclass
class Objective:
    """The objective-specific parts of a pretraining run."""

    name: str
    model: nn.Module
    seq_len: int
    metrics: list[str] = field(default_factory=list)
    masker: Any = None  # mlm: the TokenMasker of the training batches

    def windows_length(self) -> int:
        """Stream tokens per window ([CLS] takes one position under mlm)."""
        return self.seq_len - 1 if self.name == "mlm" else self.seq_len

    def train_data(
        self, index: Any, batch_size: int, seed: int, device: Any, rank: int, world: int
    ) -> Any:
        windows = RandomWindows(
            index.train,
            self.windows_length(),
            batch_size,
            seed=seed,
            device=device,
            rank=rank,
            world_size=world,
        )
        if self.masker is None:
            return windows
        from groundup.data.masking import MaskedWindows

        return MaskedWindows(windows, self.masker)

    def val_data(self, index: Any, batch_size: int, device: Any, val_masker: Any) -> Any:
        windows = SequentialWindows(index.val, self.windows_length(), batch_size, device=device)
        if val_masker is None:
            return windows
        from groundup.data.masking import MaskedSequentialWindows

        return MaskedSequentialWindows(windows, val_masker)

    def flops_per_sample(self) -> float:
        m = self.model if self.name == "clm" else self.model.bert
        n = sum(p.numel() for p in self.model.parameters())
        if self.name == "clm":
            return self.model.flops_per_token() * self.seq_len
        n -= m.pos_emb.weight.numel() + m.type_emb.weight.numel()  # looked up, not multiplied
        cfg = self.model.config
        return (6 * n + 12 * cfg.n_layer * cfg.n_embd * self.seq_len) * self.seq_len

    def save(self, folder: Path, tokenizer: Any, tensors: dict[str, torch.Tensor]) -> None:
        """The model folder (rank 0): groundup's GPT folder, or a Hugging Face BERT one."""
        if self.name == "clm":
            from groundup.models.folders import save_model_dir

            save_model_dir(folder, self.model, tokenizer, tensors)
            return
        from groundup.interop.hf_export import export_hf

        export_hf(_plain_copy(self.model, tensors), folder, tokenizer=tokenizer, overwrite=True)

    def sample(
        self, folder: Path, tokenizer: Any, sample: Any, device: Any, sharded: bool, stream: bool
    ) -> str:
        """A generated continuation (clm) or the prompt's [MASK] tokens filled in (mlm)."""
        if self.name == "clm":
            from groundup.generate import sample_text
            from groundup.models.folders import load_model_dir

            model = load_model_dir(folder, device)[0] if sharded else self.model
            return sample_text(model, tokenizer, sample, stream=stream)
        model = self.model
        if sharded:  # a sharded model cannot run alone on rank 0: fill in with the saved copy
            from groundup.models.folders import load_model

            model = load_model(folder).model.to(device)
        return fill_mask(model, tokenizer, sample.prompt, stream=stream)


def build_objective(cfg: Any, tokenizer: Any, model_cfg: Any, seq_len: int) -> Objective:
    """The model (seeded by the caller) and, for mlm, its masker."""
    if cfg.objective == "clm":
        from groundup.models.gpt import GPT

        return Objective("clm", GPT(model_cfg), seq_len)
    from groundup.data.masking import TokenMasker
    from groundup.models.bert import BertForMaskedLM

    masker = TokenMasker(cfg.mlm, tokenizer, model_cfg.vocab_size, seed=cfg.seed)
    return Objective("mlm", BertForMaskedLM(model_cfg), seq_len, ["accuracy"], masker)


def _plain_copy(model: nn.Module, tensors: dict[str, torch.Tensor]) -> nn.Module:
    """The model to export: itself, or (FSDP2) a fresh copy holding the gathered weights."""
    from groundup.checkpoint import in_dtype_of, load_tensors, unwrap

    plain = unwrap(model)
    if not any(type(p).__name__ == "DTensor" for p in plain.parameters()):
        return plain
    fresh = in_dtype_of(type(plain)(plain.config), tensors)
    load_tensors(fresh, tensors, "the gathered weights")
    return fresh


@torch.no_grad()
def fill_mask(model: nn.Module, tokenizer: Any, prompt: str, stream: bool = False) -> str:
    """`prompt` with each [MASK] replaced by the model's most likely token (no [MASK] in the
    prompt: its last word is masked). The space before a [MASK] belongs to the masked word (as
    in training, where [MASK] replaces a whole "Ġword" token)."""
    mask_id, cls_id = tokenizer.token_to_id("[MASK]"), tokenizer.token_to_id("[CLS]")
    if "[MASK]" not in prompt:
        head, _, _ = prompt.rstrip().rpartition(" ")
        prompt = f"{head} [MASK]" if head else "[MASK]"
    ids = [cls_id, *tokenizer.encode(re.sub(r"\s+\[MASK\]", "[MASK]", prompt), allow_special=True)]
    limit = model.config.block_size
    if len(ids) > limit:
        note = f"(sample.prompt cut to the model's {limit} positions) "
        ids = ids[:limit]
    else:
        note = ""
    was_training = model.training
    model.eval()
    x = torch.tensor([ids], device=next(model.parameters()).device)
    logits = model(x)[0].float()
    logits[:, tokenizer.vocab_size :] = -math.inf  # padded rows are never a token
    filled = [int(logits[i].argmax()) if t == mask_id else t for i, t in enumerate(ids)]
    model.train(was_training)
    text = tokenizer.decode(filled[1:])
    if stream:
        print(f"{note}{prompt} -> {text}", flush=True)
    return text
