"""What every model-running component declares, scorers (``curation.scorers``) and the augmentation's makers
(``curation.augment``) alike: a name and version, the Python packages it needs (one readable error naming the pip
extra), its CPU/GPU request (class attributes the Ray runner reads; a component never calls ``ray`` itself), the
weights it loads (checked early, their sha256s recorded as provenance), and a heavy ``setup()`` run once per worker
process behind a cheap, picklable constructor."""

from __future__ import annotations

import importlib.util
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, ClassVar

from curation.errors import MissingDependencyError


class Component:
    name: ClassVar[str]
    version: ClassVar[str]
    requires: ClassVar[dict[str, str]] = {}  # importable module -> pip extra that installs it
    num_cpus: ClassVar[float] = 1.0  # read by the Ray runner
    num_gpus: ClassVar[float] = 0.0  # requested when the run's device is a GPU

    def __init__(self, config: Any, *, device: str = "cpu"):
        self.config = config  # must pickle: heavy state is built in setup()
        self.device = device  # "cpu" or "cuda", resolved by the caller (see curation.devices)
        self._ready = False
        self.counters: Counter[str] = Counter()

    def setup(self) -> None:
        """Load models; called once per worker process, before the first use."""

    def close(self) -> None:
        """Release models (called when the worker's cache is dropped)."""

    def weight_sources(self) -> dict[str, Any]:
        """Registry name -> the local file (or folder) configured in its place (None: the registry's) for every
        model this component loads."""
        return {}

    def models(self) -> dict[str, str]:
        """Model name -> sha256 of every weight file this component loads (for provenance)."""
        from curation import weights

        return {name: weights.model_sha256(name, local) for name, local in self.weight_sources().items()}

    def check_weights(self) -> None:
        """Fail early, naming the fetch command, when a weight file is missing or corrupt."""
        from curation import weights

        for name, local in self.weight_sources().items():
            weights.resolve_or_local(name, local)

    @property
    def version_tag(self) -> str:
        return f"{self.name}@{self.version}"  # the instance's (a test double may name itself per instance)

    @classmethod
    def version_tag_of(cls) -> str:
        return f"{cls.name}@{cls.version}"

    @classmethod
    def check_requirements(cls) -> None:
        for module, extra in cls.requires.items():
            if importlib.util.find_spec(module) is None:
                raise MissingDependencyError(
                    f"the {cls.name} component needs the Python package {module!r}: "
                    f"pip install 'megactor-pipeline[{extra}]'"
                )

    def ensure_setup(self) -> None:
        self._load_once(self.setup)

    def _load_once(self, load: Callable[[], None]) -> None:
        """``load()`` once per process, after the requirements check, timed into ``counters["setup_s"]``."""
        if not self._ready:
            self.check_requirements()
            started = time.perf_counter()
            load()
            self.counters["setup_s"] += time.perf_counter() - started
            self._ready = True
