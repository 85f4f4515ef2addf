"""Chat templates as Jinja strings: our training tokens are transformers' apply_chat_template
tokens on the export, for every built-in template and a user's file; errors before training."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch

from groundup.data.task_data import sft_batches
from groundup.data.tokenizers import Tokenizer
from groundup.errors import ConfigError, DataError, MissingFileError, TokenizerError
from groundup.finetune.chat_templates import CHAT_TEMPLATES, load_template, resolve_template
from groundup.finetune.sft import (
    Conversation,
    Message,
    encode_chat,
    encode_prompt,
    encode_sft,
    get_template,
    stop_ids,
)
from groundup.interop.hf_export import export_hf
from groundup.models.gpt import GPT, GPTConfig

transformers = pytest.importorskip("transformers")

MARKERS = [
    "<|endoftext|>",
    "<|pad|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
]
TEXT = (
    "### Instruction:\nWhat is the capital of France?\n\n### Response:\nParis is.\n"
    " hello  world\tcafé über 12 345\n\n<|user|>\n</s>\n"
) * 4

# Zephyr-like, no generation markers: the trained span is found turn by turn
USER_TEMPLATE = """{% for message in messages %}
{% if message['role'] == 'user' %}
{{ '<|user|>\\n' + message['content'] + eos_token }}
{% elif message['role'] == 'system' %}
{{ '<|system|>\\n' + message['content'] + eos_token }}
{% else %}
{{ '<|assistant|>\\n'  + message['content'] + eos_token }}
{% endif %}
{% if loop.last and add_generation_prompt %}
{{ '<|assistant|>' }}
{% endif %}
{% endfor %}
"""

CONVERSATIONS = [
    [Message("user", "What is the capital of France?"), Message("assistant", "Paris is.")],
    [
        Message("system", "Be terse."),
        Message("user", " hello  world\n"),  # leading and doubled spaces, a final newline
        Message("assistant", "café über "),
        Message("user", "12?"),
        Message("assistant", "\n345"),
    ],
]


@functools.cache
def bpe() -> Tokenizer:
    return Tokenizer.train(
        [TEXT], kind="bpe", vocab_size=400, min_frequency=1, special_tokens=MARKERS
    )


@functools.cache
def char() -> Tokenizer:
    return Tokenizer.train([TEXT], kind="char", special_tokens=MARKERS[:4], byte_fallback=True)


def export(tmp_path: Path, tok: Tokenizer, template: object, name: str = "export") -> Path:
    torch.manual_seed(0)
    cfg = GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=256, vocab_size=tok.vocab_size)
    return export_hf(GPT(cfg), tmp_path / name, tokenizer=tok, chat_template=template)


def as_dicts(messages: list[Message]) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in messages]


def assert_same_as_transformers(folder: Path, tok: Tokenizer, template: object) -> None:
    hf = transformers.AutoTokenizer.from_pretrained(str(folder))
    for msgs in CONVERSATIONS:
        ids, mask = encode_chat(msgs, tok, template)
        out = hf.apply_chat_template(as_dicts(msgs), tokenize=True)
        assert out["input_ids"] == ids
        prompt = hf.apply_chat_template(as_dicts(msgs[:-1]), add_generation_prompt=True)
        assert prompt["input_ids"] == encode_prompt(msgs, tok, template)
        if resolve_template(template, tok).uses_generation_markers:
            masked = hf.apply_chat_template(
                as_dicts(msgs), tokenize=True, return_assistant_tokens_mask=True
            )
            assert masked["assistant_masks"] == [int(m) for m in mask]


@pytest.mark.parametrize("name", sorted(CHAT_TEMPLATES))
@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_builtin_templates_encode_as_transformers_does(
    tmp_path: Path, name: str, kind: str
) -> None:
    tok = bpe() if kind == "bpe" else char()
    folder = export(tmp_path, tok, name)
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["chat_template"] == CHAT_TEMPLATES[name].source
    assert (config["eos_token"], config["pad_token"]) == ("<|endoftext|>", "<|pad|>")
    assert config["bos_token"] == ("<|begin_of_text|>" if kind == "bpe" else "<|endoftext|>")
    assert_same_as_transformers(folder, tok, name)


def test_a_user_template_file_trains_replies_and_end_markers(tmp_path: Path) -> None:
    path = tmp_path / "zephyr.jinja"
    path.write_text(USER_TEMPLATE, encoding="utf-8")
    tok = bpe()
    folder = export(tmp_path, tok, str(path))
    assert_same_as_transformers(folder, tok, str(path))
    # the trained tokens are each reply and the end-of-text after it, nothing else
    ids, mask = encode_chat(CONVERSATIONS[1], tok, str(path))
    runs, run = [], []
    for i, m in zip(ids, mask):
        if m:
            run.append(i)
        elif run:
            runs, run = [*runs, tok.decode(run)], []
    assert runs == ["café über <|endoftext|>", "\n345<|endoftext|>"]
    assert stop_ids(tok, str(path)) == [tok.eot_id]
    t = encode_sft([Conversation(CONVERSATIONS[1])], tok, block_size=200, template=str(path))
    assert t.n_trainable_tokens == sum(mask)


def test_generation_markers_in_a_user_template_decide_what_is_trained() -> None:
    # the trained part is only the reply: the end marker sits outside the generation block
    inline = (
        "{% for m in messages %}{{ '[' + m['role'] + '] ' }}{% if m['role'] == 'assistant' %}"
        "{% generation %}{{ m['content'] }}{% endgeneration %}{% else %}{{ m['content'] }}"
        "{% endif %}{{ eos_token }}{% endfor %}{% if add_generation_prompt %}[assistant] "
        "{% endif %}"
    )
    tok = bpe()
    ids, mask = encode_chat(CONVERSATIONS[0], tok, inline)
    assert tok.decode([i for i, m in zip(ids, mask) if m]) == "Paris is."
    assert get_template(inline).name == "inline"
    assert stop_ids(tok, inline) == [tok.eot_id]  # no trained end marker: end-of-text


def test_typed_markers_stay_text_as_transformers_sanitizes_them(tmp_path: Path) -> None:
    tok = bpe()
    msgs = [Message("user", "Hi <|im_end|> there"), Message("assistant", "ok <|im_start|>x")]
    folder = export(tmp_path, tok, "chatml")
    hf = transformers.AutoTokenizer.from_pretrained(str(folder))
    ids, _ = encode_chat(msgs, tok, "chatml")
    safe = hf.apply_chat_template(as_dicts(msgs), tokenize=True, sanitize_control_tokens=True)
    assert safe["input_ids"] == ids
    assert ids.count(tok.token_to_id("<|im_end|>")) == 2  # the turns' ends, not the typed one


def test_export_picks_the_tokenizers_template_by_default(tmp_path: Path) -> None:
    config = json.loads(
        (export(tmp_path, bpe(), None) / "tokenizer_config.json").read_text(encoding="utf-8")
    )
    assert config["chat_template"] == CHAT_TEMPLATES["chatml"].source  # it has the markers
    bare = Tokenizer.train(None, kind="bytes", special_tokens=["<|pad|>"])  # no end-of-text
    config = json.loads(
        (export(tmp_path, bare, None, "bare") / "tokenizer_config.json").read_text("utf-8")
    )
    assert "chat_template" not in config and "eos_token" not in config
    with pytest.raises(ConfigError, match="end-of-text"):
        export(tmp_path, bare, "plain", "bare2")


# ---- errors ----------------------------------------------------------------------------------
def test_template_errors_are_one_line_and_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jinja"
    bad.write_text("{% for m in messages %}\n{{ m['content'] }}\n{% if %}\n{% endfor %}\n")
    with pytest.raises(ConfigError, match=r"bad\.jinja line 3: Jinja syntax error") as info:
        load_template(str(bad))
    assert "\n" not in str(info.value)
    with pytest.raises(MissingFileError, match="not found"):
        load_template(str(tmp_path / "missing.jinja"))
    with pytest.raises(ConfigError, match="did you mean 'llama3'"):
        load_template("llama")
    with pytest.raises(ConfigError, match="ignores add_generation_prompt"):
        load_template("{% for m in messages %}{{ m['content'] }}{{ eos_token }}{% endfor %}")
    rewrites = (  # the last turn is written differently: no prefix, so no span without markers
        "{% for m in messages %}{{ m['content'] }}{% if loop.last %}!{% endif %}"
        "{{ eos_token }}{% endfor %}{% if add_generation_prompt %}A:{% endif %}"
    )
    with pytest.raises(ConfigError, match="generation"):
        load_template(rewrites)
    refuses = (
        "{{ raise_exception('roles must alternate') }}{% if add_generation_prompt %}x{% endif %}"
    )
    with pytest.raises(ConfigError, match="roles must alternate"):
        load_template(refuses)


def test_a_syntax_error_exits_2_from_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from groundup.cli import main
    from groundup.models.folders import save_model_dir

    tok = Tokenizer.train(None, kind="bytes")
    cfg = GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=64, vocab_size=tok.vocab_size)
    save_model_dir(tmp_path / "base" / "model", GPT(cfg), tok)
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": "a", "response": "b"}) for _ in range(8)))
    bad = tmp_path / "t.jinja"
    bad.write_text("{{ messages[0]['content'] }\n")
    yaml_cfg = tmp_path / "ft.yaml"
    yaml_cfg.write_text(
        f"run_dir: {tmp_path / 'run'}\ntask: sft\nbase: {{path: {tmp_path / 'base'}}}\n"
        f"data: {{train: {data}, template: {bad}}}\ntrain: {{max_steps: 1, device: cpu}}\n",
        encoding="utf-8",
    )
    assert main(["finetune", str(yaml_cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "t.jinja line 1: Jinja syntax error" in err[0]


def test_a_template_character_a_char_tokenizer_lacks_is_named_before_training() -> None:
    tok = Tokenizer.train(["the quick brown fox\n"], kind="char")  # no '#', ':' or capitals
    conv = Conversation.from_pair("the fox", "quick")
    with pytest.raises(TokenizerError, match="comes from the chat template 'plain'") as info:
        encode_sft([conv], tok, block_size=64, template="plain")
    assert "byte_fallback: true" in str(info.value) and "\n" not in str(info.value)
    # content with an unknown character is the data's fault, and says where
    ok = "{% for m in messages %}{% if m['role'] == 'assistant' %}{{ 'fox ' }}{% endif %}"
    ok += "{{ m['content'] + '\\n' }}{% endfor %}"
    ok += "{% if add_generation_prompt %}{{ 'fox ' }}{% endif %}"
    conv_z = Conversation(
        [Message("user", "the"), Message("assistant", "fox Z")], "data.jsonl line 7"
    )
    with pytest.raises(TokenizerError, match="data.jsonl line 7: character 'Z'"):
        encode_sft([conv_z], tok, block_size=64, template=ok)
    fallback = Tokenizer.train(["the quick brown fox\n"], kind="char", byte_fallback=True)
    assert encode_sft([conv], fallback, block_size=128, template="plain").n_examples == 1


def test_truncation_beyond_the_threshold_warns_with_the_length_that_keeps_all() -> None:
    tok = Tokenizer.train(None, kind="bytes")
    convs = [Conversation.from_pair("q" * n, "a" * 20) for n in (5, 10, 40, 80)]
    with pytest.warns(
        UserWarning, match=r"3 of 4 examples \(75\.0%\).*1 truncated, 2 dropped"
    ) as rec:
        sft_batches(convs, tok, "plain", 60, tok.pad_id, 2)
    suggested = int(str(rec[0].message).split("data.max_len ")[1].split()[0])
    again = encode_sft(convs, tok, block_size=suggested, template="plain")
    assert (again.truncated, again.dropped) == (0, 0)
    assert encode_sft(convs, tok, block_size=suggested - 1, template="plain").truncated == 1


def test_data_cannot_hold_the_reserved_rendering_characters() -> None:
    with pytest.raises(DataError, match="noncharacter"):
        encode_chat([Message("user", "a\ufdd0"), Message("assistant", "b")], bpe(), "plain")
