"""Instruction SFT data: prompt masking, chat templates, truncation, packing, reading errors."""

from __future__ import annotations

import functools
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from groundup.data.tokenizers import Tokenizer
from groundup.errors import ConfigError, DataError, MissingFileError, TokenizerError
from groundup.finetune.sft import (
    IGNORE_INDEX,
    Conversation,
    Message,
    encode_prompt,
    encode_sft,
    get_template,
    read_sft_jsonl,
    render,
    stop_ids,
)

CHATML = ["<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"]


@functools.cache
def raw_bytes(specials: tuple[str, ...] = ("<|endoftext|>", "<|pad|>")) -> Tokenizer:
    return Tokenizer.train(None, kind="bytes", special_tokens=list(specials))


@functools.cache
def bpe() -> Tokenizer:
    text = "### Instruction:\nWhat is the capital of France?\n\n### Response:\nParis is.\n" * 5
    return Tokenizer.train([text, "hello world"], kind="bpe", vocab_size=300, min_frequency=1)


def full_rows(t) -> list[torch.Tensor]:
    """Each row's tokens: inputs plus the final target when it is trainable (else unknown)."""
    return [
        torch.cat([i, lab[-1:]]) if lab[-1] != IGNORE_INDEX else i
        for i, lab in zip(t.input_ids, t.labels, strict=True)
    ]


def trainable_runs(tok: Tokenizer, labels: torch.Tensor) -> list[str]:
    """Decoded runs of consecutive trainable targets, over all rows."""
    runs = []
    for row in labels:
        keep = (row != IGNORE_INDEX).numpy()
        edges = np.flatnonzero(np.diff(np.concatenate([[0], keep.astype(int), [0]])))
        for a, b in zip(edges[0::2], edges[1::2], strict=True):
            runs.append(tok.decode(row[a:b]))
    return runs


# ---- masking -------------------------------------------------------------------------------
def test_prompt_tokens_carry_no_loss_and_response_has_exact_targets() -> None:
    tok = raw_bytes()
    conv = Conversation.from_pair("What is 2+2?", "Four.")
    out = encode_sft([conv], tok, block_size=64, template="plain")
    prompt = tok.encode("### Instruction:\nWhat is 2+2?\n\n### Response:\n")
    response = tok.encode("Four.") + [tok.eot_id]
    ids = prompt + response
    assert out.input_ids.tolist() == [ids[:-1]]
    # label t is ids[t+1]: -100 while the next token is still prompt, then the response + eot
    assert out.labels.tolist() == [[IGNORE_INDEX] * (len(prompt) - 1) + response]
    assert out.labels.dtype == out.input_ids.dtype == torch.int64
    assert (out.n_examples, out.n_rows, out.n_trainable_tokens) == (1, 1, len(response))


def test_bpe_masking_reconstructs_prompt_and_response() -> None:
    tok = bpe()
    convs = [
        Conversation.from_pair("What is the capital of France?", "Paris is."),
        Conversation.from_pair("hello", "world", system="Answer in one word."),
    ]
    out = encode_sft(convs, tok, block_size=128, template="plain")
    assert trainable_runs(tok, out.labels) == ["Paris is.<|endoftext|>", "world<|endoftext|>"]
    for row, labels, conv in zip(out.input_ids, out.labels, convs, strict=True):
        first = int((labels != IGNORE_INDEX).nonzero()[0])  # last prompt position
        prompt = tok.decode(row[: first + 1])
        assert prompt.endswith("### Response:\n")
        assert conv.messages[-2].content in prompt
        assert conv.messages[-1].content not in prompt
        # every trainable label is the next input token
        nxt = row[1:]
        keep = labels[:-1] != IGNORE_INDEX
        assert torch.equal(labels[:-1][keep], nxt[keep])


