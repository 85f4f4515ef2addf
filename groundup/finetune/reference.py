"""The policy and its reference model, as one module the Trainer trains (task dpo, orpo, simpo).

`PreferencePolicy(policy, reference)` takes a batch of encoded pairs (B, 2, 2, T) and returns
the per-pair statistics the preference losses read (B, 6): the policy's summed log-probability
of the chosen and rejected replies, their token counts, and the reference's sums. The reference
runs once per batch, under no_grad and in eval mode, as:

- "copy": a frozen copy of the starting model (full fine-tuning). It is held outside the
  module tree, so it is not in the state dict (checkpoints stay one model), nor in
  `parameters()` (the optimizer and DDP never see it); `.to()` moves it all the same.
- "adapters": the policy itself with its LoRA adapters bypassed (`adapters_disabled`): the
  frozen base weights are the starting model, so no second copy is held in memory.
- "none": ORPO and SimPO need no reference; its columns are zeros.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from groundup.checkpoint import unwrap
from groundup.finetune.lora import LoRALinear
from groundup.finetune.sft import IGNORE_INDEX

ReferenceKind = Literal["copy", "adapters", "none"]


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block every (unmerged) `LoRALinear` of `model` computes its base layer alone,
    exactly: y = x W^T + b, as before apply_lora.

    It sets the layers' `merged` flag, the one `LoRALinear.forward` reads to skip the adapter
    path (W holds no delta while unmerged, so skipping it gives the base layer). Trap: do not
    merge or unmerge inside the block."""
    layers = [m for m in unwrap(model).modules() if isinstance(m, LoRALinear) and not m.merged]
    for m in layers:
        m.merged = True
    try:
        yield model
    finally:
        for m in layers:
            m.merged = False


def frozen_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` in eval mode with no gradients: the reference of full fine-tuning."""
    ref = copy.deepcopy(unwrap(model))
    ref.requires_grad_(False)
    return ref.eval()


def sequence_logps(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """(summed log-probability of the trained targets (N,), their count (N,)) from logits
    (N, T, V) and targets (N, T) with -100 where nothing is scored; in fp32 at least."""
    dtype = torch.promote_types(logits.dtype, torch.float32)
    nll = F.cross_entropy(
        logits.flatten(0, 1).to(dtype),  # (N*T, V)
        targets.flatten(),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view(targets.shape)  # (N, T)
    return -nll.sum(-1), (targets != IGNORE_INDEX).sum(-1)


class PreferencePolicy(nn.Module):
    """forward(pairs (B, 2, 2, T)) -> (B, 6): log pi(chosen), log pi(rejected), n chosen,
    n rejected, log ref(chosen), log ref(rejected) (columns of `preference_loss`)."""

    def __init__(self, policy: nn.Module, reference: ReferenceKind) -> None:
        super().__init__()
        if reference not in ("copy", "adapters", "none"):
            raise ValueError(f"unknown reference kind {reference!r}")
        if reference == "adapters" and not any(isinstance(m, LoRALinear) for m in policy.modules()):
            raise ValueError("reference 'adapters' needs a policy with LoRA adapters")
        self.policy = policy
        self.reference = reference
        # a tuple, not an attribute nn.Module would register: outside state_dict and parameters
        self._frozen: tuple[nn.Module, ...] = (frozen_copy(policy),) if reference == "copy" else ()

    def _apply(self, fn, recurse: bool = True):  # type: ignore[no-untyped-def]
        """`.to()`, `.double()`, `.cuda()` reach the frozen copy too."""
        super()._apply(fn, recurse)
        for ref in self._frozen:
            ref._apply(fn, recurse)
        return self

    @torch.no_grad()
    def reference_logps(self, ids: Tensor, targets: Tensor) -> Tensor:
        """(N,) summed log-probabilities of the targets under the reference model."""
        if self.reference == "none":
            return torch.zeros(ids.shape[0], device=ids.device)
        if self.reference == "copy":
            return sequence_logps(self._frozen[0](ids), targets)[0]
        was_training = self.policy.training
        self.policy.eval()  # no dropout: the reference is the starting model, deterministic
        try:
            with adapters_disabled(self.policy):
                return sequence_logps(self.policy(ids), targets)[0]
        finally:
            self.policy.train(was_training)

    def forward(self, pairs: Tensor) -> Tensor:
        B, _, _, T = pairs.shape
        ids = pairs[:, :, 0].reshape(2 * B, T)  # (2B, T): chosen, rejected, chosen, ...
        targets = pairs[:, :, 1].reshape(2 * B, T)
        logp, count = sequence_logps(self.policy(ids), targets)  # (2B,), (2B,)
        ref = self.reference_logps(ids, targets).to(logp.dtype)
        return torch.cat(
            [logp.view(B, 2), count.to(logp.dtype).view(B, 2), ref.view(B, 2)], dim=1
        )  # (B, 6)
