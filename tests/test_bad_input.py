"""Bad input through the `groundup` command: exit code 2 and ONE line "error: ...", never a
traceback. Table-driven; each row names the input and a fragment the message must hold.

Complements tests/test_cli.py and tests/test_pretrain.py (unknown keys, bad YAML, a missing
config or corpus, a wrong preset, ...): the rows here are values of the wrong sign or type,
layer specs, bad data files, damaged model folders and directories given for files. Every
failure happens before training starts, so the whole file runs in a few seconds.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch
import yaml

import groundup as gu
from groundup.cli import main
from groundup.errors import CheckpointError, GroundupError

LINES = [
    f"{a} {v} {o}."
    for a in ("the cat", "a dog")
    for v in ("sat on", "ran to")
    for o in ("mats", "doors")
]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """Data files and configs shared by the table rows (written once per module)."""
    root = tmp_path_factory.mktemp("bad_input")
    rows = [f"{i % 7},{(i * 3) % 5},{i % 2}" for i in range(40)]
    (root / "good.csv").write_text("a,b,y\n" + "\n".join(rows) + "\n", encoding="utf-8")
    bad = ["a,b,y", *rows[:10], "1,2", *rows[10:20], "1,2,3,4", *rows[20:]]
    (root / "bad_rows.csv").write_text("\n".join(bad) + "\n", encoding="utf-8")
    (root / "empty.csv").write_text("", encoding="utf-8")
    (root / "header_only.csv").write_text("a,b,y\n", encoding="utf-8")
    nan_target = [f"{i},{i * 2},nan" for i in range(10)]
    (root / "nan_target.csv").write_text("a,b,y\n" + "\n".join(nan_target), encoding="utf-8")
    single = [f"{i},{i * 2},yes" for i in range(10)]
    (root / "single_class.csv").write_text("a,b,y\n" + "\n".join(single), encoding="utf-8")
    (root / "latin1.csv").write_bytes("a,b,y\ncaf\xe9,1,0\n".encode("latin-1"))
    (root / "damaged.csv.gz").write_bytes(gzip.compress(b"a,b,y\n1,2,0\n" * 50)[:-20])
    (root / "folder").mkdir()
    (root / "folder" / "notes.bin").write_bytes(b"\x00")
    (root / "garbage.npy").write_bytes(b"garbage, not an array")
    (root / "not_json.json").write_text("{this is not json", encoding="utf-8")
    (root / "corpus.txt").write_text("\n".join(LINES * 20) + "\n", encoding="utf-8")
    jsonl = [json.dumps({"text": line}) for line in LINES] + [json.dumps({"body": "no text"})]
    (root / "no_field.jsonl").write_text("\n".join(jsonl) + "\n", encoding="utf-8")
    (root / "list.yaml").write_text("- a\n- b\n", encoding="utf-8")
    (root / "latin1.yaml").write_bytes("run_dir: caf\xe9\n".encode("latin-1"))

    train = {
        "run_dir": str(root / "runs" / "train"),
        "data": {"path": str(root / "good.csv"), "target": "y"},
        "layers": [
            {"type": "Dense", "units": 8, "activation": "relu"},
            {"type": "Dense", "units": 2},
        ],
        "loss": "sparse_categorical_crossentropy",
        "train": {"epochs": 1, "batch_size": 8, "device": "cpu"},
    }
    (root / "train.yaml").write_text(yaml.safe_dump(train), encoding="utf-8")
    pretrain = {
        "run_dir": str(root / "runs" / "pretrain"),
        "data": {"source": str(root / "corpus.txt")},
        "tokenizer": {"kind": "char"},
        "model": {"preset": "gpt2-tiny", "block_size": 16},
        "optim": {"warmup_steps": 0},
        "train": {"max_steps": 2, "batch_size": 2, "device": "cpu", "precision": "fp32"},
    }
    (root / "pretrain.yaml").write_text(yaml.safe_dump(pretrain), encoding="utf-8")
    return root


def _model_dir(root: Path) -> Path:
    """A tiny saved GPT (weights, config, tokenizer), as `groundup pretrain` leaves it."""
    from groundup.data.tokenizers import Tokenizer
    from groundup.models.folders import save_model_dir
    from groundup.models.gpt import GPT, GPTConfig

    tokenizer = Tokenizer.train(LINES, kind="char")
    torch.manual_seed(0)
    config = GPTConfig.from_name("gpt2-tiny", block_size=16, vocab_size=tokenizer.vocab_size)
    return save_model_dir(root, GPT(config), tokenizer)


def one_line_error(capsys, argv: list[str], after_progress: bool = False) -> str:
    """Run the CLI; exit code 2 and stderr exactly one "error: " line (no traceback).

    after_progress: the error comes after work that reports progress on stderr (the shards
    encoder), so only the last line is checked.
    """
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    assert code == 2, (code, err)
    lines = err.splitlines()
    if not after_progress:
        assert len(lines) == 1, err
    assert lines[-1].startswith("error: "), err
    return lines[-1]


def _argv(template: list[str], root: Path, run: Path) -> list[str]:
    return [a.replace("{root}", str(root)).replace("{run}", str(run)) for a in template]


T = ["train", "{root}/train.yaml", "run_dir={run}"]
P = ["pretrain", "{root}/pretrain.yaml", "run_dir={run}"]

# id -> (argv, fragment of the error line, the error comes after progress lines)
CLI_CASES = {
    # ---- values of the wrong sign, range or type
    "pretrain negative lr": (
        [*P, "optim.lr=-3e-4"],
        "optim.lr must be > 0 and finite, got -0.0003",
    ),
    "train batch size 0": (
        [*T, "train.batch_size=0"],
        "train.batch_size must be an integer >= 1, got 0",
    ),
    "pretrain batch size 0": (
        [*P, "train.batch_size=0"],
        "train.batch_size must be an integer >= 1, got 0",
    ),
    "epochs is a list": (
        [*T, "train.epochs=[1, 2]"],
        "'train.epochs' must be an integer, got list",
    ),
    "stratify is a word": ([*T, "data.stratify=maybe"], "'data.stratify' must be true or false"),
    "lr is a word": ([*T, "optim.lr=fast"], "'optim.lr' must be a number, got str 'fast'"),
    "betas is a word": ([*T, "optim.betas=fast"], "'optim.betas' must be a list"),
    "test_size 1.5": ([*T, "data.test_size=1.5"], "data.test_size must be in [0, 1), got 1.5"),
    "seed 1e30": ([*T, "seed=1e30"], "'seed' is out of range"),
    "seed past 4300 digits": ([*T, "seed=" + "9" * 5000], "more than 4300 digits"),
    "val_fraction 1": ([*P, "data.val_fraction=1"], "data.val_fraction must be in (0, 1)"),
    "model is a word": ([*P, "model=gpt2"], "'model' must be a mapping, got str 'gpt2'"),
    "precision fp8": ([*T, "train.precision=fp8"], "must be one of 'auto', 'fp32'"),
    "device tpu": ([*T, "train.device=tpu"], "train.device must be auto, cpu, cuda or cuda:N"),
    # ---- names
    "unknown optimizer": (
        [*T, "optim.name=adamm"],
        "unknown optimizer 'adamm' (did you mean 'adam'?)",
    ),
    "unknown schedule": ([*T, "optim.schedule=cosin"], "(did you mean 'cosine'?)"),
    "unknown metric": ([*T, "metrics=[acuracy]"], "unknown metric 'acuracy'"),
    "unknown tokenizer kind": ([*P, "tokenizer.kind=wordpiece"], "'tokenizer.kind' must be one of"),
    "unknown corpus bad_rows": ([*P, "data.bad_rows=ignore"], "'data.bad_rows' must be one of"),
    # ---- layers
    "layers empty": ([*T, "layers=[]"], "layers is empty: list the model's layers"),
    "layers is a word": ([*T, "layers=Dense"], "'layers' must be a list, got str 'Dense'"),
    "layer is a number": ([*T, "layers=[5]"], "'layers[0]' must be a mapping, got int 5"),
    "layer without type": (
        [*T, "layers=[{units: 4}]"],
        "layers[0] must be a mapping with a 'type'",
    ),
    "unknown layer type": (
        [*T, "layers=[{type: Dense2, units: 4}]"],
        "unknown layer 'Dense2' (did you mean 'dense'?)",
    ),
    "unknown layer kwarg": (
        [*T, "layers=[{type: Dense, units: 4, unitz: 3}]"],
        "unknown argument 'unitz' for layer Dense (did you mean 'units'?)",
    ),
    "negative units": (
        [*T, "layers=[{type: Dense, units: -4}]"],
        "units must be a positive integer",
    ),
    "units is a word": ([*T, "layers=[{type: Dense, units: many}]"], "got 'many'"),
    "unknown activation": (
        [*T, "layers=[{type: Dense, units: 2, activation: relux}]"],
        "unknown activation 'relux' (did you mean 'relu'?)",
    ),
    # ---- tabular data
    "missing CSV": ([*T, "data.path={root}/nope.csv"], "data file not found"),
    "CSV with bad rows": (
        [*T, "data.path={root}/bad_rows.csv"],
        "bad_rows.csv: line 12 has 2 fields but the header has 3; fix the row or set bad_rows: skip",
    ),
    "empty CSV": ([*T, "data.path={root}/empty.csv"], "empty.csv is empty"),
    "CSV header only": ([*T, "data.path={root}/header_only.csv"], "has a header but no data rows"),
    "all-NaN target": (
        [*T, "data.path={root}/nan_target.csv"],
        "no rows left after cleaning (0/10 rows kept; 10 rows without target dropped",
    ),
    "single class + stratify": (
        [*T, "data.path={root}/single_class.csv", "data.stratify=true"],
        "target 'y' has a single class ('yes'); classification needs at least two",
    ),
    "CSV not UTF-8": ([*T, "data.path={root}/latin1.csv"], "is not UTF-8 text"),
    "damaged .csv.gz": ([*T, "data.path={root}/damaged.csv.gz"], "the file is damaged"),
    "directory as CSV": (
        [*T, "data.path={root}/folder"],
        "folder is a directory; give a data file",
    ),
    "garbage .npy": ([*T, "data.path={root}/garbage.npy"], "is not a NumPy .npy file"),
    "JSON as CSV": ([*T, "data.path={root}/not_json.json"], "unsupported data file type"),
    "early stopping, no val": (
        [*T, "data.val_size=0", "early_stopping={}"],
        "early_stopping needs a validation split",
    ),
    # ---- config files and overrides
    "directory as config": (["train", "{root}/folder"], "folder is a directory; give the YAML"),
    "config is a list": (["train", "{root}/list.yaml"], "must hold a YAML mapping"),
    "config not UTF-8": (["pretrain", "{root}/latin1.yaml"], "is not a UTF-8 text file"),
    "override without =": ([*T, "optim.lr"], "must look like key.sub=value"),
    "override into a value": ([*T, "loss.x=1"], "'loss' is not a section"),
    "recursive YAML override": ([*T, "layers=&a [*a]"], "contains itself"),
    # ---- text data and tokenizers
    "JSONL line without the field": (
        [*P, "data.source={root}/no_field.jsonl"],
        "no_field.jsonl:9: no 'text' field (keys: body)",
    ),
    "folder without text files": ([*P, "data.source={root}/folder"], "has no .txt, .md, .jsonl"),
    "tokenizer.json not JSON": ([*P, "tokenizer.path={root}/not_json.json"], "is not valid JSON"),
    "tokenizer folder without one": (
        [*P, "tokenizer.path={root}/folder"],
        "folder/tokenizer.json not found",
    ),
    # ---- model shape (checked before the tokenizer is trained: no progress lines)
    "n_head does not divide": (
        [*P, "model.n_head=5"],
        "n_embd 32 is not divisible by n_head 5",
    ),
    "unknown flavour": ([*P, "model.flavour=gpt3"], "(did you mean 'gpt2'?)"),
    "dropout 1.5": ([*P, "model.dropout=1.5"], "dropout must be in [0, 1), got 1.5"),
}
CLI_CASES.update(
    {
        "run_dir is a file": (
            ["train", "{root}/train.yaml", "run_dir={root}/good.csv"],
            "is a file, not a folder",
        ),
        "shards_dir is a file": ([*P, "data.shards_dir={root}/good.csv"], "is a file"),
    }
)
PARAMS = [
    pytest.param(*(row if len(row) == 3 else (*row, False)), id=k) for k, row in CLI_CASES.items()
]


@pytest.mark.parametrize(("argv", "fragment", "after_progress"), PARAMS)
def test_bad_input_is_one_line_exit_2(files, tmp_path, capsys, argv, fragment, after_progress):
    before = sorted(p.name for p in tmp_path.iterdir())
    err = one_line_error(capsys, _argv(argv, files, tmp_path / "run"), after_progress)
    assert fragment in err, err
    # refused before any work: no run folder made, nothing else written beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_bad_rows_skip_counts_what_fail_refuses(files, tmp_path, capsys) -> None:
    from groundup.data.tabular_pipeline import TabularDataConfig, prepare_tabular

    path = str(files / "bad_rows.csv")
    with pytest.raises(GroundupError, match="line 12 has 2 fields"):
        prepare_tabular(TabularDataConfig(path=path, target="y", bad_rows="fail"))
    data = prepare_tabular(TabularDataConfig(path=path, target="y", bad_rows="skip"))
    assert data.report.bad_rows_skipped == 2 and data.report.rows_in == 42
    assert "2 bad rows skipped" in data.report.summary()
    argv = _argv([*T, "data.path={root}/bad_rows.csv", "data.bad_rows=skip"], files, tmp_path / "r")
    assert main(argv) == 0
    assert "Traceback" not in capsys.readouterr().err


# ---------------------------------------------------------------- damaged model folders
def _truncated(path: Path) -> bytes:
    return path.read_bytes()[:200]


# id -> (file in the model folder, new content (or a function of the old file), fragment)
GENERATE_CASES = {
    "garbage model.safetensors": (
        "model.safetensors",
        b"\x00garbage" * 10,
        "the file is truncated or not safetensors",
    ),
    "truncated model.safetensors": (
        "model.safetensors",
        _truncated,
        "the file is truncated or not safetensors",
    ),
    "tokenizer.json not JSON": ("tokenizer.json", b"{not json", "tokenizer.json is not valid JSON"),
    "config.json not JSON": ("config.json", b"{not json", "config.json is not valid JSON"),
    "config.json unknown key": (
        "config.json",
        b'{"model_type": "groundup-gpt", "n_layerz": 2}',
        "unknown GPT config key 'n_layerz' (did you mean 'n_layer'?)",
    ),
}
GENERATE_CASES.update(
    {
        "config.json is a list": ("config.json", b"[1, 2]", "must hold a JSON object"),
        "config.json not UTF-8": (
            "config.json",
            '{"flavour": "caf\xe9"}'.encode("latin-1"),
            "is not UTF-8 text",
        ),
    }
)
GEN_PARAMS = [pytest.param(*row, id=k) for k, row in GENERATE_CASES.items()]


@pytest.mark.parametrize(("name", "content", "fragment"), GEN_PARAMS)
def test_damaged_model_folder_is_one_line_exit_2(tmp_path, capsys, name, content, fragment):
    folder = _model_dir(tmp_path / "model")
    target = folder / name
    target.write_bytes(content(target) if callable(content) else content)
    argv = ["generate", str(folder), "--prompt", "the cat", "--max-new-tokens", "3"]
    err = one_line_error(capsys, [*argv, "--device", "cpu"])
    assert fragment in err, err


GENERATE_ARGS = {
    "negative temperature": (["--temperature", "-1"], "temperature must be >= 0"),
    "top_k 0": (["--top-k", "0"], "top_k must be an integer >= 1"),
    "top_p 2": (["--top-p", "2"], "top_p must be in (0, 1]"),
    "negative max_new_tokens": (
        ["--max-new-tokens", "-5"],
        "max_new_tokens must be an integer >= 0",
    ),
    "device tpu": (["--device", "tpu"], "unknown device 'tpu'"),
    "run folder without a model": (["--run-is-root"], "no config.json in"),
}


@pytest.mark.parametrize(
    ("extra", "fragment"), list(GENERATE_ARGS.values()), ids=list(GENERATE_ARGS)
)
def test_bad_generate_arguments_are_one_line_exit_2(tmp_path, capsys, extra, fragment) -> None:
    folder = _model_dir(tmp_path / "run" / "model")
    if extra == ["--run-is-root"]:  # the parent of the parent holds no model
        folder, extra = tmp_path, []
    argv = ["generate", str(folder), "--prompt", "the cat", "--max-new-tokens", "3"]
    if "--device" not in extra:
        argv += ["--device", "cpu"]
    err = one_line_error(capsys, [*argv, *extra])
    assert fragment in err, err


# ---------------------------------------------------------------- the Python API: load_model
def _saved_sequential(folder: Path) -> Path:
    torch.manual_seed(0)
    model = gu.Sequential([gu.layers.Dense(2, input_shape=(3,))])
    return model.save(folder)


@pytest.mark.parametrize(
    ("name", "content", "error", "fragment"),
    [
        ("model.safetensors", b"\x00garbage" * 10, CheckpointError, "truncated or not safetensors"),
        ("model.safetensors", b"", CheckpointError, "truncated or not safetensors"),
        ("architecture.json", b"{not json", GroundupError, "is not valid JSON"),
    ],
    ids=["garbage weights", "empty weights", "architecture not JSON"],
)
def test_load_model_of_a_damaged_folder(tmp_path, name, content, error, fragment) -> None:
    folder = _saved_sequential(tmp_path / "m")
    gu.load_model(folder)  # the intact folder loads
    (folder / name).write_bytes(content)
    with pytest.raises(error) as info:
        gu.load_model(folder)
    message = str(info.value)
    assert fragment in message and "\n" not in message, message


def test_load_model_of_a_truncated_weights_file(tmp_path) -> None:
    folder = _saved_sequential(tmp_path / "m")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8])  # the header is intact, the data is short
    with pytest.raises(CheckpointError, match="truncated or not safetensors"):
        gu.load_model(folder)
