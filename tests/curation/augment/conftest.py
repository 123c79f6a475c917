"""The augmentation tests' fixtures live in tests/conftest.py (the flow tests share them); this closes the
models the tests load in this process."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def _close_models():
    """MediaPipe must be closed before the interpreter's exit tears its threads down."""
    yield
    from curation.augment.pipeline import close_cached_components

    close_cached_components()
