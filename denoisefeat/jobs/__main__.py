"""``python -m denoisefeat.jobs ...`` is ``denoisefeat jobs ...`` (for scripts without the entry point)."""

import os

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from denoisefeat.jobs.cli import app  # noqa: E402

app(prog_name="denoisefeat jobs")
