"""Suite-wide settings. Runs made by the tests end without report.html and the console
diagnosis (each report costs about a second of plotting); the tests of the end-of-run report
turn it back on with `monkeypatch.setenv("GROUNDUP_REPORT", "1")`."""

import os

os.environ.setdefault("GROUNDUP_REPORT", "0")
