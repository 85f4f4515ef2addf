"""Running a single-layer torch RNN the way Keras runs its recurrent layers, masks included.

Keras' rule for a mask (B, T) (True = a real step): at a masked step the state is carried
over unchanged and the output repeats the previous output (zeros before the first real step).
So with right-padding the final state is the state at the last real step.

Three paths, all giving that rule:
- no mask: torch's fused kernel over the whole sequence;
- a mask whose real steps form one contiguous block per row (right- or left-padding, which
  includes a right-padded batch read backwards): the block is rolled to the front, run on
  the fused kernel as a packed sequence, and the outputs are laid back out;
- any other mask: a step loop over the same weights (slower, exact).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

States = tuple[Tensor, ...]  # (h,) or (h, c), each (1, B, units) as torch keeps them


def run_rnn(
    rnn: nn.RNNBase, x: Tensor, state: States, mask: Tensor | None
) -> tuple[Tensor, States]:
    """Outputs (B, T, units) and final states of `rnn` over batch-first `x` from `state`."""
    if mask is None or bool(mask.all()):
        return _fused(rnn, x, state)
    batch, steps = mask.shape
    t = torch.arange(steps, device=mask.device)
    lengths = mask.sum(1)  # (B,)
    start = mask.int().argmax(1)  # (B,) first real step (0 for an all-padding row)
    block = (t >= start[:, None]) & (t < (start + lengths)[:, None])  # (B, T)
    if torch.equal(block, mask):
        return _contiguous(rnn, x, state, start, lengths)
    return step_loop(rnn, x, state, mask)


def _fused(rnn: nn.RNNBase, x: Tensor | nn.utils.rnn.PackedSequence, state: States) -> tuple:
    hx = state if isinstance(rnn, nn.LSTM) else state[0]
    out, final = rnn(x, hx)
    return out, (tuple(final) if isinstance(rnn, nn.LSTM) else (final,))


def _contiguous(
    rnn: nn.RNNBase, x: Tensor, state: States, start: Tensor, lengths: Tensor
) -> tuple[Tensor, States]:
    batch, steps, features = x.shape
    t = torch.arange(steps, device=x.device)
    if bool(start.any()):  # roll each row so its block starts at step 0
        idx = (t[None, :] + start[:, None]) % steps  # (B, T)
        x = x.gather(1, idx[:, :, None].expand(batch, steps, features))
    # pack_padded_sequence refuses empty rows: run them one step, then put their state back.
    packed = pack_padded_sequence(
        x, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False
    )
    out, final = _fused(rnn, packed, state)
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=steps)  # (B, T, units)
    # Back to Keras' layout: zeros before the block, the block, then its last output repeated.
    last = (lengths - 1).clamp(min=0)[:, None]  # (B, 1)
    pos = torch.minimum((t[None, :] - start[:, None]).clamp(min=0), last)  # (B, T)
    out = out.gather(1, pos[:, :, None].expand(batch, steps, out.shape[-1]))
    seen = (t[None, :] >= start[:, None]) & (lengths[:, None] > 0)  # (B, T)
    out = out * seen[:, :, None].to(out.dtype)
    empty = (lengths == 0)[None, :, None]  # (1, B, 1)
    final = tuple(torch.where(empty, s0, s) for s0, s in zip(state, final, strict=True))
    return out, final


def cell_step(rnn: nn.RNNBase, x_t: Tensor, state: States) -> States:
    """One step of torch's cell equations (the fused kernels compute the same)."""
    w_ih, w_hh = rnn.weight_ih_l0, rnn.weight_hh_l0
    b_ih = getattr(rnn, "bias_ih_l0", None) if rnn.bias else None
    b_hh = getattr(rnn, "bias_hh_l0", None) if rnn.bias else None
    h = state[0][0]  # (B, units)
    gi = nn.functional.linear(x_t, w_ih, b_ih)
    gh = nn.functional.linear(h, w_hh, b_hh)
    if isinstance(rnn, nn.LSTM):
        i, f, g, o = (gi + gh).chunk(4, dim=-1)  # torch's gate order
        c = torch.sigmoid(f) * state[1][0] + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h[None], c[None]
    if isinstance(rnn, nn.GRU):
        ir, iz, i_n = gi.chunk(3, dim=-1)
        hr, hz, h_n = gh.chunk(3, dim=-1)
        r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
        n = torch.tanh(i_n + r * h_n)  # reset after the recurrent matmul (Keras' default)
        return (((1 - z) * n + z * h)[None],)
    act = torch.tanh if rnn.nonlinearity == "tanh" else torch.relu
    return (act(gi + gh)[None],)


def step_loop(rnn: nn.RNNBase, x: Tensor, state: States, mask: Tensor) -> tuple[Tensor, States]:
    """Keras' masked recurrence, one step at a time."""
    prev = torch.zeros_like(state[0][0])  # (B, units): the output before the first real step
    outs = []
    for step in range(x.shape[1]):
        new = cell_step(rnn, x[:, step], state)
        keep = mask[:, step, None]  # (B, 1)
        state = tuple(torch.where(keep[None], n, s) for n, s in zip(new, state, strict=True))
        prev = torch.where(keep, new[0][0], prev)
        outs.append(prev)
    return torch.stack(outs, dim=1), state  # (B, T, units)
