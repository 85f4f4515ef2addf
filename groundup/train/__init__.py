"""The training engine: one loop (`Trainer`), losses, metrics, optimizers, schedules, callbacks."""
