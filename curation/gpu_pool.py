"""The GPU scorers' model parts as a pool of Ray actors, so that a GPU's share is held by the models, not by
shard tasks while they decode video.

A scorer with a model part (``Scorer.has_model_part``: DWPose, SyncNet) is split in two: ``score()``, run in
the shard task on CPU cores, decodes, crops and computes features, and sends batched requests through its
``model_runner``; ``infer()`` runs the model on one request. In-process, the runner calls ``infer()`` directly
(``scorers.base.LocalRunner``). With the pool, :class:`GpuPool` sends each request to a :class:`ModelHost`
actor, which holds every pooled scorer's model on its share of a GPU (1 / ``actors_per_gpu``) and runs
``infer()`` there. Requests are the ones the in-process path makes (the same frames, the same batches), so the
scores are the same: on a CPU-only Ray the actors run with ``num_gpus=0``, which is how the tests prove it.

- Backpressure: a shard keeps at most ``max_in_flight`` requests outstanding (results come back in order);
  the actors' queues hold at most shards x ``max_in_flight`` requests.
- Failures: an actor process that dies is restarted by Ray (``max_restarts``) and its pending requests retried
  (``max_task_retries``); past that the request raises :class:`curation.errors.ModelWorkerError`, which the
  scorer base turns into the clip's error row (``model_worker_failed``). An exception raised by the model part
  itself (bad input) reaches the scorer as that exception, as in-process.

Ray is imported only by the functions that need it: nothing here runs at import time."""

from __future__ import annotations

import itertools
import logging
import math
import os
import random
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from curation.config import CurationConfig
from curation.errors import ModelWorkerError
from curation.scorers.base import Scorer

log = logging.getLogger(__name__)
_END = object()


class ModelHost:
    """The actor: the pooled scorers (constructed for the actor's device), their models loaded on first use."""

    def __init__(self, scorers: Mapping[str, Scorer]):
        self.scorers = dict(scorers)

    def infer(self, name: str, request: Any) -> Any:
        scorer = self.scorers[name]
        scorer.ensure_model()
        return scorer.infer(request)

    def ready(self) -> int:
        return os.getpid()


class GpuPool:
    """A ``ModelRunner`` over the pool's actors (picklable: it travels to the shard tasks with the handles)."""

    remote = True

    def __init__(self, actors: list[Any], *, max_in_flight: int, names: Iterable[str], num_gpus: float):
        if not actors:
            raise ValueError("a GPU pool needs at least one actor")
        self.actors = list(actors)
        self.max_in_flight = max_in_flight
        self.names = frozenset(names)  # the scorers whose model parts the actors hold
        self.num_gpus = num_gpus  # per actor
        self._turn: Iterator[int] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_turn": None}

    def _next_actor(self) -> Any:
        if self._turn is None:  # each shard process starts at its own actor, then goes round
            self._turn = itertools.count(random.randrange(len(self.actors)))
        return self.actors[next(self._turn) % len(self.actors)]

    def map(self, scorer: Scorer, requests: Iterable[Any]) -> Iterator[tuple[Any, Any]]:
        """``(request, output)`` in order, with at most ``max_in_flight`` requests read and not yet answered
        (the bound on a shard's memory and on the actors' queues): the next request is read (decoded) while the
        earlier ones run on the GPU."""
        in_flight: deque[tuple[Any, Any]] = deque()
        pending = iter(requests)
        while True:
            if len(in_flight) >= self.max_in_flight:
                yield self._result(scorer.name, *in_flight.popleft())
            request = next(pending, _END)
            if request is _END:
                break
            in_flight.append((request, self._next_actor().infer.remote(scorer.name, request)))
        while in_flight:
            yield self._result(scorer.name, *in_flight.popleft())

    @staticmethod
    def _result(name: str, request: Any, ref: Any) -> tuple[Any, Any]:
        import ray
        from ray.exceptions import RayError, RayTaskError

        try:
            return request, ray.get(ref)
        except RayTaskError as error:  # the model part raised: the scorer sees the exception it would in-process
            cause = getattr(error, "cause", None)
            if isinstance(cause, Exception):
                raise cause from None
            raise
        except RayError as error:  # the actor died and restarts/retries are exhausted, or the object was lost
            raise ModelWorkerError(f"the GPU pool's {name} model worker failed: {type(error).__name__}: "
                                   f"{str(error).splitlines()[0] if str(error) else ''}") from None

    def shutdown(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor, no_restart=True)


def pool_wanted(config: CurationConfig, cluster_gpus: float) -> bool:
    """``runtime.gpu_pool.mode``: on, off, or auto = on when the Ray cluster has GPUs and models may use them."""
    mode = config.runtime.gpu_pool.mode
    if mode == "auto":
        return cluster_gpus > 0 and config.runtime.device != "cpu"
    return mode == "on"


def actor_layout(config: CurationConfig, cluster_gpus: float) -> tuple[int, float]:
    """(number of actors, GPUs per actor). With GPUs: ``actors_per_gpu`` actors per GPU, each holding
    1 / ``actors_per_gpu`` of one; without (a CPU-only cluster, pool forced on): ``size`` or one CPU actor."""
    pool = config.runtime.gpu_pool
    uses_gpus = config.runtime.device == "cuda" or (config.runtime.device == "auto" and cluster_gpus > 0)
    if not uses_gpus:
        return pool.size or 1, 0.0
    gpus = max(1, math.floor(cluster_gpus)) if cluster_gpus else 1
    return pool.size or gpus * pool.actors_per_gpu, 1.0 / pool.actors_per_gpu


def start(config: CurationConfig, scorers: Callable[[str], list[Scorer]]) -> GpuPool | None:
    """The pool for this run, or None (pool off, or no Ray in this process: e.g. ``--executor local``).
    ``scorers(device)``: the profile's scorers built for the actors' device. Call it where Ray is initialised
    (the flow's driver); pass the pool to the shard tasks; ``shutdown()`` it at the end."""
    import ray

    if config.runtime.gpu_pool.mode == "off":
        return None
    if not ray.is_initialized():
        if config.runtime.gpu_pool.mode == "on":
            log.warning("runtime.gpu_pool.mode is on, but Ray is not running here (local executor): the models "
                        "run in the shard process")
        return None
    cluster_gpus = float(ray.cluster_resources().get("GPU", 0.0))
    if not pool_wanted(config, cluster_gpus):
        return None
    size, num_gpus = actor_layout(config, cluster_gpus)
    device = "cuda" if num_gpus > 0 else "cpu"
    pooled = {s.name: s for s in scorers(device) if s.has_model_part}
    if not pooled:
        return None
    pool = config.runtime.gpu_pool
    host = ray.remote(ModelHost).options(
        num_cpus=pool.actor_num_cpus, num_gpus=num_gpus, max_restarts=pool.max_restarts,
        max_task_retries=pool.max_task_retries,
    )
    actors = [host.remote(pooled) for _ in range(size)]
    log.info("GPU pool: %d actors (%s) holding %s, %g GPU each", size, device, ", ".join(sorted(pooled)),
             num_gpus)
    return GpuPool(actors, max_in_flight=pool.max_in_flight, names=pooled, num_gpus=num_gpus)
