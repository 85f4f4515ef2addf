"""LR schedules: factors against hand-computed values, apply(), build_schedule, validation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from groundup.errors import ConfigError
from groundup.train.schedules import (
    SCHEDULES,
    ConstantSchedule,
    CosineSchedule,
    LinearSchedule,
    Schedule,
    StepSchedule,
    WSDSchedule,
    build_schedule,
)


def _f(s: Schedule, steps: list[int]) -> list[float]:
    return [s.factor(i) for i in steps]


def test_registry():
    assert set(SCHEDULES) == {"constant", "step", "cosine", "linear", "wsd"}


def test_constant_with_warmup():
    s = ConstantSchedule(warmup_steps=4)
    # (step + 1) / (warmup + 1): never 0, exactly 1 at step == warmup_steps.
    assert _f(s, [0, 1, 3, 4, 1000]) == pytest.approx([1 / 5, 2 / 5, 4 / 5, 1.0, 1.0])
    assert _f(ConstantSchedule(), [0, 7]) == [1.0, 1.0]


def test_step():
    s = StepSchedule(step_size=10, gamma=0.5)
    assert _f(s, [0, 9, 10, 19, 20, 35]) == pytest.approx([1, 1, 0.5, 0.5, 0.25, 0.125])


def test_cosine_warmup_midpoint_and_end():
    s = CosineSchedule(warmup_steps=10, total_steps=110, min_lr_ratio=0.1)
    assert s.factor(0) == pytest.approx(1 / 11)
    assert s.factor(5) == pytest.approx(6 / 11)
    assert s.factor(10) == 1.0
    assert s.factor(60) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway through the decay
    assert s.factor(35) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert s.factor(110) == pytest.approx(0.1)
    assert s.factor(500) == pytest.approx(0.1)  # stays at the floor past the end


def test_cosine_default_floor_and_no_warmup():
    s = CosineSchedule(total_steps=100)
    assert s.factor(0) == 1.0 and s.factor(100) == pytest.approx(0.1)


def test_linear():
    s = LinearSchedule(warmup_steps=2, total_steps=12)
    assert _f(s, [0, 1, 2, 7, 12, 20]) == pytest.approx([1 / 3, 2 / 3, 1.0, 0.5, 0.0, 0.0])
    s = LinearSchedule(total_steps=10, min_lr_ratio=0.2)
    assert s.factor(5) == pytest.approx(0.2 + 0.8 * 0.5)


def test_wsd_plateau_and_decay_shapes():
    s = WSDSchedule(warmup_steps=10, total_steps=100, decay_fraction=0.2)
    assert s.decay_steps == 20 and s.decay_start == 80
    assert s.factor(0) == pytest.approx(1 / 11)
    assert _f(s, [10, 50, 79, 80]) == [1.0, 1.0, 1.0, 1.0]  # plateau
    assert _f(s, [85, 90, 100, 150]) == pytest.approx([0.75, 0.5, 0.0, 0.0])
    cos = WSDSchedule(total_steps=100, decay_shape="cosine", min_lr_ratio=0.1)
    assert cos.factor(90) == pytest.approx(0.1 + 0.9 * 0.5)
    assert cos.factor(85) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    sq = WSDSchedule(total_steps=100, decay_shape="sqrt")
    assert sq.factor(85) == pytest.approx(1 - math.sqrt(0.25))
    assert WSDSchedule(total_steps=100, decay_fraction=0.0).factor(99) == 1.0


def _opt() -> torch.optim.Optimizer:
    model = nn.Linear(3, 2)
    return torch.optim.SGD(
        [{"params": [model.weight], "lr": 0.1}, {"params": [model.bias], "lr": 0.01}], lr=0.1
    )


def test_apply_sets_group_lrs_from_initial_lr():
    opt = _opt()
    s = CosineSchedule(warmup_steps=4, total_steps=20)
    assert s.apply(opt, 0) == pytest.approx(0.2)
    assert [g["initial_lr"] for g in opt.param_groups] == [0.1, 0.01]
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.02, 0.002])
    s.apply(opt, 4)
    s.apply(opt, 4)  # not compounded: always initial_lr * factor
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1, 0.01])
    # A resumed run (fresh optimizer, same step) gets the same LR: the schedule has no state.
    s.apply(opt, 12)
    fresh = _opt()
    s.apply(fresh, 12)
    assert [g["lr"] for g in fresh.param_groups] == [g["lr"] for g in opt.param_groups]


def test_apply_keeps_tensor_lr_a_tensor():
    p = nn.Parameter(torch.zeros(2))
    opt = torch.optim.Adam([p], lr=torch.tensor(0.01))
    ConstantSchedule(warmup_steps=1).apply(opt, 0)
    lr = opt.param_groups[0]["lr"]
    assert isinstance(lr, torch.Tensor) and lr.item() == pytest.approx(0.005)


def test_schedule_works_as_lambda_lr():
    opt = _opt()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, StepSchedule(step_size=1, gamma=0.5))
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)


def test_build_schedule_forms():
    assert build_schedule(None, None) == ConstantSchedule()
    assert build_schedule("cosine", 100, warmup_steps=5) == CosineSchedule(5, 100)
    assert build_schedule({"name": "WSD", "decay_shape": "sqrt"}, 50) == WSDSchedule(
        total_steps=50, decay_shape="sqrt"
    )
    s = StepSchedule(step_size=3)
    assert build_schedule(s, 100) is s
    # A schedule made before total_steps was known gets it filled in.
    assert build_schedule(CosineSchedule(warmup_steps=2), 40) == CosineSchedule(2, 40)
    # An explicit total_steps in the spec wins over the one derived from epochs.
    assert build_schedule({"name": "linear", "total_steps": 30}, 100).total_steps == 30


def test_to_dict_round_trip():
    s = WSDSchedule(warmup_steps=3, total_steps=30, decay_shape="cosine")
    assert s.to_dict()["name"] == "wsd"
    assert build_schedule(s.to_dict(), None) == s


def test_missing_total_steps_says_what_to_set():
    for name in ("cosine", "linear", "wsd"):
        with pytest.raises(ConfigError, match="needs total_steps: set epochs or max_steps"):
            build_schedule(name, None)
    with pytest.raises(ConfigError, match="set epochs or max_steps"):
        CosineSchedule().factor(3)


def test_unknown_name_and_option():
    with pytest.raises(ConfigError, match="did you mean 'cosine'.*valid names"):
        build_schedule("cosin", 10)
    with pytest.raises(ConfigError, match="'warmup'.*did you mean 'warmup_steps'.*valid options"):
        build_schedule("cosine", 10, warmup=3)
    with pytest.raises(ConfigError, match="needs a 'name'"):
        build_schedule({"warmup_steps": 3}, 10)
    with pytest.raises(ConfigError, match="schedule must be None"):
        build_schedule(0.5, 10)


@pytest.mark.parametrize(
    "name,kwargs,fragment",
    [
        ("cosine", {"warmup_steps": 10}, "warmup_steps (10) must be < total_steps (10)"),
        ("linear", {"warmup_steps": -1}, "warmup_steps must be an integer >= 0, got -1"),
        ("cosine", {"min_lr_ratio": 1.5}, "min_lr_ratio must be in [0, 1], got 1.5"),
        ("wsd", {"min_lr_ratio": -0.1}, "min_lr_ratio must be in [0, 1], got -0.1"),
        ("step", {"gamma": 0.0}, "gamma must be > 0, got 0.0"),
        ("step", {"step_size": 0}, "step_size must be an integer >= 1, got 0"),
        ("constant", {"warmup_steps": 2.5}, "warmup_steps must be an integer"),
        ("wsd", {"decay_shape": "exp"}, "decay_shape must be one of linear, cosine, sqrt"),
        ("wsd", {"warmup_steps": 9, "decay_fraction": 0.2}, "overlap"),
    ],
)
def test_validation(name, kwargs, fragment):
    with pytest.raises(ConfigError) as e:
        build_schedule(name, 10, **kwargs)
    assert fragment in str(e.value)