def test_chat_with_system_and_two_assistant_turns() -> None:
    tok = raw_bytes(tuple(CHATML))
    conv = Conversation(
        [
            Message("system", "Be terse."),
            Message("user", "Hi <|im_end|> there"),  # typed marker: plain text, not the id
            Message("assistant", "Hello."),
            Message("user", "Bye?"),
            Message("assistant", "Bye."),
        ]
    )
    out = encode_sft([conv], tok, block_size=256, template="chatml")
    assert trainable_runs(tok, out.labels) == ["Hello.<|im_end|>", "Bye.<|im_end|>"]
    end = tok.token_to_id("<|im_end|>")
    row = full_rows(out)[0]
    assert int((row == end).sum()) == 5  # one id per turn end; the typed one is text
    text = tok.decode(row)
    assert "\nHi <|im_end|> there<|im_end|>\n" in text
    assert text.startswith("<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\nHi ")
    targets = tok.decode(out.labels[0][out.labels[0] != IGNORE_INDEX])
    for never in ("Be terse.", "Bye?", "Hi", "user", "assistant"):
        assert never not in targets


def test_markers_missing_from_the_tokenizer_are_plain_text() -> None:
    tok = raw_bytes()  # no <|im_end|> special token: it is 10 byte tokens, all trained
    out = encode_sft([Conversation.from_pair("a", "b")], tok, block_size=128, template="chatml")
    assert trainable_runs(tok, out.labels) == ["b<|im_end|>"]
    assert out.n_trainable_tokens == 1 + len("<|im_end|>")
    assert stop_ids(tok, "chatml") == list(b"<|im_end|>")
    assert stop_ids(raw_bytes(tuple(CHATML)), "chatml") == [259]
    assert stop_ids(tok, "plain") == [tok.eot_id]


def test_llama3_template_and_auto_choice() -> None:
    tok = raw_bytes()
    segs = render(Conversation.from_pair("q", "a", system="s"), "llama3", "<|endoftext|>")
    text = "".join(s.text for s in segs)
    assert text == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\ns<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nq<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\na<|eot_id|>"
    )
    assert [s.text for s in segs if s.trainable] == ["a", "<|eot_id|>"]
    assert get_template("auto", tok).name == "plain"
    assert get_template("auto", raw_bytes(tuple(CHATML))).name == "chatml"
    assert get_template("ChatML").name == "chatml"


def test_unknown_template_suggests_a_name() -> None:
    with pytest.raises(ConfigError, match="did you mean 'chatml'"):
        encode_sft([Conversation.from_pair("a", "b")], raw_bytes(), block_size=8, template="chatm")


def test_plain_template_needs_an_eot_token() -> None:
    tok = raw_bytes(("<|pad|>",))
    with pytest.raises(TokenizerError, match="end-of-text"):
        encode_sft([Conversation.from_pair("a", "b")], tok, block_size=32, template="plain")


def test_encode_prompt_matches_the_training_prefix() -> None:
    tok = bpe()
    conv = Conversation.from_pair("What is the capital of France?", "Paris is.", system="Hi.")
    prompt = encode_prompt(conv, tok, "plain")
    row = full_rows(encode_sft([conv], tok, block_size=128, template="plain"))[0].tolist()
    assert row[: len(prompt)] == prompt
    assert tok.decode(prompt).endswith("### Response:\n")
    assert "Paris" not in tok.decode(prompt)


# ---- padding, truncation, packing ------------------------------------------------------------
def convs_of_lengths(n: int, seed: int = 0) -> list[Conversation]:
    rng = np.random.default_rng(seed)
    return [
        Conversation.from_pair(
            f"q{i} " * int(rng.integers(1, 6)), f"a{i} " * int(rng.integers(1, 8))
        )
        for i in range(n)
    ]


