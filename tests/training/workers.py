"""Several training workers on this machine without Ray: processes joined by a gloo process group, each running
the same ``train_loop_per_worker`` that Ray Train runs (Ray's own start-up would add a minute per run on CI)."""

from __future__ import annotations

import os
import socket
from typing import Any


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world: int, port: int, config: dict[str, Any]) -> None:
    import torch
    import torch.distributed as dist

    from training.train import train_loop_per_worker

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        train_loop_per_worker(config)
    finally:
        dist.destroy_process_group()


def run_workers(config: dict[str, Any], world: int = 2, timeout_s: float = 600) -> None:
    """Run the training loop on ``world`` CPU processes; raises if any of them fails, and TimeoutError (after
    ending them) if they have not finished in ``timeout_s``: workers out of step wait for each other forever."""
    import time

    import torch.multiprocessing as mp

    context = mp.start_processes(_worker, args=(world, _free_port(), config), nprocs=world, start_method="spawn",
                                 join=False)
    deadline = time.monotonic() + timeout_s
    while not context.join(timeout=5):  # raises ProcessRaisedException when a worker fails
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            raise TimeoutError(f"{world} training workers still running after {timeout_s:.0f} s")
