"""Chat templates as Jinja strings: the `chat_template` convention of Hugging Face tokenizers.

A template is Jinja over `messages` (a list of {"role", "content"}), `add_generation_prompt`
and the tokenizer's `bos_token`, `eos_token`, `pad_token`, `unk_token`. The environment is the
one transformers renders in (sandboxed, `trim_blocks`, `lstrip_blocks`, `loopcontrols`,
`raise_exception`, `tojson`, `strftime_now`), so a template gives the same text here as in
`AutoTokenizer.apply_chat_template`, and an export carries it as it is.

What is trained (the assistant's reply and the marker that ends it) is found in one of two ways:
- `{% generation %}...{% endgeneration %}` around the reply, transformers' own marker for
  `return_assistant_tokens_mask`: the template's author says exactly what is trained. The
  built-in templates use it.
- otherwise, turn by turn: the conversation up to an assistant turn with the generation prompt,
  then the conversation through that turn; the text between them, less trailing whitespace
  (the separator before the next turn), is the reply and its end marker. This needs each
  rendering of a shorter conversation to be a prefix of the whole, which most templates are;
  one that is not (it rewrites earlier turns) is an error that asks for generation markers.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from groundup.errors import ConfigError, DataError, MissingFileError, TokenizerError
from groundup.registry import did_you_mean

# Unicode noncharacters (reserved for internal use, never in interchange text): the output of
# a {% generation %} block is wrapped in them while rendering, then they are cut out.
GEN_OPEN, GEN_CLOSE = "\ufdd0", "\ufdd1"
NEUTRAL = "\ufdd2"  # stands in for a special-token string inside content (see sft.py)
RESERVED = (GEN_OPEN, GEN_CLOSE)  # content may not hold these
_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")
TEMPLATE_SUFFIXES = (".jinja", ".jinja2", ".j2")


@dataclass(frozen=True)
class Message:
    """One turn of a conversation."""

    role: str  # "system" | "user" | "assistant"
    content: str


# ---- the built-in templates ------------------------------------------------------------------
# Block tags sit on their own lines (trim_blocks/lstrip_blocks drop those lines); text is
# written by {{- ... -}} so the template's own newlines never reach the output.
PLAIN = r"""{% for message in messages %}
{% if message['role'] == 'assistant' %}
{{- '### Response:\n' -}}
{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}
{% elif message['role'] == 'user' %}
{{- '### Instruction:\n' + message['content'] + '\n\n' -}}
{% else %}
{{- message['content'] + '\n\n' -}}
{% endif %}
{% endfor %}
{% if add_generation_prompt %}
{{- '### Response:\n' -}}
{% endif %}
"""

CHATML = r"""{% for message in messages %}
{{- '<|im_start|>' + message['role'] + '\n' -}}
{% if message['role'] == 'assistant' %}
{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}
{% else %}
{{- message['content'] + '<|im_end|>' -}}
{% endif %}
{{- '\n' -}}
{% endfor %}
{% if add_generation_prompt %}
{{- '<|im_start|>assistant\n' -}}
{% endif %}
"""

LLAMA3 = r"""{{- '<|begin_of_text|>' -}}
{% for message in messages %}
{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' -}}
{% if message['role'] == 'assistant' %}
{% generation %}{{ message['content'] + '<|eot_id|>' }}{% endgeneration %}
{% else %}
{{- message['content'] + '<|eot_id|>' -}}
{% endif %}
{% endfor %}
{% if add_generation_prompt %}
{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
{% endif %}
"""


@dataclass(frozen=True)
class ChatTemplate:
    """A Jinja chat template and where it came from (`name`: a built-in's name, a file path,
    or "inline"). `source` is what an export writes as `chat_template`."""

    name: str
    source: str
    builtin: bool = False

    @property
    def spec(self) -> str:
        """What a run records to find this template again: a built-in's name, else the Jinja
        text itself (a file may have moved by the time the run is used)."""
        return self.name if self.builtin else self.source

    @property
    def uses_generation_markers(self) -> bool:
        return _GENERATION_TAG.search(self.source) is not None


CHAT_TEMPLATES: dict[str, ChatTemplate] = {
    # Alpaca-like; ends a reply with the tokenizer's end-of-text token (groundup's tokenizers
    # hold "<|endoftext|>" as one special id), so it suits a model pretrained with groundup.
    "plain": ChatTemplate("plain", PLAIN, builtin=True),
    "chatml": ChatTemplate("chatml", CHATML, builtin=True),  # Qwen / OpenAI ChatML
    "llama3": ChatTemplate("llama3", LLAMA3, builtin=True),  # Llama 3 instruct
}


def pick_template(tokenizer: Any) -> str:
    """The template whose markers this tokenizer holds as special tokens, else "plain"."""
    special = set(tokenizer.special_tokens)
    if {"<|im_start|>", "<|im_end|>"} <= special:
        return "chatml"
    if {"<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"} <= special:
        return "llama3"
    return "plain"


# ---- finding a template ----------------------------------------------------------------------
def _looks_like_jinja(spec: str) -> bool:
    return "{{" in spec or "{%" in spec


def resolve_template(spec: str | ChatTemplate, tokenizer: Any = None) -> ChatTemplate:
    """A template from a name (auto, plain, chatml, llama3; case-insensitive), a path to a
    Jinja file, or an inline Jinja string. "auto" picks by the tokenizer (plain without one).
    Only finds it; `load_template` also checks it."""
    if isinstance(spec, ChatTemplate):
        return spec
    if not isinstance(spec, str):
        raise ConfigError(
            f"data.template must be a name, a .jinja file or a Jinja string, got "
            f"{type(spec).__name__}"
        )
    key = spec.strip().lower()
    if key == "auto":
        return CHAT_TEMPLATES[pick_template(tokenizer) if tokenizer is not None else "plain"]
    if key in CHAT_TEMPLATES:
        return CHAT_TEMPLATES[key]
    if _looks_like_jinja(spec):
        return ChatTemplate("inline", spec)
    path = Path(spec).expanduser()
    if path.is_file():
        try:
            return ChatTemplate(str(spec), path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise ConfigError(
                f"chat template file {spec} is not UTF-8 text; save it as UTF-8"
            ) from None
    if path.suffix in TEMPLATE_SUFFIXES or "/" in spec or "\\" in spec:
        raise MissingFileError(f"chat template file {spec} not found; check data.template")
    names = ("auto", *CHAT_TEMPLATES)
    raise ConfigError(
        f"unknown chat template '{spec}'{did_you_mean(key, names)}; use one of "
        f"{', '.join(names)}, a path to a .jinja file or a Jinja string"
    )


def load_template(spec: str | ChatTemplate, tokenizer: Any = None) -> ChatTemplate:
    """`resolve_template`, then the checks a config load runs: the Jinja parses (a syntax
    error names the file and line), and a probe conversation renders with its replies found."""
    tmpl = resolve_template(spec, tokenizer)
    tokens = template_tokens(tokenizer) if tokenizer is not None else _PLACEHOLDER_TOKENS
    _probe(tmpl, tuple(sorted(tokens.items())))
    return tmpl


# ---- the Jinja environment -------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _environment() -> Any:
    """The sandboxed environment (jinja2 imported here: only SFT and exports need it)."""
    import jinja2
    from jinja2 import nodes
    from jinja2.ext import Extension
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationBlock(Extension):
        """{% generation %}...{% endgeneration %}: wraps the block's output in markers."""

        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            call = self.call_method("_mark", [], [], None, None)
            return nodes.CallBlock(call, [], [], body).set_lineno(lineno)

        def _mark(self, caller: Any) -> str:
            return f"{GEN_OPEN}{caller()}{GEN_CLOSE}"

    def raise_exception(message: str) -> None:
        raise jinja2.TemplateError(message)

    def tojson(value: Any, ensure_ascii: bool = False, indent: Any = None, **kw: Any) -> str:
        # Jinja's own tojson escapes HTML characters; chat templates want plain JSON
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, **kw)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[GenerationBlock, "jinja2.ext.loopcontrols"],
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


@functools.lru_cache(maxsize=64)
def _compiled(source: str, name: str) -> Any:
    import jinja2

    try:
        return _environment().from_string(source)
    except jinja2.TemplateSyntaxError as e:
        where = "the inline data.template" if name == "inline" else f"chat template {name}"
        msg = " ".join(str(e.message or "invalid syntax").split())
        raise ConfigError(
            f"{where} line {e.lineno}: Jinja syntax error: {msg}; fix the template"
        ) from None


@functools.lru_cache(maxsize=64)
def _variables(source: str, name: str) -> frozenset[str]:
    """The names the template reads from its context (messages, eos_token, ...)."""
    from jinja2 import meta

    _compiled(source, name)  # a syntax error is reported once, with its line
    return frozenset(meta.find_undeclared_variables(_environment().parse(source)))


def needs_eos(tmpl: ChatTemplate) -> bool:
    """Whether the template writes the tokenizer's end-of-text token (`eos_token`)."""
    return "eos_token" in _variables(tmpl.source, tmpl.name)


def template_tokens(tokenizer: Any) -> dict[str, str]:
    """The special-token strings a template sees, named as an export's tokenizer_config.json
    names them (hf_export writes these): bos (a begin-of-text name, else the end-of-text
    token), eos (end-of-text), pad and unk when the tokenizer has them."""
    from groundup.interop.hf_dir import _BOS_NAMES, _UNK_NAMES

    def first(names: Sequence[str]) -> int | None:
        return next((i for i in map(tokenizer.token_to_id, names) if i is not None), None)

    eot, bos = tokenizer.eot_id, first(_BOS_NAMES)
    ids = {
        "bos_token": eot if bos is None else bos,
        "eos_token": eot,
        "pad_token": tokenizer.pad_id,
        "unk_token": first(_UNK_NAMES),
    }
    out = {}
    for role, i in ids.items():
        token = tokenizer.id_to_token(i) if i is not None else None
        if token is not None:
            out[role] = token
    return out


_PLACEHOLDER_TOKENS = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}


