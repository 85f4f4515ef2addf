"""Write groundup models as Hugging Face model folders that transformers loads as they are.

`export_hf(model, out)` writes config.json, model.safetensors and the tokenizer files that
`transformers.AutoModel*.from_pretrained(out)` and `AutoTokenizer.from_pretrained(out)` load,
giving the same logits. The tensor mapping lives in gpt_weights.py and bert_weights.py; the
folder names and architecture table are shared with the reader, hf_dir.py.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import Tensor, nn

from groundup.checkpoint import unwrap
from groundup.checkpoint.folders import swap_in
from groundup.data.tokenizers import TOKENIZER_FILE, Tokenizer
from groundup.errors import ConfigError
from groundup.interop.bert_weights import bert_config_to_hf, bert_state_dict_to_hf
from groundup.interop.gpt_weights import gpt_config_to_hf, state_dict_to_hf
from groundup.interop.hf_dir import (
    _BOS_NAMES,
    _GPT_PREFIX,
    _UNK_NAMES,
    CONFIG_FILE,
    EXPORT_MARKER,
    SAFETENSORS_FILE,
)
from groundup.models.bert import (
    Bert,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertForTokenClassification,
)
from groundup.models.gpt import GPT, GPTForSequenceClassification


def export_hf(
    model: nn.Module,
    out: str | os.PathLike[str],
    tokenizer: Tokenizer | None = None,
    labels: Sequence[str] | None = None,
    *,
    overwrite: bool = False,
    chat_template: Any = None,
) -> Path:
    """Write `model` as a Hugging Face folder: config.json, model.safetensors and, with a
    tokenizer, tokenizer.json + tokenizer_config.json + special_tokens_map.json.

    A GPT language model's tokenizer_config.json also gets `chat_template`, the Jinja string
    `AutoTokenizer.apply_chat_template` renders: `chat_template` (a name, a .jinja path, a
    Jinja string or a ChatTemplate: what an SFT run trained with) or, when None, the built-in
    template this tokenizer suits (`pick_template`), left out when the tokenizer cannot
    serve it (no end-of-text token for "plain").

    GPT -> GPT2LMHeadModel / LlamaForCausalLM / Qwen2ForCausalLM / Qwen3ForCausalLM /
    GemmaForCausalLM (options no family has, such as relu2 or logit_softcap, are refused
    naming the field); GPTForSequenceClassification
    -> *ForSequenceClassification; Bert -> BertModel; BertForMaskedLM; BertForSequenceClassification
    (pooling "cls"); BertForTokenClassification. LoRA adapters are merged into a copy (the
    caller's model is not changed). The folder is written beside `out` and renamed into place;
    a non-empty `out` that is not a previous export is refused unless overwrite=True.
    """
    out = Path(out)
    _check_target(out, overwrite)
    model = unwrap(model)
    has_lora = any(type(m).__name__ == "LoRALinear" for m in model.modules())
    if has_lora:
        from groundup.finetune.lora import merge_lora  # lazy: interop does not need LoRA otherwise

        model = merge_lora(copy.deepcopy(model))
    hf_config, tensors, block_size = _to_hf(model, labels)
    template = None
    if tokenizer is not None:
        tokenizer.check_fits(hf_config["vocab_size"])
        if isinstance(model, GPT):
            template = _chat_template(tokenizer, chat_template)
    _add_token_ids(hf_config, model, tokenizer)
    dtype = str(next(iter(tensors.values())).dtype).removeprefix("torch.")
    hf_config["dtype"] = hf_config["torch_dtype"] = dtype  # transformers >= 4.56 / older
    marker = {"format": "groundup.hf-export", "version": 1, "model": type(model).__name__}
    marker["merged_lora"] = has_lora

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; an export is meant to be shared
        save_file(_own_storage(tensors), str(tmp / SAFETENSORS_FILE), metadata={"format": "pt"})
        _write_json(tmp / CONFIG_FILE, hf_config)
        if tokenizer is not None:
            bert = hf_config["model_type"] == "bert"
            _write_tokenizer(tmp, tokenizer, bert, block_size, template)
        _write_json(tmp / EXPORT_MARKER, marker)
        swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _check_target(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"export target {out} is a file; pass a folder path")
    if (
        out.is_dir()
        and any(out.iterdir())
        and not (out / EXPORT_MARKER).is_file()
        and not overwrite
    ):
        raise ConfigError(
            f"export target {out} is not empty and is not a previous groundup export; pick an "
            "empty folder or pass overwrite=True (this deletes what is there)"
        )


_EXPORTABLE = (
    "GPT, GPTForSequenceClassification, Bert, BertForMaskedLM, "
    "BertForSequenceClassification, BertForTokenClassification"
)


def _to_hf(
    model: nn.Module, labels: Sequence[str] | None
) -> tuple[dict[str, Any], dict[str, Tensor], int]:
    """(config.json dict, HF-named tensors, block_size) for one of the exportable models."""
    num_labels = None
    if isinstance(model, GPTForSequenceClassification):
        cfg = model.config
        d = gpt_config_to_hf(cfg)
        d["architectures"] = [_GPT_PREFIX[d["model_type"]] + "ForSequenceClassification"]
        sd = state_dict_to_hf(model.gpt.state_dict(), cfg, lm_head=False)
        sd["score.weight"] = model.score.weight
        num_labels = model.num_labels
    elif isinstance(model, GPT):
        if model.lm_head is None:
            raise ConfigError(
                "this GPT has no lm_head (a classifier's trunk); export the "
                "GPTForSequenceClassification itself"
            )
        cfg = model.config
        d, sd = gpt_config_to_hf(cfg), state_dict_to_hf(model)
    elif isinstance(
        model, (Bert, BertForMaskedLM, BertForSequenceClassification, BertForTokenClassification)
    ):
        cfg = model.config
        if isinstance(model, BertForSequenceClassification) and model.pooling != "cls":
            raise ConfigError(
                f"BertForSequenceClassification with pooling {model.pooling!r} has no transformers "
                "class (it pools the first token through its pooler); train with pooling='cls', or "
                "export the encoder (export_hf(model.bert, ...)) and save model.classifier yourself"
            )
        d, sd = bert_config_to_hf(cfg), bert_state_dict_to_hf(model)
        arch = type(model).__name__
        d["architectures"] = ["BertModel" if arch == "Bert" else arch]
        num_labels = getattr(model, "num_labels", None)
    else:
        raise ConfigError(
            f"export_hf cannot write a {type(model).__name__}; it writes {_EXPORTABLE}"
        )
    if num_labels is None:
        if labels is not None:
            raise ConfigError(
                f"labels only apply to classifiers, not to a {type(model).__name__}; drop them"
            )
    else:
        names = (
            [f"LABEL_{i}" for i in range(num_labels)]
            if labels is None
            else [str(x) for x in labels]
        )
        if len(names) != num_labels or len(set(names)) != len(names):
            raise ConfigError(
                f"labels must be {num_labels} distinct names (one per classifier output), got "
                f"{len(names)}; pass one name per class, in class-id order"
            )
        d["id2label"] = {str(i): name for i, name in enumerate(names)}
        d["label2id"] = {name: i for i, name in enumerate(names)}
    return d, sd, cfg.block_size


def _add_token_ids(d: dict[str, Any], model: nn.Module, tok: Tokenizer | None) -> None:
    """bos/eos/pad ids for config.json; explicit nulls, so transformers' defaults (GPT-2's
    50256, ...) never point outside a small vocabulary."""
    bert = d["model_type"] == "bert"
    ids: dict[str, int | None] = {"pad_token_id": tok.pad_id if tok else None}
    if not bert:
        eos = tok.eot_id if tok else None
        bos = _first_id(tok, _BOS_NAMES) if tok else None
        ids.update(bos_token_id=eos if bos is None else bos, eos_token_id=eos)
    if isinstance(model, GPTForSequenceClassification):
        # transformers pools at the last token that is not pad_token_id: it must be ours
        if tok is not None and tok.pad_id is not None and tok.pad_id != model.pad_id:
            raise ConfigError(
                f"the classifier pools with pad_id {model.pad_id} but the tokenizer pads with "
                f"id {tok.pad_id}; build GPTForSequenceClassification with pad_id=tokenizer.pad_id"
            )
        ids["pad_token_id"] = model.pad_id
    if bert and ids["pad_token_id"] is None:
        ids.pop("pad_token_id")  # BertConfig's default 0 only sets the embedding's padding_idx
    d.update(ids)


def _first_id(tok: Tokenizer, names: Sequence[str]) -> int | None:
    return next((i for i in map(tok.token_to_id, names) if i is not None), None)


def _chat_template(tok: Tokenizer, spec: Any) -> str | None:
    """The Jinja text of the export's chat template (see export_hf), checked on this tokenizer."""
    from groundup.errors import TokenizerError
    from groundup.finetune.chat_templates import load_template, needs_eos, resolve_template

    if spec is None:
        tmpl = resolve_template("auto", tok)
        if needs_eos(tmpl) and tok.eot_id is None:
            return None  # the auto choice cannot serve this tokenizer: no template at all
        spec = tmpl
    try:
        return load_template(spec, tok).source
    except TokenizerError as e:
        raise ConfigError(f"cannot export the chat template: {e}") from None


