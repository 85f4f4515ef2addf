"""Reward models (task reward): a sequence classifier with one output, trained on preference
pairs with the Bradley-Terry loss -log sigmoid(score(chosen) - score(rejected)).

The model is `GPTForSequenceClassification(config, 1)`, saved and loaded like any classifier
(`load_model(run)`), so it exports to transformers' `AutoModelForSequenceClassification` as a
1-label model. A score reads the conversation through the end of its final reply, encoded as
in training (`score_replies` does it for new prompts and replies).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from groundup.errors import ConfigError
from groundup.finetune.preference import encode_replies, last_target
from groundup.finetune.preference_loss import pair_sum
from groundup.finetune.sft import IGNORE_INDEX, Message, get_template
from groundup.train.losses import Loss


def full_sequences(pairs: Tensor, pad_id: int) -> Tensor:
    """(2B, T + 1) token ids of each sequence through its last trained token, right-padded with
    pad_id, from encoded pairs (B, 2, 2, T): the ids plus the last target put back."""
    B, _, _, T = pairs.shape
    ids = pairs[:, :, 0].reshape(2 * B, T)
    targets = pairs[:, :, 1].reshape(2 * B, T)
    last = last_target(targets)  # (2B,): every row has one (encode_pairs keeps no other)
    full = torch.cat([ids, torch.full_like(ids[:, :1], pad_id)], dim=1)  # (2B, T + 1)
    rows = torch.arange(2 * B, device=ids.device)
    full[rows, last + 1] = targets[rows, last]
    return full


class PairScorer(nn.Module):
    """forward(pairs (B, 2, 2, T)) -> (B, 2) scores of the chosen and rejected sequences."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        pad_id = getattr(classifier, "pad_id", None)
        if getattr(classifier, "num_labels", None) != 1 or pad_id is None:
            raise ConfigError(
                "a reward model is a sequence classifier with one output and a padding id"
            )
        self.classifier, self.pad_id = classifier, int(pad_id)

    def forward(self, pairs: Tensor) -> Tensor:
        B = pairs.shape[0]
        return self.classifier(full_sequences(pairs, self.pad_id)).view(B, 2)  # (B, 2)


class BradleyTerryLoss(Loss):
    """-log sigmoid(score(chosen) - score(rejected)) per pair, over scores (B, 2)."""

    name = "bradley_terry"

    def sum(self, outputs: Tensor, targets: Tensor, weight: Tensor | None = None) -> Tensor:
        s = outputs.to(torch.promote_types(outputs.dtype, torch.float32))
        return pair_sum(-F.logsigmoid(s[:, 0] - s[:, 1]), weight)

    def probabilities(self) -> Callable[[Tensor], Tensor]:
        """The metrics read the scores themselves as the (chosen, rejected) rewards."""
        return lambda scores: scores


@torch.no_grad()
def score_replies(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str | Sequence[Message]],
    replies: Sequence[str],
    template: str = "auto",
    max_len: int | None = None,
    batch_size: int = 32,
) -> list[float]:
    """The reward model's score of each (prompt, reply): the conversation rendered with the
    chat template it was trained with, through the end of the reply, cut to max_len tokens
    (default: the model's block size), exactly as training read its pairs.

    `model` is a loaded reward model (`load_model(run).model`); a prompt is the text of a user
    message or a list of messages."""
    if len(prompts) != len(replies):
        raise ConfigError(f"{len(prompts)} prompts but {len(replies)} replies; give one each")
    if getattr(model, "num_labels", None) != 1 or getattr(model, "pad_id", None) is None:
        raise ConfigError("score_replies needs a reward model (a one-output classifier)")
    tmpl = get_template(template, tokenizer)
    limit = (max_len or model.config.block_size) - 1  # the ids, then the last target
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    scores: list[float] = []
    for start in range(0, len(prompts), batch_size):
        items = [
            ((Message("user", p),) if isinstance(p, str) else tuple(p), r, f"reply {start + i}")
            for i, (p, r) in enumerate(
                zip(prompts[start : start + batch_size], replies[start : start + batch_size])
            )
        ]
        rows = encode_replies(items, tokenizer, tmpl, limit, model.pad_id)
        width = max(len(ids) for ids, _, _ in rows)
        ids = torch.full((len(rows), width + 1), model.pad_id, dtype=torch.int64)
        for i, (row_ids, targets, _) in enumerate(rows):
            if not bool((targets != IGNORE_INDEX).any()):
                raise ConfigError(
                    f"prompt {start + i} fills max_len {limit + 1} tokens: no room for its "
                    "reply; shorten it or raise max_len"
                )
            ids[i, : len(row_ids)] = row_ids
            ids[i, len(row_ids)] = targets[-1]  # the last target: the sequence's last token
        scores += model(ids.to(device))[:, 0].float().cpu().tolist()
    model.train(was_training)
    return scores
