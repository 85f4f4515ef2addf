"""The run lifecycle every training command shares: plan (check, touch nothing), begin (the
folder changes), train, write results, end. See `plan.py` and `run.py`."""

from groundup.runs.plan import RunPlan, comparable, plan_run, read_saved_config
from groundup.runs.run import MODEL_DIR, RESULTS_FILE, Run

__all__ = [
    "MODEL_DIR",
    "RESULTS_FILE",
    "Run",
    "RunPlan",
    "comparable",
    "plan_run",
    "read_saved_config",
]
