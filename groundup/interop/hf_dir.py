"""Hugging Face model directories: read one into groundup (export_hf in hf_export.py writes them).

`read_hf_dir(path)` reads config.json, the weights (model.safetensors, sharded safetensors,
or pytorch_model.bin only on opt-in: a pickle can run code) and tokenizer.json, checks that
we can compute exactly what transformers computes, and returns the weights in our naming.
`export_hf(model, out)` writes config.json, model.safetensors and the tokenizer files that
`transformers.AutoModel*.from_pretrained(out)` and `AutoTokenizer.from_pretrained(out)` load.

Supported: GPT-2, Llama, Mistral, Qwen2, Qwen3, Gemma (causal LM, base model, sequence
classifier) and BERT (base model, masked LM, sequence and token classifiers;
sentence-transformers folders are plain BertModel). The tensor mapping itself lives in gpt_weights.py and bert_weights.py.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from groundup.data.tokenizers import TOKENIZER_FILE, Tokenizer
from groundup.errors import CheckpointError, ConfigError, MissingFileError
from groundup.interop.bert_weights import (
    bert_config_from_hf,
    bert_state_dict_from_hf,
)
from groundup.interop.gpt_weights import (
    gpt_config_from_hf,
    state_dict_from_hf,
)
from groundup.models.bert import (
    Bert,
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertForTokenClassification,
)
from groundup.models.gpt import GPT, GPTConfig, GPTForSequenceClassification

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE_FILE = "pytorch_model.bin"
PICKLE_INDEX = "pytorch_model.bin.index.json"
EXPORT_MARKER = "groundup_export.json"  # tells a previous export apart from a user's folder

# model_type -> {architecture: task}. Tasks: causal_lm, base, seq_cls, token_cls, mlm.
_GPT_PREFIX = {
    "gpt2": "GPT2",
    "llama": "Llama",
    "mistral": "Mistral",
    "qwen2": "Qwen2",
    "qwen3": "Qwen3",
    "gemma": "Gemma",
}
ARCHITECTURES: dict[str, dict[str, str]] = {
    model_type: {
        ("GPT2LMHeadModel" if model_type == "gpt2" else f"{p}ForCausalLM"): "causal_lm",
        f"{p}Model": "base",
        f"{p}ForSequenceClassification": "seq_cls",
    }
    for model_type, p in _GPT_PREFIX.items()
}
ARCHITECTURES["bert"] = {
    "BertModel": "base",
    "BertForMaskedLM": "mlm",
    "BertForPreTraining": "mlm",  # its next-sentence head is dropped
    "BertForSequenceClassification": "seq_cls",
    "BertForTokenClassification": "token_cls",
}
_BOS_NAMES = ("<|begin_of_text|>", "<s>", "<bos>", "<|startoftext|>")
_UNK_NAMES = ("<unk>", "[UNK]", "<|unk|>")


@dataclass
class HFModel:
    """A Hugging Face directory read into groundup terms.

    state_dict is in our naming, for the groundup model `build()` makes: `GPT` (causal LM and
    base checkpoints), `GPTForSequenceClassification`, `Bert` (with a pooler when the file has
    one), `BertForMaskedLM`, `BertForSequenceClassification` (pooling "cls") or
    `BertForTokenClassification`. `task` says which.
    """

    family: str  # "gpt" | "bert"
    config: GPTConfig | BertConfig
    state_dict: dict[str, Tensor]
    tokenizer: Tokenizer | None
    hf_config: dict[str, Any]
    architecture: str
    labels: list[str] | None
    path: Path
    task: str = "causal_lm"  # causal_lm | base | seq_cls | token_cls | mlm
    pad_id: int | None = None  # config.json's pad_token_id (GPT classifiers pool with it)

    @property
    def num_labels(self) -> int | None:
        w = self.state_dict.get("score.weight", self.state_dict.get("classifier.weight"))
        return None if w is None else int(w.shape[0])

    def trunk_state_dict(self) -> dict[str, Tensor]:
        """The bare trunk's weights, whatever the head: `GPT` keys without lm_head.weight
        (load into `GPTForSequenceClassification(...).gpt`), or `Bert` keys with the pooler
        when the file has one (load into `model.bert`; strict=False if only one side has a
        pooler). This is where fine-tuning a new head starts."""
        out = {}
        for key, t in self.state_dict.items():
            for prefix in ("gpt.", "bert."):
                if key.startswith(prefix):
                    out[key[len(prefix) :]] = t
                    break
            else:
                if self.task in ("causal_lm", "base") and key != "lm_head.weight":
                    out[key] = t
        return out

    def build(self) -> nn.Module:
        """The matching groundup model with these weights loaded (strict), in eval mode."""
        n = self.num_labels
        model: nn.Module
        if self.family == "gpt":
            assert isinstance(self.config, GPTConfig)
            if self.task == "seq_cls":
                model = GPTForSequenceClassification(self.config, n or 1, self.pad_id)
            elif "lm_head.weight" not in self.state_dict:
                raise CheckpointError(
                    f"{self.path} holds a {self.architecture} without an LM head (untied "
                    "embeddings): it cannot generate; put a task head on it instead "
                    "(GPTForSequenceClassification(...).gpt.load_state_dict(trunk_state_dict()))"
                )
            else:
                model = GPT(self.config)
        else:
            assert isinstance(self.config, BertConfig)
            cfg = self.config
            if self.task == "mlm":
                model = BertForMaskedLM(cfg)
            elif self.task == "seq_cls":
                model = BertForSequenceClassification(cfg, n or 1, pooling="cls")
            elif self.task == "token_cls":
                model = BertForTokenClassification(cfg, n or 1)
            else:
                model = Bert(cfg, add_pooler="pooler.weight" in self.state_dict)
        model.load_state_dict(self.state_dict, strict=True)
        return model.eval()


# --------------------------------------------------------------------------------- reading


def read_hf_dir(path: str | os.PathLike[str], *, allow_pickle: bool = False) -> HFModel:
    """Read a Hugging Face model folder: config.json, weights, tokenizer.json (if present).

    allow_pickle=True also reads pytorch_model.bin (with torch.load(weights_only=True));
    only do that for files from a source you trust. Anything we cannot reproduce exactly is a
    ConfigError; weights that do not fit the config are a CheckpointError.
    """
    root = _model_root(Path(path))
    hf_config = _read_json(root / CONFIG_FILE, "config.json")
    model_type, architecture, task = _architecture(hf_config, root)
    bert = model_type == "bert"
    # configs first: a model we cannot build is refused before gigabytes of weights are read
    config = bert_config_from_hf(hf_config) if bert else gpt_config_from_hf(hf_config)
    raw = read_hf_weights(root, allow_pickle=allow_pickle)
    if isinstance(config, BertConfig):
        task = task or _bert_task_from_keys(raw)
        sd = _bert_state_dict(raw, config, task, hf_config, root)
    else:
        task = task or ("seq_cls" if "score.weight" in raw else "causal_lm")
        sd = _gpt_state_dict(raw, config, task, root)
    family = "bert" if bert else "gpt"
    architecture = architecture or _default_architecture(model_type, task)
    tokenizer = None
    if (root / TOKENIZER_FILE).is_file():
        tokenizer = Tokenizer.load(root)
        tokenizer.check_fits(config.vocab_size)
    pad_id = hf_config.get("pad_token_id")
    hf = HFModel(
        family=family,
        config=config,
        state_dict=sd,
        tokenizer=tokenizer,
        hf_config=hf_config,
        architecture=architecture,
        labels=None,
        path=root,
        task=task,
        pad_id=pad_id if isinstance(pad_id, int) else None,
    )
    if task in ("seq_cls", "token_cls"):
        hf.labels = _labels(hf_config, hf.num_labels or 0, root)
    return hf


def load_hf_gpt(
    path: str | os.PathLike[str], allow_pickle: bool = False
) -> tuple[GPT, Tokenizer | None]:
    """A `GPT` (eval mode) and its tokenizer from a GPT-2/Llama/Mistral/Qwen2/Qwen3/Gemma
    causal-LM folder."""
    hf = read_hf_dir(path, allow_pickle=allow_pickle)
    if hf.family != "gpt":
        raise ConfigError(f"{hf.path} holds a BERT model ({hf.architecture}); use load_hf_bert")
    if hf.task == "seq_cls":
        raise ConfigError(
            f"{hf.path} holds a classifier ({hf.architecture}), not a language model; "
            "use read_hf_dir(path).build() for the classifier"
        )
    model = hf.build()
    assert isinstance(model, GPT)
    return model, hf.tokenizer


def load_hf_bert(
    path: str | os.PathLike[str], allow_pickle: bool = False
) -> tuple[Bert, Tokenizer | None]:
    """The BERT encoder (eval mode, with a pooler when the file has one) and its tokenizer,
    from any BERT checkpoint: task heads in the file are left out."""
    hf = read_hf_dir(path, allow_pickle=allow_pickle)
    if hf.family != "bert":
        raise ConfigError(f"{hf.path} holds a GPT model ({hf.architecture}); use load_hf_gpt")
    assert isinstance(hf.config, BertConfig)
    trunk = hf.trunk_state_dict()
    model = Bert(hf.config, add_pooler="pooler.weight" in trunk)
    model.load_state_dict(trunk, strict=True)
    return model.eval(), hf.tokenizer


def read_hf_weights(
    path: str | os.PathLike[str], *, allow_pickle: bool = False
) -> dict[str, Tensor]:
    """All tensors of a folder's checkpoint under their HF names (safetensors preferred)."""
    root = Path(path)
    if (root / SAFETENSORS_FILE).is_file():
        return _load_safetensors(root / SAFETENSORS_FILE)
    if (root / SAFETENSORS_INDEX).is_file():
        return _load_sharded(root / SAFETENSORS_INDEX, _load_safetensors)
    pickled = [n for n in (PICKLE_FILE, PICKLE_INDEX) if (root / n).is_file()]
    if pickled and not allow_pickle:
        raise CheckpointError(
            f"{root} has only {pickled[0]}, a pickle file that can run code when loaded; convert "
            "it to model.safetensors, or opt in if you trust its source (allow_pickle=True, "
            "config: model.allow_pickle: true)"
        )
    if (root / PICKLE_FILE).is_file():
        return _load_pickle(root / PICKLE_FILE)
    if (root / PICKLE_INDEX).is_file():
        return _load_sharded(root / PICKLE_INDEX, _load_pickle)
    raise MissingFileError(
        f"no weights in {root}: looked for {SAFETENSORS_FILE}, {SAFETENSORS_INDEX}, {PICKLE_FILE} "
        f"and {PICKLE_INDEX}; download the model's weight files into the folder"
    )