def _write_tokenizer(
    folder: Path, tok: Tokenizer, bert: bool, block_size: int, chat_template: str | None = None
) -> None:
    text = _bert_tokenizer_json(tok) if bert else tok.to_json()
    (folder / TOKENIZER_FILE).write_text(text, encoding="utf-8")
    specials: dict[str, str] = {}

    def add(role: str, token_id: int | None) -> None:
        token = tok.id_to_token(token_id) if token_id is not None else None
        if token is not None:
            specials[role] = token

    if bert:
        for role, name in (("cls", "[CLS]"), ("sep", "[SEP]"), ("mask", "[MASK]")):
            add(f"{role}_token", tok.token_to_id(name))
        add("pad_token", tok.pad_id)
        add("unk_token", _first_id(tok, _UNK_NAMES))
    else:
        from groundup.finetune.chat_templates import template_tokens

        # the very strings SFT rendered its templates with: bos, eos, pad, unk
        specials.update(template_tokens(tok))
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": block_size,
        "clean_up_tokenization_spaces": False,
        **specials,
    }
    if chat_template is not None:
        config["chat_template"] = chat_template
    _write_json(folder / "tokenizer_config.json", config)
    _write_json(folder / "special_tokens_map.json", specials)


def _bert_tokenizer_json(tok: Tokenizer) -> str:
    """The tokenizer.json of a BERT export: transformers' tokenizer must give what the model
    was trained on, `[CLS] text [SEP]` (groundup adds them itself and encodes without special
    tokens), and `[MASK]` takes the space before it (a masked word's "Ġword" is one token).
    A tokenizer that already wraps its input (a WordPiece one from a BERT folder) is kept."""
    import json as _json

    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import processors

    spec = _json.loads(tok.to_json())
    kind = (spec.get("post_processor") or {}).get("type")
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    if kind in ("TemplateProcessing", "BertProcessing") or cls_id is None or sep_id is None:
        return tok.to_json()
    for added in spec.get("added_tokens", []):
        if added.get("content") == "[MASK]":
            added["lstrip"] = True
    hf = HFTokenizer.from_str(_json.dumps(spec))
    template = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    steps = [processors.ByteLevel(trim_offsets=False)] if kind == "ByteLevel" else []
    hf.post_processor = processors.Sequence([*steps, template]) if steps else template
    return hf.to_str()


def _write_json(file: Path, data: Any) -> None:
    file.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def _own_storage(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Contiguous CPU tensors, none sharing memory (safetensors refuses shared storage)."""
    seen: set[int] = set()
    out: dict[str, Tensor] = {}
    for key, t in tensors.items():
        t = t.detach().cpu().contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen and t.numel() > 0:
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        out[key] = t
    return out
