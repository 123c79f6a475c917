"""A scorer whose model part is a stub, for the GPU pool's tests (a module of its own, light to import: the pool's
actors unpickle it). It sends ``clip.path`` split on "," as requests; the model part doubles a number, or kills its
process on "die" (every time) and "die-once" (the first time: a marker file says it happened)."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa

from curation.scorers.base import ClipSpan, Scorer


class StubScorer(Scorer):
    name = "stub"
    version = "1"
    version_column = "stub_version"
    has_model_part = True
    fields: ClassVar = (pa.field("stub_out", pa.list_(pa.int64())),)
    produced: ClassVar[list[int]] = []  # per result, the requests read and not yet answered (shard process)

    def infer(self, request: str) -> int:
        if request == "die" or (request == "die-once" and not Path(self.config["marker"]).exists()):
            Path(self.config["marker"]).touch()
            os._exit(1)
        time.sleep(0.05)
        return 1 if request == "die-once" else 2 * int(request)

    def score(self, clip: ClipSpan, upstream: Mapping[str, Any]) -> dict[str, Any]:
        read = 0

        def requests():
            nonlocal read
            for item in clip.path.split(","):
                read += 1
                yield item

        out = []
        for _, result in self.model_runner.map(self, requests()):
            self.produced.append(read - len(out))
            out.append(result)
        return {"stub_out": out}
