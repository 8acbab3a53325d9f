"""How a run starts its processes: workers, actors and async envs all come from one multiprocessing context.

The default, ``forkserver``, starts one server process that imports torch, gymnasium and the schedules'
worker loops once; every worker, actor, restart and env subprocess is then forked from it in milliseconds,
where a spawned process spends seconds of CPU importing them itself. ``spawn`` and ``fork`` remain
available as ``algo.start_method``.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver
from typing import Any

# torch._dynamo: a torch optimizer imports it when it is first built (about a second of CPU).
FORKSERVER_PRELOAD = ("torch", "torch._dynamo", "gymnasium", "algorithms.transports.local.synchronous",
                      "algorithms.transports.local.asynchronous", "algorithms.transports.local.actor_learner")


def process_context(start_method: str) -> Any:
    """The multiprocessing context for a run's processes. A forkserver is started here, with
    :data:`FORKSERVER_PRELOAD`, so that its imports overlap the trainer's own set-up; it serves every later
    run of this process too, and exits with it."""
    context = multiprocessing.get_context(start_method)
    if start_method == "forkserver":
        context.set_forkserver_preload(list(FORKSERVER_PRELOAD))  # no effect once the server runs
        multiprocessing.forkserver.ensure_running()
    return context
