"""Masked-language-model batches: BERT's dynamic masking on windows of token shards.

A window is `[CLS]` followed by block_size - 1 tokens of the stream (documents are separated
by `[SEP]` in the shards). Of the tokens that are not special, `probability` (15%) are chosen;
of those, 80% become `[MASK]`, 10% a random ordinary token, 10% stay as they are; the targets
are the original ids at the chosen positions and -100 elsewhere, so the loss is over the chosen
tokens only and normalized by their count (over every micro-batch and rank).

The mask of batch k comes from a generator seeded by (seed, k): a new mask every time a window
is drawn, the same on resume (the state is the batch counter) and the same whether one process
or N ranks draw the global batch. A validation window is masked with its start offset as the
key and a fixed seed, so each evaluation scores the same masked tokens.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from groundup.config import check
from groundup.data.windows import RandomWindows, SequentialWindows, mix64
from groundup.errors import TokenizerError

BERT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
IGNORE = -100


@dataclass
class MaskingConfig:
    """How tokens are masked for `objective: mlm` (BERT's recipe by default)."""

    probability: float = 0.15  # share of the ordinary tokens that are predicted
    mask_share: float = 0.8  # of those: replaced by [MASK]
    random_share: float = 0.1  # of those: replaced by a random token (the rest stay as they are)
    whole_word: bool = False  # choose whole words (all their pieces), not single pieces
    seq_len: int | None = None  # tokens per sequence, [CLS] included; null: model.block_size
    val_seed: int = 1234  # the fixed mask of the validation batches

    def __post_init__(self) -> None:
        check(
            0.0 < self.probability < 1.0,
            f"mlm.probability must be in (0, 1), got {self.probability}",
        )
        check(
            0.0 <= self.mask_share
            and 0.0 <= self.random_share
            and self.mask_share + self.random_share <= 1.0,
            f"mlm.mask_share + mlm.random_share must be shares in [0, 1] adding to at most 1, got "
            f"{self.mask_share} + {self.random_share}",
        )
        check(
            self.seq_len is None or self.seq_len >= 2,
            f"mlm.seq_len must be >= 2 ([CLS] and one token) or null, got {self.seq_len}",
        )


class TokenMasker:
    """Masks a batch of token ids; `(x, y) = masker(ids, key)` for a batch key (see module)."""

    def __init__(
        self, config: MaskingConfig, tokenizer: Any, vocab_size: int, seed: int = 0
    ) -> None:
        missing = [t for t in ("[CLS]", "[SEP]", "[MASK]") if tokenizer.token_to_id(t) is None]
        if missing:
            raise TokenizerError(
                f"masked-language-model pretraining needs the special tokens [CLS], [SEP] and "
                f"[MASK]; this tokenizer lacks {', '.join(missing)}: train one with them "
                "(leave tokenizer.path unset) or add them to yours"
            )
        self.config, self.seed = config, seed
        self.cls_id = tokenizer.token_to_id("[CLS]")
        self.mask_id = tokenizer.token_to_id("[MASK]")
        specials = [tokenizer.token_to_id(t) for t in tokenizer.special_tokens]
        specials = sorted({i for i in specials if i is not None})
        self.is_special = torch.zeros(vocab_size, dtype=torch.bool)
        self.is_special[specials] = True
        # random replacements are ordinary tokens of the tokenizer (never a special one)
        self.ordinary = torch.tensor(
            [i for i in range(tokenizer.vocab_size) if i not in set(specials)], dtype=torch.long
        )
        self.starts_word = _word_starts(tokenizer, vocab_size) if config.whole_word else None
        self.ends_space = _ends_space(tokenizer, vocab_size) if config.whole_word else None
        self._gen = torch.Generator()
        self._device_tables: dict[str, Any] = {}

    def __call__(
        self, ids: torch.Tensor, key: int, part: slice | None = None, rows: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask `ids` (B, T). Several ranks: `rows` is the global batch and `part` this rank's
        rows of it, so the draws are those of one process masking the whole global batch."""
        cfg = self.config
        B, T = ids.shape
        total = rows if rows is not None else B
        part = part if part is not None else slice(0, B)
        self._gen.manual_seed(mix64(mix64(self.seed) ^ key))
        noise = torch.rand(3, total, T, generator=self._gen)[:, part]  # choose, how, which
        pick = torch.randint(len(self.ordinary), (total, T), generator=self._gen)[part]
        noise, pick = noise.to(ids.device), pick.to(ids.device)
        tables = self._tables(ids.device)
        special = tables["is_special"][ids]
        if self.starts_word is None:
            chosen = (noise[0] < cfg.probability) & ~special
        else:
            starts = tables["starts_word"][ids]
            starts[:, 1:] |= tables["ends_space"][ids[:, :-1]]
            chosen = _whole_words(ids, noise[0] < cfg.probability, starts, special)
        y = torch.where(chosen, ids, torch.full_like(ids, IGNORE))
        x = ids.clone()
        to_mask = chosen & (noise[1] < cfg.mask_share)
        to_random = chosen & ~to_mask & (noise[1] < cfg.mask_share + cfg.random_share)
        x[to_mask] = self.mask_id
        x[to_random] = tables["ordinary"][pick[to_random]]
        return x, y

    def _tables(self, device: torch.device) -> dict[str, torch.Tensor]:
        """The lookup tables on `device`, moved there once (not once a batch)."""
        if self._device_tables.get("device") != device:
            names = ("is_special", "ordinary", "starts_word", "ends_space")
            moved = {n: getattr(self, n).to(device) for n in names if getattr(self, n) is not None}
            self._device_tables = {"device": device, **moved}
        return self._device_tables


def _word_starts(tokenizer: Any, vocab_size: int) -> torch.Tensor:
    """(vocab,) True where a token begins a word. Byte-level BPE: a token with the space
    marker (Ġ) or one that starts with punctuation (`.`, `(`); WordPiece: a token without the
    ## continuation mark; special tokens always. (A token after one that ends in whitespace,
    a newline or tab say, also begins a word: see `_ends_space`.)"""
    tokens = [tokenizer.id_to_token(i) or "" for i in range(min(vocab_size, tokenizer.vocab_size))]
    byte_level = any(t.startswith("Ġ") for t in tokens)
    specials = set(tokenizer.special_tokens)
    starts = torch.ones(vocab_size, dtype=torch.bool)
    for i, token in enumerate(tokens):
        if token in specials:
            continue
        if byte_level:
            starts[i] = token.startswith("Ġ") or not token[:1].isalnum()
        else:
            starts[i] = not token.startswith("##")
    return starts


def _ends_space(tokenizer: Any, vocab_size: int) -> torch.Tensor:
    """(vocab,) True for byte-level tokens that end in whitespace (Ġ space, Ċ newline, ĉ tab):
    the next token begins a word even without a space marker of its own."""
    ends = torch.zeros(vocab_size, dtype=torch.bool)
    for i in range(min(vocab_size, tokenizer.vocab_size)):
        ends[i] = (tokenizer.id_to_token(i) or "").endswith(("Ġ", "Ċ", "ĉ"))
    return ends


def _whole_words(
    ids: torch.Tensor, at_start: torch.Tensor, starts: torch.Tensor, special: torch.Tensor
) -> torch.Tensor:
    """Positions whose word was chosen: a word is chosen by the draw at its first piece
    (`starts`: (B, T) True where a word begins)."""
    B, T = ids.shape
    start = starts | special
    start[:, 1:] |= special[:, :-1]  # the token after [CLS]/[SEP] begins a word
    start[:, 0] = True
    positions = torch.arange(T, device=ids.device).expand(B, T)
    first = torch.where(start, positions, torch.zeros_like(positions)).cummax(dim=1).values
    return at_start.gather(1, first) & ~special


class MaskedWindows:
    """Endless masked (x, y) batches of `[CLS]` + seq_len - 1 random stream tokens.

    Wraps a `RandomWindows` (its state_dict is this one's: the batch counter), ranks included.
    """

    def __init__(self, windows: RandomWindows, masker: TokenMasker) -> None:
        self.windows, self.masker = windows, masker
        self.world_size = windows.world_size  # the Trainer checks each rank gets its own part

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.windows
        key = w.step
        tokens, _ = next(w)  # (B, seq_len - 1)
        ids = _with_cls(tokens, self.masker.cls_id)
        if w.world_size is None:
            return self.masker(ids, key)
        part = slice(w.rank * w.batch_size, (w.rank + 1) * w.batch_size)
        return self.masker(ids, key, part=part, rows=w.global_batch)

    def state_dict(self) -> dict[str, Any]:
        return self.windows.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.windows.load_state_dict(state)


class MaskedSequentialWindows:
    """A deterministic masked pass over a split (validation): each window is masked with its
    start offset as the key (and the masker's fixed seed), so every evaluation scores the same
    tokens, whatever the batch size (one process or each of N ranks)."""

    def __init__(self, windows: SequentialWindows, masker: TokenMasker) -> None:
        self.windows, self.masker = windows, masker

    def __len__(self) -> int:
        return len(self.windows)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        b = self.windows.batch_size
        for i, (tokens, _) in enumerate(self.windows):
            ids = _with_cls(tokens, self.masker.cls_id)
            starts = self.windows.starts[i * b : i * b + len(ids)]
            rows = [self.masker(ids[r : r + 1], int(start)) for r, start in enumerate(starts)]
            yield torch.cat([x for x, _ in rows]), torch.cat([y for _, y in rows])


def _with_cls(tokens: torch.Tensor, cls_id: int) -> torch.Tensor:
    cls = torch.full((tokens.shape[0], 1), cls_id, dtype=tokens.dtype, device=tokens.device)
    return torch.cat([cls, tokens], dim=1)  # (B, T)
