"""Suite-wide settings and fixtures. Runs made by the tests end without report.html and the console
diagnosis (each report costs about a second of plotting); the tests of the end-of-run report
turn it back on with `monkeypatch.setenv("GROUNDUP_REPORT", "1")`."""

import os

import pytest
import torch

os.environ.setdefault("GROUNDUP_REPORT", "0")


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny models: matmuls that small gain nothing from
    threads, and on a shared 2-core machine the pool contends with other processes (10x
    slower). Modules ask for it with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
