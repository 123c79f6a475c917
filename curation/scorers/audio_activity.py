"""Audio activity: is there speech on the track, or silence/noise? WebRTC's voice activity detector (a small,
well-kept C library) on 30 ms frames of 16 kHz mono audio, plus the track's RMS level.

``audio_speech_frac``: fraction of 30 ms frames the VAD marks as voiced. Digital silence and a -90 dB track
give 0; continuous speech gives 0.6-0.95 (pauses count as unvoiced)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from curation import media
from curation.scorers.base import ClipSpan, Scorer

SAMPLE_RATE = 16_000
FRAME = SAMPLE_RATE * 30 // 1000  # 480 samples


def speech_fraction(audio: np.ndarray, vad) -> float | None:
    pcm = (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2")
    n = len(pcm) // FRAME
    if n == 0:
        return None
    frames = pcm[: n * FRAME].reshape(n, FRAME)
    return float(np.mean([vad.is_speech(frame.tobytes(), SAMPLE_RATE) for frame in frames]))


def rms_dbfs(audio: np.ndarray) -> float | None:
    if len(audio) == 0:
        return None
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
    return float(20.0 * np.log10(max(rms, 1e-10)))


class AudioActivityScorer(Scorer):
    name = "audio_activity"
    version = "1.0"
    version_column = "audio_version"
    requires = {"webrtcvad": "curation"}
    needs_audio = True
    fields = (
        pa.field("audio_speech_frac", pa.float32()),
        pa.field("audio_rms_dbfs", pa.float32()),
    )

    def score(self, clip: ClipSpan, upstream: Mapping[str, Any]) -> dict[str, Any]:
        import webrtcvad

        audio = media.decode_audio(clip.path, start_s=clip.start_s, duration_s=clip.duration_s,
                                   sample_rate=SAMPLE_RATE)
        self.counters["audio_s_decoded"] += len(audio) / SAMPLE_RATE
        # A fresh detector per clip: the VAD adapts its noise estimate across calls, so a shared one would make
        # a clip's score depend on which clips this worker scored before it (and break resume equality).
        vad = webrtcvad.Vad(self.config.vad_aggressiveness)
        return {"audio_speech_frac": speech_fraction(audio, vad), "audio_rms_dbfs": rms_dbfs(audio)}