# ---- rendering -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rendered:
    """A conversation as the template writes it; `spans` are the [start, end) character
    ranges of `text` that are trained (each assistant reply and its end marker), in order."""

    text: str
    spans: tuple[tuple[int, int], ...]


def _raw(
    tmpl: ChatTemplate,
    messages: Sequence[Mapping[str, str]],
    tokens: Mapping[str, str],
    add_generation_prompt: bool,
    where: str,
) -> str:
    import jinja2

    compiled = _compiled(tmpl.source, tmpl.name)
    try:
        return compiled.render(
            messages=list(messages), add_generation_prompt=add_generation_prompt, **tokens
        )
    except (jinja2.TemplateError, TypeError, ValueError, KeyError, IndexError) as e:
        msg = " ".join(str(e).split()) or type(e).__name__
        who = f"{where}: " if where else ""
        raise DataError(
            f"{who}chat template {tmpl.name} failed on this conversation ({msg}); fix the "
            "conversation or the template"
        ) from None


def _cut_markers(raw: str) -> tuple[str, list[tuple[int, int]]]:
    """The text without generation markers, and the ranges the markers enclosed."""
    if GEN_OPEN not in raw:
        return raw, []
    text: list[str] = []
    spans: list[tuple[int, int]] = []
    n, depth, start = 0, 0, 0
    for piece in re.split(f"([{GEN_OPEN}{GEN_CLOSE}])", raw):
        if piece == GEN_OPEN:
            if depth == 0:
                start = n
            depth += 1
        elif piece == GEN_CLOSE:
            depth -= 1
            if depth == 0 and n > start:
                spans.append((start, n))
        else:
            text.append(piece)
            n += len(piece)
    return "".join(text), spans


