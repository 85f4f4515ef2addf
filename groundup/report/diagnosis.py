"""Run diagnosis: what a run's curves say went wrong, with the numbers and the config keys to change.

Each detector reads the validation series (eval records, else epoch records with val_loss) and
the training series (train records, else epoch records' loss) of `metrics.jsonl`. Thresholds
come from the data's own noise: the robust spread of a curve's second differences (one kink
does not inflate it), the residuals of a line fitted to a curve's last third, the RMS step of
a spike's neighbours. The one fixed tolerance is `RELATIVE_TOLERANCE`: a change under 1% of a
loss is never worth a warning. With too few points a detector says nothing rather than guess.
docs/diagnosis.md states each rule in plain words.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any

from groundup.report.curves import (
    Curves,
    curve_noise,
    level_near,
    line_slope,
    number,
    parse_curves,
    read_optional,
    read_records,
    rms_step_noise,
    running_median,
)
from groundup.train.run_log import METRICS_FILE

RELATIVE_TOLERANCE = 0.01  # changes below 1% of the loss (or 1 accuracy point) are not findings
DATA_WAIT_LIMIT = 0.3  # share of wall time waiting for batches above which a run is data-bound
LR_FINDER_FACTOR = 10.0  # optim.lr this far from the LR finder's suggestion is flagged
MIN_VAL_POINTS = 4  # evaluations needed before claiming over- or under-fitting
MIN_TRAIN_POINTS = 6  # train log points needed for the shape of the training curve
SPIKE_SIGMAS = 6.0  # sigmas of local noise above the running median that make a spike
SPIKE_WINDOW = 10  # log points each side whose successive steps give a point's local noise
SLOW = 0.25  # a steady fall by less than this share of the starting loss is a crawl
EARLY_SHARE = 0.2  # trouble within the first 20% of the run points at the learning rate


@dataclass(frozen=True)
class Finding:
    """One thing a run's curves say, with the numbers behind it and the config keys to change."""

    kind: str  # overfitting, underfitting, divergence, loss_spikes, nan_steps, lr_too_high, ...
    title: str  # one line, e.g. "over-fits from step 1,200"
    evidence: str  # the numbers behind it
    advice: str  # what to do, naming the config keys and their current values
    keys: tuple[str, ...]  # dotted config keys the advice names
    step: int | None = None  # where it starts, when it has a step
    severity: str = "warning"  # warning | info


def diagnose(
    records: list[dict[str, Any]],
    config: dict[str, Any] | None = None,
    results: dict[str, Any] | None = None,
    lr_find: dict[str, Any] | None = None,
) -> list[Finding]:
    """The findings of one run: `records` are metrics.jsonl's parsed lines, `config` its
    config.yaml (for the command's key names and current values), `lr_find` an LR range
    test's {"lrs", "losses", "suggestion"}. `results` (results.json) is taken for detectors
    of the final figures; none reads it yet. A healthy run gives an empty list."""
    curves = parse_curves(records)
    keys = _Keys(config or {})
    findings: list[Finding] = []
    diverged = _divergence(curves, keys)
    nan = _nan_steps(curves, keys)
    findings += [f for f in (diverged, nan) if f is not None]
    if diverged is None:  # a blown-up run has no meaningful fitting regime or noise level
        findings += _spikes(curves, keys)
        overfit = _overfitting(curves, keys)
        if overfit is not None:
            findings.append(overfit)
        else:
            findings += [f for f in (_underfitting(curves, keys),) if f is not None]
        small = _small_validation(curves, keys)
        if small is not None:
            findings.append(small)
    findings += _learning_rate(curves, keys, diverged, nan, lr_find)
    data = _data_bound(curves, keys)
    if data is not None:
        findings.append(data)
    return findings


def format_findings(findings: list[Finding]) -> str:
    """The console block: one title line per finding, its evidence and what to change.
    Empty for no findings, so a healthy run prints nothing."""
    if not findings:
        return ""
    lines = [f"diagnosis: {len(findings)} finding{'s' if len(findings) > 1 else ''}"]
    for f in findings:
        lines.append(f"  [{f.severity}] {f.title}")
        lines.append(f"      {f.evidence}")
        lines.append(f"      fix: {f.advice}")
    return "\n".join(lines)


