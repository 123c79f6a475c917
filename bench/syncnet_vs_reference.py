"""Benchmark: our SyncNet scoring against the reference evaluation (syncnet-python), same clip, same weights,
one process, one after the other. Both produce the same offset / Sync-C / Sync-D (checked here too).

- reference: the reference demo's steps: ffmpeg extracts JPEG frames and a 16 kHz wav into a folder, then
  ``SyncNetInstance.evaluate`` (batches of 20 windows, the whole video as one float tensor);
- ours: ``megactor sync``'s code path: one ffmpeg pipe for frames, one for audio, frames streamed into batched
  windows while decoding continues in a thread.

Without real weights the network gets random ones (the cost does not depend on the values). The scores printed
for both differ slightly: the reference reads JPEG frames it extracted, we decode the video directly (the parity
test removes that difference by giving both the same pixels).

    .venv/bin/python bench/syncnet_vs_reference.py [--clip FILE] [--weights FILE] [--batch-size 64] [--repeat 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from _report import emit  # noqa: E402

from curation import weights  # noqa: E402
from curation.config import SyncConfig  # noqa: E402
from curation.scorers.sync_syncnet import score_video  # noqa: E402
from tests.metrics import reference_syncnet  # noqa: E402


def _weights(path: str | None, clip: Path, tmp: Path) -> tuple[Path, str]:
    if path:
        return Path(path), "given"
    state, found = weights.status("syncnet_v2")
    if state == "ok":
        return found, "syncnet_v2 (real)"
    return reference_syncnet.random_weights(clip, tmp / "random.model"), "random, BatchNorm measured on the clip"


def _reference(clip: Path, model: Path, tmp: Path, device: str = "cpu") -> tuple[float, float, tuple]:
    """The reference demo's steps on ``device``: ffmpeg to JPEG frames and a wav, then
    ``SyncNetInstance.evaluate``. ``(total s, evaluation s, scores)``."""
    folder = tmp / f"ref-{time.perf_counter_ns()}"
    folder.mkdir()
    started = time.perf_counter()
    # the reference demo's own extraction commands (JPEG frames, as it writes them)
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(clip), "-threads", "1", "-f", "image2",
                    str(folder / "%06d.jpg")], check=True)
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(clip), "-async", "1", "-ac", "1", "-vn", "-acodec",
                    "pcm_s16le", "-ar", "16000", str(folder / "audio.wav")], check=True)
    extracted = time.perf_counter()
    scores = reference_syncnet.evaluate(model, folder, device=device)
    return time.perf_counter() - started, time.perf_counter() - extracted, scores


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    shared = Path(os.environ.get("MEGACTOR_ASSETS", Path(__file__).resolve().parents[2] / "shared"))
    parser.add_argument("--clip", default=str(shared / "videos" / "syncnet_example.avi"))
    parser.add_argument("--weights")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=2, help="runs of each; the best is reported")
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args()
    clip = Path(args.clip)
    with tempfile.TemporaryDirectory() as tmp:
        model, kind = _weights(args.weights, clip, Path(tmp))
        config = SyncConfig(weights=model, batch_size=args.batch_size)
        score_video(str(clip), config)  # warm-up: imports, first-call allocations
        ours, reference, reference_eval = [], [], []
        for _ in range(args.repeat):
            started = time.perf_counter()
            mine = score_video(str(clip), config)
            ours.append(time.perf_counter() - started)
            total, evaluate_only, theirs = _reference(clip, model, Path(tmp))
            reference.append(total)
            reference_eval.append(evaluate_only)
    figures = {
        "clip": str(clip), "weights": kind, "torch_threads": torch.get_num_threads(),
        "device": "cpu", "windows": mine["sync_windows"],
        "ours_s": round(min(ours), 2), "reference_s": round(min(reference), 2),
        "reference_evaluate_only_s": round(min(reference_eval), 2),
        "speedup_vs_reference": round(min(reference) / min(ours), 2),
        "speedup_vs_reference_evaluate_only": round(min(reference_eval) / min(ours), 2),
        "ours": {"offset": mine["sync_offset"], "sync_c": round(mine["sync_c"], 4), "sync_d": round(mine["sync_d"], 4)},
        "reference": {"offset": theirs[0], "sync_c": round(theirs[1], 4), "sync_d": round(theirs[2], 4)},
        "command": "python bench/syncnet_vs_reference.py " + " ".join(sys.argv[1:]),
    }
    return emit(figures, args.json)


if __name__ == "__main__":
    sys.exit(main())