def test_rows_are_padded_to_the_longest_with_no_loss_on_padding() -> None:
    tok = raw_bytes()
    convs = [Conversation.from_pair("a", "b"), Conversation.from_pair("a longer prompt", "bb")]
    out = encode_sft(convs, tok, block_size=100, template="plain")
    lengths = [len(tok.encode(f"### Instruction:\n{p}\n\n### Response:\n{r}")) + 1 for p, r in
               [("a", "b"), ("a longer prompt", "bb")]]  # fmt: skip
    assert out.input_ids.shape == (2, max(lengths) - 1)  # the longest row, not block_size
    pads = out.input_ids[0, lengths[0] :]
    assert (pads == tok.pad_id).all() and pads.numel() > 0
    assert (out.labels[0, lengths[0] - 1 :] == IGNORE_INDEX).all()
    assert out.n_tokens == lengths[0] + lengths[1] - 1
    custom = encode_sft(convs, tok, block_size=100, template="plain", pad_id=0)
    assert (custom.input_ids[0, lengths[0] :] == 0).all()
    with pytest.raises(ConfigError, match="pad_id"):
        encode_sft(convs, tok, block_size=100, template="plain", pad_id=10_000)
    with pytest.raises(ConfigError, match="block_size"):
        encode_sft(convs, tok, block_size=0)


def test_truncation_is_counted_and_cut_responses_are_dropped() -> None:
    tok = raw_bytes()
    header = len(tok.encode("### Instruction:\nq\n\n### Response:\n"))
    keep = Conversation.from_pair("q", "x" * 100)  # response cut, some of it kept
    short = Conversation.from_pair("q", "y")
    lost = Conversation.from_pair("q" * 100, "z")  # the prompt alone fills the row
    block = header + 10
    out = encode_sft([keep, short, lost], tok, block_size=block, template="plain")
    assert (out.n_examples, out.truncated, out.dropped) == (2, 2, 1)
    assert out.input_ids.shape[1] == block
    assert trainable_runs(tok, out.labels)[0] == "x" * 11  # positions header-1 .. block-1
    assert out.stats()["dropped"] == 1
    with pytest.raises(DataError, match="all 1 conversations were dropped"):
        encode_sft([lost], tok, block_size=block, template="plain")
    with pytest.raises(DataError, match="no conversations"):
        encode_sft([], tok, block_size=block)


def test_packing_keeps_the_mask_and_uses_fewer_rows() -> None:
    tok = raw_bytes()
    convs = convs_of_lengths(40)
    plain = encode_sft(convs, tok, block_size=256, template="plain")
    packed = encode_sft(convs, tok, block_size=256, template="plain", packing=True)
    assert packed.n_rows < plain.n_rows // 3
    assert packed.input_ids.shape[1] <= 256
    assert packed.n_trainable_tokens == plain.n_trainable_tokens
    assert packed.stats()["pad_fraction"] < plain.stats()["pad_fraction"]
    assert Counter(trainable_runs(tok, packed.labels)) == Counter(trainable_runs(tok, plain.labels))
    # every trainable label is the next token of its row, and no example is split
    pieces: list[str] = []
    for inputs, row, labels in zip(packed.input_ids, full_rows(packed), packed.labels, strict=True):
        keep = labels[:-1] != IGNORE_INDEX
        assert torch.equal(labels[:-1][keep], inputs[1:][keep])
        text = tok.decode(row[row != tok.pad_id])
        assert text.endswith("<|endoftext|>")
        pieces += [p + "<|endoftext|>" for p in text.split("<|endoftext|>")[:-1]]
    rendered = ["".join(s.text for s in render(c, "plain")) for c in convs]
    assert Counter(pieces) == Counter(rendered)


def test_packing_handles_examples_longer_than_a_row() -> None:
    tok = raw_bytes()
    convs = [Conversation.from_pair("q", "x" * 300), *convs_of_lengths(5)]
    out = encode_sft(convs, tok, block_size=64, template="plain", packing=True)
    assert out.truncated == 1 and out.dropped == 0
    assert out.input_ids.shape[1] == 64


# ---- reading ---------------------------------------------------------------------------------
def write(tmp_path: Path, text: str | bytes, name: str = "data.jsonl") -> Path:
    p = tmp_path / name
    p.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return p