def diagnose_run(run_dir: str | Path) -> list[Finding]:
    """`diagnose` on a run folder: its metrics.jsonl, and config.yaml, results.json and
    lr_find.json where present (a killed run has no results.json)."""
    path = Path(run_dir)
    records = read_records(path / METRICS_FILE)
    config = read_optional(path / "config.yaml")
    results = read_optional(path / "results.json")
    lr_find = read_optional(path / "lr_find.json")
    return diagnose(records, config, results, lr_find)


def _tolerance(level: float) -> float:
    return RELATIVE_TOLERANCE * abs(level) + 1e-12


class _Keys:
    """Which config keys a command has, and their current values for the advice."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        if "layers" in config:
            self.command = "train"
        elif "base" in config or "task" in config:
            self.command = "finetune"
        elif "tokenizer" in config or "objective" in config:
            self.command = "pretrain"
        else:
            self.command = ""

    def get(self, key: str) -> Any:
        node: Any = self.config
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return node

    def now(self, key: str) -> str:
        """`key (now V)` when the run's config is known, else just `key`."""
        if not self.config:
            return key
        value = self.get(key)
        return f"{key} (now {'unset' if value is None else _fmt(value)})"

    def length(self) -> tuple[str, ...]:
        if self.command == "pretrain":
            return ("train.max_steps",)
        if self.command in ("train", "finetune") and self.get("train.max_steps") is None:
            return ("train.epochs",)
        return ("train.max_steps", "train.epochs")

    def regularizers(self) -> tuple[str, ...]:
        if self.command == "pretrain":
            return ("model.dropout", "optim.weight_decay")
        if self.command == "finetune":
            lora = ("lora.dropout",) if self.get("method") == "lora" else ()
            return ("base.dropout", *lora, "optim.weight_decay")
        return ("optim.weight_decay",)

    def validation(self) -> tuple[str, ...]:
        if self.command == "train":
            return ("data.val_size",)
        if self.command in ("pretrain", "finetune"):
            return ("data.val_fraction", "train.eval_batches")
        return ("train.eval_batches",)

    def lr(self) -> float | None:
        return number(self.get("optim.lr"))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def _step(step: int) -> str:
    return f"{step:,}"


def _stability_advice(keys: _Keys) -> tuple[str, tuple[str, ...]]:
    names = ("optim.lr", "train.clip_grad_norm", "optim.warmup_steps")
    lr = keys.lr()
    lower = f"lower {keys.now('optim.lr')}" + (f", e.g. to {lr / 10:.3g}" if lr else "")
    text = (
        f"{lower}; clip gradients with {keys.now('train.clip_grad_norm')} (1.0 is usual); "
        f"warm up longer with {keys.now('optim.warmup_steps')}"
    )
    return text, names


# ---------------------------------------------------------------- detectors


def _overfitting(c: Curves, keys: _Keys) -> Finding | None:
    """Validation loss turned up and stayed up (by more than its noise) while training loss
    went on falling."""
    if len(c.val) < MIN_VAL_POINTS:
        return None
    steps, v = [s for s, _ in c.val], [y for _, y in c.val]
    b = min(range(len(v)), key=v.__getitem__)
    after = v[b + 1 :]
    if len(after) < 2:
        return None
    noise = curve_noise(v)
    margin = max(3 * noise, _tolerance(v[b]))
    rise = v[-1] - v[b]
    # persistent: the last two evaluations and most of those since the best stay above it
    if min(after[-2:]) - v[b] <= margin or median(after) - v[b] <= margin:
        return None
    at_best, at_end = level_near(c.train, steps[b]), level_near(c.train, c.train[-1][0])
    if at_best is None or at_end is None or c.train[-1][0] <= steps[b]:
        return None
    train_noise = curve_noise([y for _, y in c.train])
    if at_best - at_end <= max(train_noise, _tolerance(at_best)):
        return None  # training loss is not falling: not over-fitting
    best = steps[b]
    stopped = any(text.startswith("early stopping") for _, text in c.messages)
    evidence = (
        f"val_loss was lowest at step {_step(best)} ({v[b]:.4g}) and rose to {v[-1]:.4g} by "
        f"step {_step(steps[-1])} (+{rise:.3g}; its noise between evaluations is {noise:.2g}) "
        f"while training loss fell from {at_best:.4g} to {at_end:.4g}; the gap val - train is "
        f"now {v[-1] - at_end:.3g} (it was {v[b] - at_best:.3g} at the best step). "
        f"The best checkpoint is step {_step(best)}."
    )
    reg = keys.regularizers()
    parts = [f"regularize: raise {', '.join(keys.now(k) for k in reg)}"]
    if keys.command == "train":
        parts[0] += ", or add a Dropout layer to layers"
    parts.append(
        f"stop near step {_step(best)} ({', '.join(keys.now(k) for k in keys.length())})"
        + (" or set early_stopping" if keys.command == "train" and not stopped else "")
    )
    parts.append(f"or use checkpoints/best (step {_step(best)})")
    names = reg + keys.length() + (("layers",) if keys.command == "train" else ())
    return Finding(
        kind="overfitting",
        title=f"over-fits from step {_step(best)}"
        + (" (early stopping ended it)" if stopped else ""),
        evidence=evidence,
        advice="; ".join(parts),
        keys=names,
        step=best,
        severity="info" if stopped else "warning",
    )