def render_chat(
    tmpl: ChatTemplate,
    messages: Sequence[Message],
    tokens: Mapping[str, str],
    add_generation_prompt: bool = False,
    where: str = "",
) -> Rendered:
    """The conversation through the template, with the trained spans found (module doc)."""
    for m in messages:
        if any(c in m.content for c in RESERVED):
            raise DataError(
                f"{where or 'a message'}: the content holds a Unicode noncharacter "
                "(U+FDD0 or U+FDD1) that groundup reserves for rendering; remove it"
            )
    dicts = [{"role": m.role, "content": m.content} for m in messages]
    text, spans = _cut_markers(_raw(tmpl, dicts, tokens, add_generation_prompt, where))
    if tmpl.uses_generation_markers:
        return Rendered(text, tuple(spans))
    found = []
    for k, m in enumerate(messages):
        if m.role != "assistant":
            continue
        before = _cut_markers(_raw(tmpl, dicts[:k], tokens, True, where))[0]
        through = _cut_markers(_raw(tmpl, dicts[: k + 1], tokens, False, where))[0]
        if not (through.startswith(before) and text.startswith(through)):
            raise ConfigError(
                f"chat template {tmpl.name}: the conversation rendered turn by turn is not a "
                f"prefix of the whole (assistant turn {len(found) + 1}"
                f"{' of ' + where if where else ''}), so its reply cannot be found; mark the "
                "reply with {% generation %}...{% endgeneration %} in the template"
            )
        reply = through[len(before) :].rstrip()
        found.append((len(before), len(before) + len(reply)))
    return Rendered(text, tuple(found))


