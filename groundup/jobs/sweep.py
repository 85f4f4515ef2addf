"""`groundup sweep CONFIG --space SPACE.yaml --trials N`: a hyper-parameter search on Optuna.

config + search space (checked: keys, ranges) -> a seeded TPE study in `<sweep_dir>/study.db`
-> N trials, each a normal run of the config's command in `<sweep_dir>/trial-NNN/` with the
sampled values as overrides and a pruning callback on the validation loss -> `sweep.json`,
`best_config.yaml`, the comparison table (and the report, when groundup.report is there).

The sweep folder is `<run_dir>-sweep` beside the config's run folder unless `sweep_dir` is
given: the sweep never touches the config's own run, and an `--overwrite` of that run never
takes the sweep with it. Rerunning the same command after a kill (or Ctrl-C) goes on: the
finished trials stay, the interrupted one resumes its folder from its last checkpoint, and
the sweep runs until N trials have finished (a larger N extends a finished sweep).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from groundup.config import config_diff
from groundup.errors import ConfigError, GroundupError
from groundup.files import write_text_atomic
from groundup.sweep.commands import (
    check_command,
    config_data,
    detect_command,
    load_command_config,
    run_callbacks_overrides,
)
from groundup.sweep.space import load_space
from groundup.sweep.study import (
    PRUNERS,
    SweepLock,
    finished_count,
    open_study,
    recover_interrupted,
    require_optuna,
)

SWEEP_FILE = "sweep.yaml"  # what the sweep is: compared when it is run again
MAX_FAILURES_IN_A_ROW = 3


def run_sweep(
    config_path: str | Path,
    overrides: Sequence[str] = (),
    space: str | Path | None = None,
    trials: int = 12,
    pruner: str = "median",
    *,
    sweep_dir: str | Path | None = None,
    seed: int | None = None,
    command: str | None = None,
    report: bool = True,
    verbose: int = 1,
) -> dict[str, Any]:
    """Run (or go on with) the sweep; returns the summary written to sweep.json.

    `seed` seeds the sampler (default: the config's seed); `command` is only needed when the
    config's keys do not tell (see groundup.sweep.commands). Trials run one after another in
    this process, quietly; each prints one line. `report`: also write `report.html`, the
    comparison of the trials' runs (when groundup.report is installed)."""
    from groundup import distributed as du
    from groundup.sweep.runner import run_trial
    from groundup.sweep.summary import (
        format_table,
        summarize,
        write_best_config,
        write_summary,
    )

    require_optuna()
    if du.launched():
        raise ConfigError(
            "groundup sweep runs its trials one after another in one process; run it without "
            "torchrun or --nproc"
        )
    if space is None:
        raise ConfigError("groundup sweep needs a search space: --space SPACE.yaml")
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
        raise ConfigError(f"--trials must be an integer >= 1, got {trials!r}")
    if pruner not in PRUNERS:
        from groundup.registry import did_you_mean

        raise ConfigError(
            f"unknown pruner '{pruner}'{did_you_mean(pruner, PRUNERS)}; give one of "
            f"{', '.join(PRUNERS)}"
        )
    data = config_data(config_path, overrides)
    command = check_command(command) if command else detect_command(data, str(config_path))
    cfg = load_command_config(command, data)
    params = load_space(space, data, command)
    _check_validation(command, cfg)
    folder = Path(sweep_dir) if sweep_dir is not None else Path(f"{cfg.run_dir}-sweep")
    seed = int(cfg.seed if seed is None else seed)
    identity = {
        "command": command,
        "config": {k: v for k, v in _resolved(cfg).items() if k != "run_dir"},
        "space": {p.key: p.describe() for p in params},
        "pruner": pruner,
        "seed": seed,
    }
    _check_same_sweep(folder, identity)
    folder.mkdir(parents=True, exist_ok=True)
    extra = [*overrides, *run_callbacks_overrides(command, cfg)]
    keys = [p.key for p in params]
    with SweepLock(folder):
        if not (folder / SWEEP_FILE).is_file():
            write_text_atomic(folder / SWEEP_FILE, yaml.safe_dump(identity, sort_keys=False))
        study = open_study(folder, pruner, seed, trials)
        for note in recover_interrupted(study):
            print(note, flush=True)
        failures = 0
        while finished_count(study) < trials:
            trial = study.ask()
            outcome = run_trial(study, trial, command, config_path, extra, params, folder)
            print(_trial_line(outcome, finished_count(study), trials), flush=True)
            write_summary(summarize(study, folder, command, keys), folder)
            failures = failures + 1 if outcome.state == "failed" else 0
            if failures >= MAX_FAILURES_IN_A_ROW:
                raise ConfigError(
                    f"{failures} trials in a row failed; the last (trial {outcome.number}): "
                    f"{outcome.error}; fix the config or the space, then rerun the sweep"
                )
        summary = summarize(study, folder, command, keys)
        write_summary(summary, folder)
        best = write_best_config(summary, folder, str(cfg.run_dir))
    print(format_table(summary, keys), flush=True)
    if best is not None:
        print(f"best config: {best} (groundup {command} {best})", flush=True)
    if report:
        _write_report(summary, folder, verbose)
    return summary


def _check_validation(command: str, cfg: Any) -> None:
    """The objective is the validation loss: the config must have validation data."""
    if command == "train" and not cfg.data.val_size:
        raise ConfigError("a sweep minimizes the validation loss: set data.val_size > 0 (e.g. 0.1)")
    if command == "finetune" and cfg.data.val is None and not cfg.data.val_fraction:
        raise ConfigError(
            "a sweep minimizes the validation loss: give data.val or data.val_fraction > 0"
        )


def _resolved(cfg: Any) -> dict[str, Any]:
    from groundup.config import to_dict

    return to_dict(cfg)


def _check_same_sweep(folder: Path, identity: dict[str, Any]) -> None:
    """A sweep folder holds one sweep: a rerun with another space, config, pruner or seed
    would mix two searches in one study."""
    saved_file = folder / SWEEP_FILE
    if not saved_file.is_file():
        if folder.is_dir() and any(folder.iterdir()) and not (folder / "study.db").is_file():
            raise ConfigError(
                f"{folder} is not empty and holds no sweep; give another sweep folder (--out)"
            )
        return
    try:
        saved = yaml.safe_load(saved_file.read_text(encoding="utf-8"))
    except yaml.YAMLError:
        saved = None
    if saved == identity:
        return
    diff = config_diff(saved, identity) if isinstance(saved, dict) else ["sweep.yaml"]
    shown = ", ".join(diff[:6]) + (f" and {len(diff) - 6} more" if len(diff) > 6 else "")
    raise ConfigError(
        f"{folder} holds another sweep ({shown} differ); rerun it as it was, or give a new "
        "sweep folder (--out)"
    )


def _trial_line(outcome: Any, done: int, total: int) -> str:
    values = " ".join(f"{k}={_short(v)}" for k, v in outcome.values.items())
    what = outcome.state
    if outcome.best is not None:
        what += f", best val_loss {outcome.best:.4f} at step {outcome.best_step}"
    if outcome.error:
        what += f": {outcome.error}"
    resumed = ", resumed" if outcome.resumed else ""
    return (
        f"[{done}/{total}] trial {outcome.number} ({outcome.run_dir.name}{resumed}) {values}: "
        f"{what} ({outcome.seconds:.1f} s)"
    )


def _short(value: Any) -> str:
    text = f"{value:.3g}" if isinstance(value, float) else str(value)
    return text if len(text) <= 30 else text[:27] + "..."


def _write_report(summary: dict[str, Any], folder: Path, verbose: int) -> None:
    """The report's comparison of the trials, when groundup.report is installed."""
    try:
        from groundup.report.build import write_report
    except ImportError:
        return
    runs = [Path(t["run_dir"]) for t in summary["trials"] if t["state"] in ("complete", "pruned")]
    try:
        out = write_report(runs, folder / "report.html")
    except GroundupError as exc:
        print(f"note: no report ({exc})", flush=True)
        return
    if verbose and out is not None:
        print(f"report: {out}", flush=True)