def _still_falling(points: list[tuple[int, float]]) -> tuple[float, float] | None:
    """(decline over the last third, level at the end) when a curve is still falling there:
    the slope of a line fitted to that third is below zero by more than three of its standard
    errors (from the fit's own residuals) and the decline exceeds the tolerance."""
    k = min(len(points), max(4, math.ceil(len(points) / 3)))
    if k < 4:
        return None
    tail = points[-k:]
    xs, ts = [float(s) for s, _ in tail], [y for _, y in tail]
    slope, sxx = line_slope(xs, ts)
    if sxx == 0 or slope >= 0:
        return None
    mx, my = sum(xs) / k, sum(ts) / k
    ssr = sum((y - (my + slope * (x - mx))) ** 2 for x, y in zip(xs, ts))
    stderr = math.sqrt(ssr / (k - 2) / sxx)
    decline = -slope * (xs[-1] - xs[0])
    if -slope <= 3 * stderr or decline <= _tolerance(ts[-1]):
        return None
    return decline, ts[-1]


def _underfitting(c: Curves, keys: _Keys) -> Finding | None:
    """Validation loss is still falling clearly at the end of the run, and training loss with
    it (without validation: training loss alone, over more points)."""
    train = _still_falling(c.train) if len(c.train) >= MIN_TRAIN_POINTS else None
    if len(c.val) >= MIN_VAL_POINTS:
        val = _still_falling(c.val)
        if val is None or _tail_slope(c.train) > 0:
            return None  # validation flat, or training loss rising: more steps would not help
        what = (
            f"val_loss fell by {val[0]:.3g} over the last third of the evaluations "
            f"(to {val[1]:.4g})"
        )
        if train is not None:
            what += f" and training loss by {train[0]:.3g} (to {train[1]:.4g})"
        unchecked = ""
    elif train is not None:
        what = (
            f"training loss fell by {train[0]:.3g} over the last third of the run "
            f"(to {train[1]:.4g})"
        )
        unchecked = (
            f" ({len(c.val)} evaluation(s) are too few to check it against validation)"
            if c.val
            else " (there is no validation to check it against)"
        )
    else:
        return None
    length = keys.length()
    return Finding(
        kind="underfitting",
        title="under-fits: still improving when the run ended",
        evidence=f"{what}, well above its noise: more training would still pay{unchecked}.",
        advice=(
            f"train longer ({', '.join(keys.now(k) for k in length)}); if the curve is "
            f"slow from the start, raise {keys.now('optim.lr')}; a larger model if it then "
            "plateaus high"
        ),
        keys=(*length, "optim.lr"),
        step=c.last_step,
    )


def _tail_slope(points: list[tuple[int, float]]) -> float:
    """The least-squares slope of a curve's last third (0 for too few points)."""
    tail = points[-max(3, math.ceil(len(points) / 3)) :]
    if len(tail) < 3:
        return 0.0
    return line_slope([float(s) for s, _ in tail], [y for _, y in tail])[0]