def _model_root(path: Path) -> Path:
    """The folder holding config.json: `path`, or a sentence-transformers module inside it."""
    if not path.exists():
        raise MissingFileError(f"model folder {path} not found; pass a Hugging Face model folder")
    if not path.is_dir():
        raise MissingFileError(f"{path} is a file; pass the folder that holds it and config.json")
    if (path / CONFIG_FILE).is_file():
        return path
    modules = path / "modules.json"  # sentence-transformers: the transformer may sit in a subfolder
    if modules.is_file():
        entries = _read_json(modules, "modules.json")
        for entry in entries if isinstance(entries, list) else []:
            sub = path / str(entry.get("path", ""))
            if "Transformer" in str(entry.get("type", "")) and (sub / CONFIG_FILE).is_file():
                return sub
    raise MissingFileError(
        f"no config.json in {path}; point at a Hugging Face model folder (config.json beside "
        "model.safetensors)"
    )


def _read_json(file: Path, what: str) -> Any:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{file} is not valid JSON ({exc}); the {what} is damaged") from None
    if what == "config.json" and not isinstance(data, dict):
        raise CheckpointError(f"{file} must hold a JSON object; the config.json is damaged")
    return data


def _architecture(hf_config: Mapping[str, Any], root: Path) -> tuple[str, str | None, str | None]:
    """(model_type, architecture or None, task or None) with everything unsupported refused."""
    archs = hf_config.get("architectures") or []
    if isinstance(archs, str):
        archs = [archs]
    model_type = hf_config.get("model_type")
    if model_type is None:  # very old files: infer it from the architecture name
        model_type = next(
            (t for a in archs for t, known in ARCHITECTURES.items() if a in known), None
        )
    supported = ", ".join(ARCHITECTURES)
    if model_type is None:
        raise ConfigError(
            f"{root}/config.json has no model_type (nor a known architecture): it is not a "
            f"Hugging Face model config; groundup reads model types {supported}"
        )
    if model_type not in ARCHITECTURES:
        raise ConfigError(
            f"{root}: model_type {model_type!r} is not supported; groundup reads {supported} "
            f"({'/'.join(_GPT_PREFIX)} as GPT, bert as BERT)"
        )
    known = ARCHITECTURES[model_type]
    for arch in archs:
        if arch not in known:
            raise ConfigError(
                f"{root}: architecture {arch!r} (model_type {model_type!r}) is not supported; "
                f"supported for {model_type}: {', '.join(known)}"
            )
    return model_type, (archs[0] if archs else None), (known[archs[0]] if archs else None)