def test_read_pairs_and_messages(tmp_path: Path) -> None:
    lines = [
        json.dumps({"prompt": "p1", "response": "r1"}),
        "",
        json.dumps({"prompt": "p2", "response": "r2", "system": "s2"}),
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": "u\u2028x"},  # raw U+2028 inside a string
                    {"role": "assistant", "content": "a"},
                ]
            },
            ensure_ascii=False,
        ),
        "   ",
    ]
    convs = read_sft_jsonl(write(tmp_path, "\r\n".join(lines)))
    assert len(convs) == 3
    assert convs[0].messages == [Message("user", "p1"), Message("assistant", "r1")]
    assert [m.role for m in convs[1].messages] == ["system", "user", "assistant"]
    assert convs[2].messages[0].content == "u\u2028x"
    assert convs[2].source.endswith("line 4")
    custom = write(tmp_path, json.dumps({"q": "a", "a": "b"}), "c.jsonl")
    assert (
        read_sft_jsonl(custom, prompt_field="q", response_field="a")[0].messages[1].content == "b"
    )


BAD_LINES = [
    ('{"prompt": "a", "response": ', DataError, "line 2: invalid JSON"),
    ("[1, 2]", DataError, "line 2: expected a JSON object, got list"),
    ('{"text": "a", "label": 1}', DataError, "no 'messages' and no 'prompt'/'response' fields"),
    ('{"prompt": "a", "answer": "b"}', DataError, "no 'response' field (the line has keys: "),
    ('{"response": "b"}', DataError, "no 'prompt' field"),
    ('{"prompt": 3, "response": "b"}', DataError, "field 'prompt' must be a string, got int"),
    ('{"prompt": "a", "response": "b", "system": 1}', DataError, "'system' must be a string"),
    ('{"prompt": "a", "response": "  "}', DataError, "assistant turn is empty"),
    ('{"messages": []}', DataError, "must be a non-empty list"),
    ('{"messages": "hi"}', DataError, "must be a non-empty list"),
    ('{"messages": [{"role": "user"}]}', DataError, 'message 1: each message needs "role"'),
    ('{"messages": [{"role": "bot", "content": "x"}]}', DataError, "unknown role 'bot'"),
    ('{"messages": [{"role": "asistant", "content": "x"}]}', DataError, "did you mean"),
    ('{"messages": [{"role": "user", "content": 1}]}', DataError, "'content' must be a string"),
    ('{"messages": [{"role": "user", "content": "x"}]}', DataError, "no assistant turn"),
]


@pytest.mark.parametrize(("line", "exc", "fragment"), BAD_LINES)
def test_bad_lines_name_file_and_line(tmp_path: Path, line: str, exc: type, fragment: str) -> None:
    good = json.dumps({"prompt": "a", "response": "b"})
    path = write(tmp_path, f"{good}\n{line}\n")
    with pytest.raises(exc, match="data.jsonl line 2") as info:
        read_sft_jsonl(path)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="has no examples"):
        read_sft_jsonl(write(tmp_path, "\n  \n"))
    with pytest.raises(DataError, match="line 2 is not valid UTF-8"):
        read_sft_jsonl(write(tmp_path, b'{"prompt": "a", "response": "b"}\n{"prompt": "\xff"}'))
    with pytest.raises(MissingFileError, match="not found"):
        read_sft_jsonl(tmp_path / "nope.jsonl")
    # a UTF-8 BOM is not an error
    bom = write(tmp_path, b'\xef\xbb\xbf{"prompt": "a", "response": "b"}\n')
    assert len(read_sft_jsonl(bom)) == 1


def test_the_lm_loss_sees_only_response_targets() -> None:
    from groundup.train.losses import SparseCategoricalCrossentropy

    tok = raw_bytes()
    out = encode_sft(convs_of_lengths(6), tok, block_size=64, template="plain", packing=True)
    logits = torch.randn(
        *out.labels.shape, tok.vocab_size, generator=torch.Generator().manual_seed(0)
    )
    loss = SparseCategoricalCrossentropy(from_logits=True)(logits, out.labels)
    keep = out.labels != IGNORE_INDEX
    want = torch.nn.functional.cross_entropy(logits[keep], out.labels[keep])
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