def _divergence(c: Curves, keys: _Keys) -> Finding | None:
    """The loss went non-finite, or ended far above its minimum, giving back most of what
    it had learned (or ending above where it started)."""
    advice, names = _stability_advice(keys)
    if c.nonfinite:
        first = c.nonfinite[0]
        before = [(s, y) for s, y in c.train if s < first]
        tail = " from the first records"
        if before:
            low = min(before, key=lambda p: p[1])
            tail = f"; the lowest finite loss was {low[1]:.4g} at step {_step(low[0])}"
        return Finding(
            kind="divergence",
            title=f"diverges at step {_step(first)}",
            evidence=(
                f"the loss is not finite at {len(c.nonfinite)} logged step(s), first at step "
                f"{_step(first)}{tail}."
            ),
            advice=advice + f"; {keys.now('train.nan_policy')} rollback recovers from it",
            keys=(*names, "train.nan_policy"),
            step=first,
        )
    if len(c.train) < MIN_TRAIN_POINTS:
        return None
    ys = [y for _, y in c.train]
    smooth = running_median(ys, 2)
    low = min(range(len(smooth)), key=smooth.__getitem__)
    rise, drop = smooth[-1] - smooth[low], smooth[0] - smooth[low]
    if rise <= max(5 * curve_noise(ys), _tolerance(smooth[low])):
        return None
    if rise <= 0.5 * drop and smooth[-1] <= smooth[0]:
        return None  # it gave back less than half its progress: a bump, not a blow-up
    at, end_step = c.train[low][0], c.train[-1][0]
    if low == 0:
        shape = f"training loss rose from the start: {smooth[0]:.4g} at step {_step(at)}"
        back = ""
    else:
        shape = (
            f"training loss (running median) fell from {smooth[0]:.4g} to {smooth[low]:.4g} "
            f"at step {_step(at)} and then rose"
        )
        back = f"; resume from a checkpoint before step {_step(at)}"
    return Finding(
        kind="divergence",
        title=f"diverges after step {_step(at)}",
        evidence=f"{shape} to {smooth[-1]:.4g} by step {_step(end_step)}.",
        advice=advice + back,
        keys=names,
        step=at,
    )


def _nan_steps(c: Curves, keys: _Keys) -> Finding | None:
    """Steps whose update was dropped (nan_policy skip or rollback) for a non-finite loss."""
    rollbacks = [s for s, text in c.messages if "rolled back" in text]
    if not c.skipped and not rollbacks:
        return None
    count = max([n for _, n in c.skipped] + [len(rollbacks)])
    first = min([s for s, _ in c.skipped] + rollbacks)
    share = f" ({count / c.last_step:.0%} of the run's {_step(c.last_step)} steps)"
    advice, names = _stability_advice(keys)
    if keys.get("train.precision") == "fp16":
        advice += f"; {keys.now('train.precision')}: bf16 or fp32 overflow far less"
        names += ("train.precision",)
    return Finding(
        kind="nan_steps",
        title=f"{count:,} step(s) skipped for a non-finite loss or gradient",
        evidence=(
            f"{count:,} update(s) dropped{share if c.last_step else ''}, the first by step "
            f"{_step(first)}" + (f"; {len(rollbacks)} rollback(s)" if rollbacks else "") + "."
        ),
        advice=advice,
        keys=names,
        step=first,
    )


