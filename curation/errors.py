"""Typed errors. Inputs that fail become data (an ``error`` column and a reason); these exceptions carry the
message that ends up there, or stop a run at start when the configuration itself is wrong."""

from __future__ import annotations


class MegactorError(Exception):
    """Base class: every error the tool raises on purpose. The CLI prints its message, not a traceback."""


class ConfigError(MegactorError):
    """A configuration value is invalid; raised at start, naming the bad key and value."""


class MediaError(MegactorError):
    """A media file cannot be probed or decoded. ``reason`` is a short snake_case code stored in the manifest."""

    reason = "media_error"

    def __init__(self, message: str, *, path: str | None = None):
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)


class EmptyFileError(MediaError):
    reason = "empty_file"


class ProbeError(MediaError):
    reason = "probe_failed"


class DecodeError(MediaError):
    reason = "decode_failed"


class TooShortForSyncError(MediaError):
    """The span holds fewer frames or less audio than one SyncNet window needs."""

    reason = "too_short_for_sync"


class NoFaceFoundError(MediaError):
    """An image or video given as a face (inference's reference or driving video) shows none."""

    reason = "no_face"


class MediaTimeoutError(MediaError):
    reason = "media_timeout"


class ModelWorkerError(MediaError):
    """The GPU actor that runs a clip's model part died and Ray's restarts and retries did not bring it back for
    this request: the clip gets an error row (a rerun into a new output scores it again), never goes missing."""

    reason = "model_worker_failed"


class ToolMissingError(MegactorError):
    """An external program (ffmpeg, ffprobe) is not installed."""


class WeightsMissingError(MegactorError):
    """A model file is missing or does not match its registered checksum."""


class MissingDependencyError(MegactorError):
    """An optional Python package is needed; the message names the pip extra that provides it."""


class ShardsFailedError(MegactorError):
    """A run finished but some shards failed; rerunning the same command retries them (CLI exit status 1)."""


class TrainingError(MegactorError):
    """Training stopped: a worker failed (its message is carried), or the data left nothing to train on."""