_PROBE = (
    Message("user", "Probe question one?"),
    Message("assistant", "Probe reply one."),
    Message("user", "Probe question two?"),
    Message("assistant", "Probe reply two."),
)


@functools.lru_cache(maxsize=64)
def _probe(tmpl: ChatTemplate, tokens: tuple[tuple[str, str], ...]) -> str:
    """Render a small conversation and check what training relies on; returns the text that
    ends an assistant turn (its stop marker)."""
    toks = dict(tokens)
    if needs_eos(tmpl) and "eos_token" not in toks:
        raise TokenizerError(
            f"chat template '{tmpl.name}' ends each reply with the end-of-text token "
            "(eos_token), but this tokenizer has none; use a tokenizer with '<|endoftext|>' "
            "(groundup's default) or another template (chatml, llama3)"
        )
    where = f"chat template {tmpl.name} (a probe conversation)"
    try:
        out = render_chat(tmpl, _PROBE, toks, where="")
        asked = render_chat(tmpl, _PROBE[:1], toks, add_generation_prompt=True).text
        plain = render_chat(tmpl, _PROBE[:1], toks).text
    except DataError as e:
        raise ConfigError(f"{where}: {e}") from None
    replies = [m.content for m in _PROBE if m.role == "assistant"]
    spans = [out.text[a:b] for a, b in out.spans]
    if len(spans) != len(replies) or not all(r in s for r, s in zip(replies, spans)):
        raise ConfigError(
            f"{where}: the trained parts {spans!r} are not the assistant's replies "
            f"{replies!r}; put {{% generation %}}...{{% endgeneration %}} around each reply "
            "and its end marker"
        )
    if asked == plain:
        raise ConfigError(
            f"chat template {tmpl.name} ignores add_generation_prompt, so a prompt for "
            "generation has no assistant header; add {% if add_generation_prompt %}...{% endif %}"
        )
    last = spans[-1]
    return last[last.rindex(replies[-1]) + len(replies[-1]) :]


def assistant_end(tmpl: ChatTemplate, tokens: Mapping[str, str]) -> str:
    """The text a template puts after an assistant's reply, as trained ("<|im_end|>")."""
    return _probe(tmpl, tuple(sorted(tokens.items())))