def _spikes(c: Curves, keys: _Keys) -> list[Finding]:
    """Isolated points far above the local trend (a running median), in robust sigmas of the
    residuals; a lasting jump moves the median too, so only short spikes count."""
    if len(c.train) < 2 * MIN_TRAIN_POINTS:
        return []
    ys = [y for _, y in c.train]
    trend = running_median(ys, 3)
    hits = []
    for i in range(len(ys)):
        # the noise around this point, from its neighbours only (so the spike cannot hide
        # itself), as an RMS: a loss's noise is heavy-tailed and a MAD would read it too low
        sigma = rms_step_noise(ys[max(0, i - SPIKE_WINDOW) : i], ys[i + 1 : i + 1 + SPIKE_WINDOW])
        if ys[i] - trend[i] > max(SPIKE_SIGMAS * sigma, 5 * _tolerance(trend[i])):
            hits.append((c.train[i][0], ys[i], trend[i], sigma))
    if not hits:
        return []
    shown = ", ".join(f"{_step(s)} ({y:.3g} vs {t:.3g})" for s, y, t, _ in hits[:5])
    more = f" and {len(hits) - 5} more" if len(hits) > 5 else ""
    advice, names = _stability_advice(keys)
    # one spike the run shrugged off costs nothing; several, or one back above where the
    # run started, say the updates are too large for some batches
    serious = len(hits) > 1 or any(y > ys[0] for _, y, _, _ in hits)
    return [
        Finding(
            kind="loss_spikes",
            title=f"{len(hits)} loss spike(s), first at step {_step(hits[0][0])}",
            evidence=(
                f"training loss jumped more than {SPIKE_SIGMAS:.0f} sigmas of its local noise "
                f"above its running median at step(s) {shown}{more}."
            ),
            advice=advice,
            keys=names,
            step=hits[0][0],
            severity="warning" if serious else "info",
        )
    ]


def _learning_rate(
    c: Curves,
    keys: _Keys,
    diverged: Finding | None,
    nan: Finding | None,
    lr_find: dict[str, Any] | None,
) -> list[Finding]:
    """LR too high (early blow-up, or no progress at all in a noisy curve) or too low (a slow,
    steady crawl, or a flat curve); and the LR finder's suggestion against optim.lr."""
    high: list[str] = []
    low: list[str] = []
    first_step = None
    span = number(keys.get("train.max_steps")) or c.last_step
    trouble = [f.step for f in (diverged, nan) if f is not None and f.step is not None]
    if trouble and span and min(trouble) <= EARLY_SHARE * span:
        first_step = min(trouble)
        high.append(
            f"the loss turned up or went non-finite at step {_step(first_step)}, within the "
            f"first {EARLY_SHARE:.0%} of the run's {_step(span)} steps"
        )
    elif diverged is None and len(c.train) >= MIN_TRAIN_POINTS:
        ys = [y for _, y in c.train]
        noise = curve_noise(ys)
        mid = len(ys) // 2
        # levels as medians of three points: an end point alone is as noisy as the curve
        start, middle, end = median(ys[:3]), median(ys[mid - 1 : mid + 2]), median(ys[-3:])
        early, late, total = start - middle, middle - end, start - end
        steps = _step(c.train[-1][0])
        if total <= 0 and noise > _tolerance(start):
            high.append(
                f"training loss made no progress ({start:.4g} -> {end:.4g}) while jumping by "
                f"{noise:.3g} between log points"
            )
        elif abs(total) <= _tolerance(start) and noise <= _tolerance(start):
            # flat and smooth: tiny steps (flat and noisy could be a plateau: no claim)
            low.append(
                f"training loss barely moved over {steps} steps ({start:.4g} -> {end:.4g}, "
                f"{abs(total) / abs(start):.2%})"
            )
        elif total > 3 * noise and early > 0 and late >= 0.5 * early and total < SLOW * start:
            low.append(
                f"training loss fell slowly and steadily ({start:.4g} -> {end:.4g}, "
                f"{total / start:.1%} in {steps} steps, about as fast in the second half as in "
                "the first): the steps are too small to reach the curve's knee"
            )
    lr = keys.lr() or c.peak_lr  # no config: the records' learning rate
    suggestion = number((lr_find or {}).get("suggestion"))
    if suggestion and lr:
        if lr > LR_FINDER_FACTOR * suggestion:
            high.append(f"the LR finder suggests {suggestion:.3g}, {lr / suggestion:.0f}x lower")
        elif lr < suggestion / LR_FINDER_FACTOR:
            low.append(f"the LR finder suggests {suggestion:.3g}, {suggestion / lr:.0f}x higher")
    out = []
    lr_now = keys.now("optim.lr")
    if high:
        out.append(
            Finding(
                kind="lr_too_high",
                title="learning rate too high",
                evidence="; ".join(high) + ".",
                advice=f"lower {lr_now} by 3-10x"
                + (f" (to about {suggestion:.3g})" if suggestion else "")
                + f", or warm up with {keys.now('optim.warmup_steps')}",
                keys=("optim.lr", "optim.warmup_steps"),
                step=first_step,
            )
        )
    if low:
        out.append(
            Finding(
                kind="lr_too_low",
                title="learning rate too low",
                evidence="; ".join(low) + ".",
                advice=f"raise {lr_now} by 3-10x"
                + (f" (to about {suggestion:.3g})" if suggestion else ""),
                keys=("optim.lr",),
            )
        )
    return out


