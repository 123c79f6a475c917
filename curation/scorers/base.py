"""The scorer contract. A scorer is one small class: a name, a version, the columns it adds, what it needs
(Python packages, CPU/GPU, weights: ``curation.component.Component``), a heavy ``setup()`` run once per worker
process and a ``score()`` per clip. This base class owns the rest: lazy setup, timing, counters and error capture,
so a bad input becomes data (an ``error`` and a reason on the clip) and never stops a shard."""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import pyarrow as pa

from curation.component import Component
from curation.errors import MediaError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClipSpan:
    """What a scorer is asked to score: a time span of a probed source."""

    path: str
    start_s: float
    end_s: float
    probe: Any  # curation.media.ProbeResult

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


class ModelRunner(Protocol):
    """Runs a scorer's model part (``Scorer.infer``) on a stream of requests, in order. In-process by default
    (:class:`LocalRunner`); ``curation.gpu_pool`` provides one backed by Ray actors that hold the model on a GPU."""

    remote: bool  # requests leave the process (a scorer then materialises lazy inputs before sending them)

    def map(self, scorer: Scorer, requests: Iterable[Any]) -> Iterator[tuple[Any, Any]]:
        """``(request, scorer.infer(request))`` for each request, in order, computed wherever the model lives."""


class LocalRunner:
    remote = False

    def map(self, scorer: Scorer, requests: Iterable[Any]) -> Iterator[tuple[Any, Any]]:
        for request in requests:
            yield request, scorer.infer(request)


LOCAL_RUNNER = LocalRunner()


class Scorer(Component, ABC):
    fields: ClassVar[tuple[pa.Field, ...]]  # the manifest columns this scorer fills (all nullable)
    version_column: ClassVar[str]  # the manifest column that records which scorer version filled them
    needs_audio: ClassVar[bool] = False  # skip (leave null) on sources without an audio stream
    inputs: ClassVar[tuple[str, ...]] = ()  # columns of earlier scorers that score() reads (skip when null)
    # True: score() is the CPU part (decode, crop, features) and sends model requests through ``model_runner``
    # to ``infer()``, which may run in a GPU actor (curation.gpu_pool); setup() then loads nothing here
    has_model_part: ClassVar[bool] = False
    model_runner: ModelRunner = LOCAL_RUNNER  # set per instance by the shard runner
    decode_options: Mapping[str, Any] = {}  # extra media.iter_frames keywords set by the runner (e.g. hwaccel)

    def infer(self, request: Any) -> Any:
        """The model part: one batched request -> its outputs (needs ``setup_model()`` first)."""
        raise NotImplementedError(f"{self.name} has no model part")

    def setup_model(self) -> None:
        """Load the model ``infer()`` runs (once per process that runs it: the shard's, or a GPU actor's)."""

    def setup(self) -> None:
        if self.has_model_part and not self.model_runner.remote:
            self.setup_model()

    def ensure_model(self) -> None:
        """For a process that only runs the model part (a GPU actor): load the model once."""
        self._load_once(self.setup_model)

    @abstractmethod
    def score(self, clip: ClipSpan, upstream: Mapping[str, Any]) -> dict[str, Any]:
        """Columns for one clip (a subset of ``fields``); raise a MediaError for bad input. ``upstream`` holds
        the (non-null) ``inputs`` columns that earlier scorers produced for this clip."""

    def run(self, clip: ClipSpan, row: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], str | None, str | None]:
        """``(columns, error_reason, error_message)`` for one clip, with timing and counters. ``row`` holds the
        columns scored so far (the clip's manifest row); a scorer whose inputs are missing is skipped and
        leaves its columns null, so the filter reports its rules as unscored."""
        if self.needs_audio and not clip.probe.has_audio:
            self.counters["skipped_no_audio"] += 1
            return {}, None, None
        upstream = {name: (row or {}).get(name) for name in self.inputs}
        if any(value is None for value in upstream.values()):
            self.counters["skipped_missing_inputs"] += 1
            return {}, None, None
        self.ensure_setup()
        started = time.perf_counter()
        try:
            columns = self.score(clip, upstream)
        except MediaError as error:
            self.counters["errors"] += 1
            return {}, error.reason, f"{self.name}: {error}"
        except Exception as error:  # a bug must not kill the shard; it is counted and reported loudly
            log.exception("%s crashed on %s [%.2f, %.2f]", self.name, clip.path, clip.start_s, clip.end_s)
            self.counters["internal_errors"] += 1
            return {}, "internal_error", f"{self.name}: {type(error).__name__}: {error}"
        finally:
            self.counters["wall_s"] += time.perf_counter() - started
        self.counters["clips"] += 1
        self.counters["video_s"] += clip.duration_s
        return columns, None, None