def _default_architecture(model_type: str, task: str) -> str:
    return next(a for a, t in ARCHITECTURES[model_type].items() if t == task)


def _load_safetensors(file: Path) -> dict[str, Tensor]:
    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"cannot read {file} ({exc}); the file is truncated or not safetensors: "
            "download it again"
        ) from None


def _load_pickle(file: Path) -> dict[str, Tensor]:
    try:
        sd = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling raises many types; none is the user's bug to debug
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(
            f"cannot read {file} with torch.load(weights_only=True) ({first}); convert it to "
            "model.safetensors"
        ) from None
    if not isinstance(sd, Mapping) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise CheckpointError(f"{file} does not hold a state dict of tensors")
    return dict(sd)


def _load_sharded(index_file: Path, load: Any) -> dict[str, Tensor]:
    index = _read_json(index_file, "shard index")
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index_file} has no weight_map; the shard index is damaged")
    shards = sorted(set(weight_map.values()))
    missing = [s for s in shards if not (index_file.parent / s).is_file()]
    if missing:
        raise MissingFileError(
            f"{index_file.name} names {len(missing)} shard(s) not in {index_file.parent}: "
            f"{', '.join(missing[:3])}; download the missing shard files"
        )
    out: dict[str, Tensor] = {}
    for shard in shards:
        out.update(load(index_file.parent / shard))
    absent = [k for k in weight_map if k not in out]
    if absent:
        few = ", ".join(sorted(absent)[:3])
        raise CheckpointError(
            f"{index_file.name} lists tensors its shards do not hold ({few}); "
            "download the shards again"
        )
    return out


