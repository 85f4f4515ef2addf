"""Hyper-parameter sweeps on Optuna: a search space of dotted config keys (`space`), a
seeded TPE study in SQLite that a rerun resumes (`study`), each trial a normal run of the
command with a pruning callback (`runner`), and the record of the trials (`summary`).
`groundup sweep` is `groundup.jobs.sweep.run_sweep`."""
