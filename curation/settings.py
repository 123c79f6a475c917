"""Process-wide settings read from the environment (one place, so tests, CI and the demo agree).

- ``MEGACTOR_WEIGHTS_DIR``: the weights cache (default ``~/.cache/megactor/weights``).
- ``MEGACTOR_ASSETS``: the parent of the shared test clips, ``videos/`` inside it (CI: ``../shared``).
"""

from __future__ import annotations

import os
from pathlib import Path


def weights_dir() -> Path:
    env = os.environ.get("MEGACTOR_WEIGHTS_DIR")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "megactor" / "weights"


def assets_dir() -> Path | None:
    env = os.environ.get("MEGACTOR_ASSETS")
    return Path(env).expanduser() if env else None
