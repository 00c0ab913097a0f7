"""A `dask worker --preload` for tests/test_fleet.py: the worker process exits (as a worker
killed by the OOM killer would) when it starts running a dnstrail ingest task."""

from __future__ import annotations

import os
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin


class _DieOnIngest(WorkerPlugin):
    def transition(self, key: Any, start: Any, finish: Any, **kwargs: Any) -> None:
        if finish == "executing" and "dnstrail-ingest" in str(key):
            os._exit(137)


async def dask_setup(worker: Any) -> None:
    await worker.plugin_add(_DieOnIngest(), name="die-on-ingest")