def _labels(hf_config: Mapping[str, Any], n: int, root: Path) -> list[str] | None:
    id2label = hf_config.get("id2label")
    if not isinstance(id2label, Mapping) or not id2label:
        return None
    try:
        by_id = {int(k): str(v) for k, v in id2label.items()}
    except ValueError:
        raise CheckpointError(f"{root}/config.json id2label keys must be integers") from None
    if sorted(by_id) != list(range(n)):
        raise CheckpointError(
            f"{root}/config.json id2label has {len(by_id)} labels but the classifier has {n} "
            "outputs; fix id2label/label2id in config.json"
        )
    return [by_id[i] for i in range(n)]


def _gpt_state_dict(
    raw: Mapping[str, Tensor], cfg: GPTConfig, task: str, root: Path
) -> dict[str, Tensor]:
    raw = dict(raw)
    score = raw.pop("score.weight", None)
    if (score is None) == (task == "seq_cls"):
        what = "no score.weight (the classifier head)" if score is None else "a score.weight"
        raise CheckpointError(
            f"{root}: the weights have {what} but config.json says task {task!r}; fix "
            "'architectures' in config.json"
        )
    if cfg.tie_embeddings and "lm_head.weight" in raw:
        emb = next((raw[k] for k in _EMBED_KEYS if k in raw), None)
        if emb is not None and emb.shape == raw["lm_head.weight"].shape:
            if not torch.equal(emb, raw["lm_head.weight"]):
                raise CheckpointError(
                    f"{root}: config.json says tie_word_embeddings=true but lm_head.weight differs "
                    "from the token embedding; set tie_word_embeddings to false in config.json"
                )
    head = task == "causal_lm" or (task == "base" and cfg.tie_embeddings)
    try:
        sd = state_dict_from_hf(raw, cfg, lm_head=head)
    except CheckpointError as exc:
        raise CheckpointError(f"{root}: {exc}") from None
    if task != "seq_cls":
        return sd
    if score.shape[1:] != (cfg.n_embd,):
        raise CheckpointError(
            f"{root}: score.weight has shape {tuple(score.shape)}, expected (num_labels, "
            f"{cfg.n_embd}); the classifier head does not fit the config"
        )
    return {**{"gpt." + k: t for k, t in sd.items()}, "score.weight": score}


