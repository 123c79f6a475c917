"""SyncNet lip-sync scores, computed exactly as the reference does (joonson/syncnet_python, the numbers every
lip-sync paper reports as Sync-C / Sync-D), but in memory, in batches, on a GPU when there is one.

The reference computation (see PAPER_NOTES.md):

- input: 25 fps video of 224x224 face crops (BGR, raw 0-255) and 16 kHz mono 16-bit audio;
- audio features: ``python_speech_features.mfcc(audio, 16000)`` with its defaults (13 coefficients, 25 ms window,
  10 ms step: 100 MFCC frames per second, 4 per video frame);
- windows: video frames v..v+4 against MFCC columns 4v..4v+19, for v in 0 .. min_len - 6, where
  min_len = min(video frames, audio samples // 640);
- the network in eval mode embeds each window (1024-d lip and audio features);
- for each video window i, the L2 distance to audio windows i-15 .. i+15 (zero features past the ends), averaged
  over i for each offset: ``mdist`` (31 values);
- AV offset = 15 - argmin(mdist); Sync-D = min(mdist); Sync-C = median(mdist) - min(mdist);
- per-window confidence: median(mdist) minus the window's distance at the best offset, median-filtered (9).

The network below has the reference's layer layout and parameter names, so the original ``syncnet_v2.model``
(a state dict) loads as is. It is written here rather than imported because the reference package cannot be
imported next to current PySceneDetect (its ``__init__`` pulls a pipeline that needs scenedetect<0.7);
``tests/metrics/test_syncnet_parity.py`` runs both on the same weights and clip."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

FPS = 25
SAMPLE_RATE = 16_000
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640
MFCC_PER_FRAME = 4  # 100 MFCC frames per second
WINDOW = 5  # video frames per window (0.2 s)
CROP = 224
FEATURES = 1024


def _stage(conv: nn.Conv2d | nn.Conv3d, pool: nn.Module | None = None) -> list[nn.Module]:
    norm = nn.BatchNorm2d if isinstance(conv, nn.Conv2d) else nn.BatchNorm3d
    return [conv, norm(conv.out_channels), nn.ReLU(inplace=True), *([pool] if pool is not None else [])]


def _head() -> nn.Sequential:
    return nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, FEATURES))


class SyncNet(nn.Module):
    """The SyncNet v2 two-stream network: an audio CNN over a 13x20 MFCC window and a lip CNN over five
    224x224 BGR frames, each followed by a fully connected head to a 1024-d feature."""

    def __init__(self) -> None:
        super().__init__()
        self.netcnnaud = nn.Sequential(
            *_stage(nn.Conv2d(1, 64, 3, padding=1), nn.MaxPool2d(1, 1)),
            *_stage(nn.Conv2d(64, 192, 3, padding=1), nn.MaxPool2d(3, stride=(1, 2))),
            *_stage(nn.Conv2d(192, 384, 3, padding=1)),
            *_stage(nn.Conv2d(384, 256, 3, padding=1)),
            *_stage(nn.Conv2d(256, 256, 3, padding=1), nn.MaxPool2d(3, stride=2)),
            *_stage(nn.Conv2d(256, 512, (5, 4))),
        )
        self.netfcaud = _head()
        self.netcnnlip = nn.Sequential(
            *_stage(nn.Conv3d(3, 96, (5, 7, 7), stride=(1, 2, 2)), nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2))),
            *_stage(nn.Conv3d(96, 256, (1, 5, 5), stride=(1, 2, 2), padding=(0, 1, 1)),
                    nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))),
            *_stage(nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1))),
            *_stage(nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1))),
            *_stage(nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2))),
            *_stage(nn.Conv3d(256, 512, (1, 6, 6))),
        )
        self.netfclip = _head()

    def forward_aud(self, mfcc: torch.Tensor) -> torch.Tensor:
        return self.netfcaud(self.netcnnaud(mfcc).flatten(1))  # (N, 1, 13, 20) -> (N, 1024)

    def forward_lip(self, frames: torch.Tensor) -> torch.Tensor:
        return self.netfclip(self.netcnnlip(frames).flatten(1))  # (N, 3, 5, 224, 224) -> (N, 1024)


def load_syncnet(path: str | Path, device: str = "cpu") -> SyncNet:
    """The network with weights from a reference-format file (a state dict, e.g. ``syncnet_v2.model``), in eval
    mode (BatchNorm on its running statistics, as the reference evaluates)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    net = SyncNet()
    net.load_state_dict(state)
    return net.to(device).eval()


