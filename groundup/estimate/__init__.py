"""What a training run will cost before it runs: memory per rank, FLOPs, time, and the refusal.

- `memory`: weights, gradients, optimizer state, activations, DDP/FSDP2 buffers -> a
  `MemoryEstimate` per rank;
- `architecture`: the activations of the GPT/BERT families from their shape (no forward);
- `saved`: the activations of any module, measured from what autograd saves;
- `speed`: a few real steps timed, and the run's predicted wall time;
- `plan`: a job's step described (`StepPlan`), its estimate and summary, the preflight;
- `table`: the one-time table; `check`: the refusal when a step cannot fit.

`groundup estimate CONFIG` (groundup/jobs/estimate.py) puts them together; every training job
prints the table and runs the check before its run folder changes. See docs/estimate.md.
"""

from groundup.estimate.architecture import Setup, Shape, shape_of, transformer_activations
from groundup.estimate.check import (
    MEMORY_ENV,
    MemoryBudgetError,
    check_fits,
    device_memory,
    parse_bytes,
)
from groundup.estimate.memory import (
    Activations,
    MemoryEstimate,
    estimate_memory,
    format_bytes,
    optimizer_bytes,
    planned_strategy,
)
from groundup.estimate.plan import StepPlan, plan_memory, preflight, summarize
from groundup.estimate.saved import measure_activations, measure_flops, measure_saved
from groundup.estimate.speed import StepTiming, predict_seconds, time_steps, trainer_fit
from groundup.estimate.table import print_summary, summary_rows

__all__ = [
    "MEMORY_ENV",
    "Activations",
    "MemoryBudgetError",
    "MemoryEstimate",
    "Setup",
    "Shape",
    "StepPlan",
    "StepTiming",
    "check_fits",
    "device_memory",
    "estimate_memory",
    "format_bytes",
    "measure_activations",
    "measure_flops",
    "measure_saved",
    "optimizer_bytes",
    "parse_bytes",
    "plan_memory",
    "planned_strategy",
    "predict_seconds",
    "preflight",
    "print_summary",
    "shape_of",
    "summarize",
    "summary_rows",
    "time_steps",
    "trainer_fit",
    "transformer_activations",
]