_EMBED_KEYS = (
    "transformer.wte.weight",
    "wte.weight",
    "model.embed_tokens.weight",
    "embed_tokens.weight",
)


def _bert_task_from_keys(raw: Mapping[str, Tensor]) -> str:
    if any(k.startswith("cls.predictions.") for k in raw):
        return "mlm"
    if "classifier.weight" in raw:
        return "seq_cls" if "bert.pooler.dense.weight" in raw else "token_cls"
    return "base"


def _bert_state_dict(
    raw: Mapping[str, Tensor],
    cfg: BertConfig,
    task: str,
    hf_config: Mapping[str, Any],
    root: Path,
) -> dict[str, Tensor]:
    needs = {"mlm": "cls.predictions.bias", "seq_cls": "classifier.weight"}
    needs["token_cls"] = needs["seq_cls"]
    if task in needs and needs[task] not in raw:
        raise CheckpointError(
            f"{root}: missing keys: {needs[task]} (config.json says task {task!r}); the weights "
            "are of another model: fix 'architectures' in config.json"
        )
    if task == "mlm":
        if hf_config.get("tie_word_embeddings", True) is False:
            raise ConfigError(
                f"{root}: tie_word_embeddings=false is not supported for BertForMaskedLM: our "
                "MLM decoder is the token embedding; use a tied checkpoint"
            )
        dec = raw.get("cls.predictions.decoder.weight")
        emb = raw.get("bert.embeddings.word_embeddings.weight")
        if dec is not None and emb is not None and not torch.equal(dec, emb):
            raise CheckpointError(
                f"{root}: cls.predictions.decoder.weight differs from the word embeddings; our "
                "MLM decoder is tied to them: use a tied checkpoint"
            )
    try:
        sd = bert_state_dict_from_hf(raw, cfg)
    except CheckpointError as exc:
        raise CheckpointError(f"{root}: {exc}") from None
    encoder = {
        k.removeprefix("bert."): t
        for k, t in sd.items()
        if not k.startswith(("head.", "classifier."))
    }
    heads = {k: t for k, t in sd.items() if k.startswith(("head.", "classifier."))}
    if task == "base":
        return encoder
    if task == "seq_cls":
        if "pooler.weight" not in encoder:
            raise CheckpointError(
                f"{root}: missing keys: bert.pooler.dense.weight; BertForSequenceClassification "
                "pools through it: the checkpoint is incomplete"
            )
    else:  # our MLM and token heads carry no pooler (as HF's): drop one the file has
        encoder = {k: t for k, t in encoder.items() if not k.startswith("pooler.")}
    keep = "head." if task == "mlm" else "classifier."
    return {
        **{"bert." + k: t for k, t in encoder.items()},
        **{k: t for k, t in heads.items() if k.startswith(keep)},
    }