def _data_bound(c: Curves, keys: _Keys) -> Finding | None:
    """The step spent much of its wall time waiting for the next batch."""
    waits = c.data_wait[1:] if len(c.data_wait) > 2 else c.data_wait  # the first has start-up
    if not waits:
        return None
    mean = sum(waits) / len(waits)
    if mean <= DATA_WAIT_LIMIT:
        return None
    prepare = " (`groundup prepare` encodes the shards once)" if keys.command == "pretrain" else ""
    return Finding(
        kind="data_bound",
        title=f"data-bound: {mean:.0%} of the time waiting for batches",
        evidence=(
            f"data_wait averaged {mean:.2f} over {len(waits)} log windows (max {max(waits):.2f}): "
            "the model idled while the next batch was made."
        ),
        advice=(
            f"raise {keys.now('train.batch_size')} (more compute per batch fetched); move "
            "decoding/augmentation out of the loop (pre-encode once) or prefetch in a "
            f"background thread{prepare}"
        ),
        keys=("train.batch_size",),
        severity="warning",
    )


def _small_validation(c: Curves, keys: _Keys) -> Finding | None:
    """The validation estimate is noisier than the changes it is used to compare: the standard
    error of accuracy from val_items, or the jitter of successive val losses."""
    names = keys.validation()
    fix = "a larger validation set: raise " + ", ".join(keys.now(k) for k in names)
    last = c.val_records[-1] if c.val_records else {}
    n, p = number(last.get("val_items")), number(last.get("val_accuracy"))
    accs = [a for r in c.val_records if (a := number(r.get("val_accuracy"))) is not None]
    if n and p is not None and 0 <= p <= 1 and len(accs) >= 3:
        se = math.sqrt(max(p * (1 - p), 0.25 / n) / n)  # p at 0 or 1: the rule of three
        late = accs[len(accs) // 3 :]
        changes = median(abs(b - a) for a, b in zip(late, late[1:])) if len(late) > 1 else 0.0
        if se > RELATIVE_TOLERANCE and se >= changes:
            return Finding(
                kind="small_validation",
                title=f"validation set too small ({int(n):,} items)",
                evidence=(
                    f"val_accuracy {p:.3f} on {int(n):,} items has a standard error of {se:.3f} "
                    f"(sqrt(p(1-p)/n)), more than the typical change between later evaluations "
                    f"({changes:.3f}): the best evaluation is partly luck."
                ),
                advice=fix,
                keys=names,
            )
    if n or len(c.val) < 2 * MIN_VAL_POINTS - 2:
        # with val_items known the set is fixed: its losses jitter with the model, not the sample
        return None
    v = [y for _, y in c.val]
    late_v = v[len(v) // 2 :]
    jitter = curve_noise(late_v)
    late_steps = [float(s) for s, _ in c.val[len(v) // 2 :]]
    spacing = (late_steps[-1] - late_steps[0]) / (len(late_steps) - 1)
    trend = abs(line_slope(late_steps, late_v)[0]) * spacing  # the fitted change per evaluation
    level = median(late_v)
    if jitter <= _tolerance(level) or jitter <= trend:
        return None
    return Finding(
        kind="small_validation",
        title="validation loss too noisy to compare evaluations",
        evidence=(
            f"successive val_loss values jitter by {jitter:.3g} ({jitter / level:.1%} of "
            f"its level) while their trend moves {trend:.3g} per evaluation (the records do not "
            "say how many items each estimate used)."
        ),
        advice=f"{fix}; if the set is already large, the model itself jumps between "
        f"evaluations: lower {keys.now('optim.lr')}",
        keys=(*names, "optim.lr"),
    )