# -- inputs ---------------------------------------------------------------------------------------------------

def mfcc_features(audio: np.ndarray) -> np.ndarray:
    """(13, T) MFCC of 16 kHz mono int16 audio, as the reference computes them."""
    import python_speech_features

    if audio.dtype != np.int16:
        raise TypeError(f"SyncNet audio must be 16-bit PCM samples (int16), got {audio.dtype}")
    return python_speech_features.mfcc(audio, SAMPLE_RATE).T.astype(np.float32)


def window_count(n_frames: int, n_samples: int) -> int:
    """Number of 5-frame windows the reference evaluates (0 when the clip is too short)."""
    return max(0, min(n_frames, n_samples // SAMPLES_PER_FRAME) - WINDOW)


# -- embeddings ------------------------------------------------------------------------------------------------

@torch.inference_mode()
def embed_audio(net: SyncNet, mfcc: np.ndarray, n_windows: int, *, batch_size: int, device: str) -> torch.Tensor:
    cc = torch.from_numpy(np.ascontiguousarray(mfcc)).to(device)
    feats = []
    for first in range(0, n_windows, batch_size):
        starts = range(first, min(n_windows, first + batch_size))
        batch = torch.stack([cc[:, MFCC_PER_FRAME * v: MFCC_PER_FRAME * v + MFCC_PER_FRAME * WINDOW] for v in starts])
        feats.append(net.forward_aud(batch[:, None]).float().cpu())  # (B, 1, 13, 20)
    return _cat(feats)


def _cat(feats: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat(feats) if feats else torch.zeros(0, FEATURES)


@torch.inference_mode()
def embed_lips(net: SyncNet, frames: Iterable[np.ndarray], max_windows: int, *, batch_size: int,
               device: str) -> tuple[torch.Tensor, int | None]:
    """Lip features of the windows of a stream of 224x224x3 uint8 BGR frames, at most ``max_windows``, and the
    stream's length (None when it was not read to its end). Batches run as soon as their frames have arrived,
    so a decoder feeding ``frames`` from another thread overlaps the network."""
    feats: list[torch.Tensor] = []
    buffer: list[np.ndarray] = []  # frames still needed by windows not yet run
    first = 0  # stream index of the next window (= of buffer[0])
    seen = 0

    def run(count: int) -> None:
        nonlocal buffer, first
        clip = torch.from_numpy(np.stack(buffer[: count + WINDOW - 1])).to(device)  # (F, 224, 224, 3) uint8
        clip = clip.permute(3, 0, 1, 2).float()  # (3, F, 224, 224)
        windows = torch.stack([clip[:, i: i + WINDOW] for i in range(count)])  # (B, 3, 5, 224, 224)
        feats.append(net.forward_lip(windows).float().cpu())
        buffer = buffer[count:]
        first += count

    for frame in frames:
        if first >= max_windows:
            break
        buffer.append(frame)
        seen += 1
        if len(buffer) >= batch_size + WINDOW - 1:
            run(min(batch_size, max_windows - first))
    else:
        while first < max_windows and len(buffer) >= WINDOW:
            run(min(batch_size, max_windows - first, len(buffer) - WINDOW + 1))
        return _cat(feats), seen
    return _cat(feats), None


# -- scores ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SyncScores:
    offset: int  # AV offset in frames (positive: the audio leads the video)
    sync_d: float  # min over offsets of the mean lip-audio distance
    sync_c: float  # median minus min of those distances
    frame_conf: np.ndarray  # per window: median(mdist) - distance at the best offset, median-filtered (9)
    mean_dists: np.ndarray  # the 2 * vshift + 1 offset-averaged distances
    windows: int

    def as_dict(self) -> dict[str, float | int]:
        return {"offset": self.offset, "sync_c": self.sync_c, "sync_d": self.sync_d}


def sync_scores(lip: torch.Tensor, aud: torch.Tensor, vshift: int = 15) -> SyncScores:
    """Sync-C, Sync-D and the AV offset from per-window lip and audio features, the reference's way."""
    from scipy.signal import medfilt

    n = lip.shape[0]
    if n == 0 or aud.shape[0] != n:
        raise ValueError(f"need as many lip as audio windows (> 0), got {lip.shape[0]} and {aud.shape[0]}")
    span = 2 * vshift + 1
    padded = nn.functional.pad(aud, (0, 0, vshift, vshift))  # zero features beyond both ends
    candidates = padded.unfold(0, span, 1).permute(0, 2, 1)  # (n, 31, 1024): audio windows i-15 .. i+15
    dists = nn.functional.pairwise_distance(lip[:, None, :].expand(-1, span, -1), candidates)  # (n, 31), over the last dim
    mean_dists = dists.mean(0)
    min_dist, best = torch.min(mean_dists, 0)
    median = torch.median(mean_dists)
    frame_conf = (median - dists[:, best]).numpy()
    return SyncScores(
        offset=int(vshift - best),
        sync_d=float(min_dist),
        sync_c=float(median - min_dist),
        frame_conf=medfilt(frame_conf, kernel_size=9).astype(np.float32),
        mean_dists=mean_dists.numpy(),
        windows=n,
    )


def evaluate(net: SyncNet, frames: Iterable[np.ndarray], audio: np.ndarray, *, vshift: int = 15,
             batch_size: int = 64, device: str = "cpu") -> SyncScores:
    """Scores of one face track: ``frames`` are its 25 fps 224x224 BGR uint8 crops (any iterable, consumed
    lazily), ``audio`` the matching 16 kHz int16 samples. As in the reference, the shorter of the two streams
    sets the number of windows."""
    if window_count(len(audio) // SAMPLES_PER_FRAME, len(audio)) == 0:
        raise ValueError(f"too short for SyncNet: {len(audio)} audio samples give no {WINDOW}-frame window")
    lip, aud = embed_windows(net, frames, mfcc_features(audio), len(audio), batch_size=batch_size, device=device)
    return sync_scores(lip, aud, vshift)


def embed_windows(net: SyncNet, frames: Iterable[np.ndarray], mfcc: np.ndarray, n_samples: int, *,
                  batch_size: int = 64, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """The network's part of :func:`evaluate`: lip and audio features (W, 1024) of the W windows of a track,
    given its frames, its MFCC (:func:`mfcc_features`) and its number of audio samples. Raises ValueError when
    there is no window."""
    max_windows = window_count(n_samples // SAMPLES_PER_FRAME, n_samples)
    if max_windows == 0:
        raise ValueError(f"too short for SyncNet: {n_samples} audio samples give no {WINDOW}-frame window")
    lip, n_frames = embed_lips(net, frames, max_windows, batch_size=batch_size, device=device)
    n_windows = max_windows if n_frames is None else window_count(n_frames, n_samples)
    if n_windows == 0:
        raise ValueError(f"too short for SyncNet: {n_frames} frames and {n_samples} audio samples give no "
                         f"{WINDOW}-frame window")
    aud = embed_audio(net, mfcc, n_windows, batch_size=batch_size, device=device)
    return lip[:n_windows], aud
