"""Benchmark: the training loader's cost per sample, the one-process decoding (issue 12) and the in-process PyAV
decoding (``data.decoder: pyav``) against the loader before them (``ManifestDataset(legacy_decode=True)``: an
ffmpeg per segment, reference frame, variant and audio window, an ffprobe per variant sample, followed by the
float32 conversion that loader ran on every sample), in one run, on the same (epoch, index) items, per stage.
The loader now returns compact samples (uint8 pixels, uint8 0/1 masks; the trainer converts them on its device,
``training.data.model_inputs``): ``one_process`` and ``pyav`` are timed so, and ``pyav_cpu_convert`` is the PyAV
loader followed by the same float32 conversion as the legacy one's, for a trainer that converts on the CPU. The
conversion is the one the loader ran before (numpy's float32 division, single-threaded: the same values as
``model_inputs``, whose torch ops cost more core time with intra-op threads on a busy machine). The figure is
samples per core-second: CPU time of this process and its ffmpeg/ffprobe children (``resource.getrusage``), which
load from other work on the machine moves less than wall time (also reported). The loaders alternate in rounds
so that a change of load hits all alike; every one-process sample is checked equal to the legacy one (the uint8
samples, and the converted floats against ``model_inputs`` of the one-process sample), every PyAV sample equal
but for the audio, whose largest difference is reported.

Input: the tiny manifest curated from two shared clips (or ``--manifest``), each clip with a face-swap stand-in
(negated, half size) and a stylized one (desaturated) in the variant columns, so that the 50/40/10 driving mix
decodes variants as training on an augmented run does.

    .venv/bin/python bench/train_loader.py [--resolution 256] [--samples 24] [--variant-gop 25] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import torch  # noqa: E402
from _report import emit  # noqa: E402

from curation.manifest import read_manifest  # noqa: E402
from training.data import (  # noqa: E402
    MASK_KEYS,
    SIGNED_KEYS,
    UNIT_KEYS,
    VARIANT_COLUMNS,
    DataConfig,
    ManifestDataset,
    _signed_values,
    _unit_values,
    model_inputs,
)

STAGES = {1: 1, 2: 1, 3: 16}  # stage -> num_frames, as training/configs/stage{1,2,3}.yaml


def core_seconds() -> tuple[float, float]:
    """CPU seconds (user + system) of this process and of its finished children (ffmpeg, ffprobe)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def with_variants(manifest: Path, folder: Path, gop: int | None) -> pa.Table:
    """The manifest's kept rows, each with a face-swap and a stylized stand-in in the variant columns, encoded as
    ``megactor augment`` writes variants (x264, its default 250-frame keyframe interval) or every ``gop``
    frames."""
    table = read_manifest(manifest)
    table = table.filter(pa.array([bool(k) for k in table.column("keep").to_pylist()]))
    columns = {kind: [] for kind in VARIANT_COLUMNS}
    for row in table.to_pylist():
        for kind, video_filter in (("faceswap", "negate,scale=256:256"), ("stylized", "hue=s=0")):
            path = folder / f"{row['clip_id']}-{kind}.mp4"
            subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-ss", str(row["start_s"]), "-t",
                            str(row["duration_s"]), "-i", row["source_path"], "-an", "-vf", video_filter,
                            "-c:v", "libx264", "-preset", "veryfast", "-crf", "18",
                            *(["-g", str(gop)] if gop else []), str(path)], check=True)
            columns[kind].append(str(path))
    for kind, column in VARIANT_COLUMNS.items():
        table = table.set_column(table.schema.get_field_index(column), column, pa.array(columns[kind], pa.string()))
    return table


def as_before(sample: dict | None) -> dict | None:
    """The float32 sample the loader returned before it handed over uint8: its pixels through its own numpy
    conversion (channels last, then a channels-first view), its masks as float32 0/1."""
    if sample is None:
        return None
    out = dict(sample)
    for key in (*SIGNED_KEYS, *UNIT_KEYS):
        pixels = sample[key]
        last = pixels.permute(*range(pixels.dim() - 3), -2, -1, -3).numpy()  # the decoded channels-last array
        values = (_signed_values if key in SIGNED_KEYS else _unit_values)(last)
        out[key] = torch.from_numpy(values).permute(*range(pixels.dim() - 3), -1, -3, -2)
    for key in MASK_KEYS:
        out[key] = torch.from_numpy(sample[key].numpy().astype(np.float32))
    return out


def same(a: dict | None, b: dict | None) -> bool:
    if a is None or b is None:
        return a is b
    return a.keys() == b.keys() and all(
        torch.equal(v, b[k]) if torch.is_tensor(v) else v == b[k] for k, v in a.items())


def differences(a: dict | None, b: dict | None) -> tuple[bool, float]:
    """Whether every value but the audio is equal, and the largest audio difference (the PyAV loader's audio may
    differ by one 16-bit step)."""
    if a is None or b is None:
        return a is b, 0.0
    rest = same({k: v for k, v in a.items() if k != "audio"}, {k: v for k, v in b.items() if k != "audio"})
    return rest, float((a["audio"] - b["audio"]).abs().max()) if len(a["audio"]) else 0.0


def measure(table: pa.Table, stage: int, resolution: int, samples: int, rounds: int) -> dict:
    config = DataConfig(num_frames=STAGES[stage], resolution=resolution)
    pyav = dataclasses.replace(config, decoder="pyav")
    # name -> (dataset, whether the float32 conversion runs after it, in the timed region)
    loaders = {"legacy": (ManifestDataset(config, stage=stage, table=table, legacy_decode=True), True),
               "one_process": (ManifestDataset(config, stage=stage, table=table), False),
               "pyav": (ManifestDataset(pyav, stage=stage, table=table), False),
               "pyav_cpu_convert": (ManifestDataset(pyav, stage=stage, table=table), True)}
    count = len(loaders["legacy"][0])
    items = [(n // count, n % count) for n in range(samples)]
    for dataset, convert in loaders.values():  # warm-up (imports, first-use allocations), not counted
        sample = dataset[items[0]]
        if convert:
            as_before(sample)
    cpu = dict.fromkeys(loaders, 0.0)
    ffmpeg_cpu = dict.fromkeys(loaders, 0.0)
    wall = dict.fromkeys(loaders, 0.0)
    equal, converted_equal, pyav_equal, audio_diff = True, True, True, 0.0
    chunk = max(1, len(items) // rounds)
    for begin in range(0, len(items), chunk):  # alternate, so that a change of load hits all alike
        part = items[begin: begin + chunk]
        out, floats = {}, {}
        for name, (dataset, convert) in loaders.items():
            (own, children), w = core_seconds(), time.perf_counter()
            out[name] = [dataset[item] for item in part]
            if convert:
                floats[name] = [as_before(sample) for sample in out[name]]
            own_after, children_after = core_seconds()
            cpu[name] += own_after - own + children_after - children
            ffmpeg_cpu[name] += children_after - children
            wall[name] += time.perf_counter() - w
        equal &= all(same(a, b) for a, b in zip(out["legacy"], out["one_process"], strict=True))
        converted_equal &= all(
            same(a, None if b is None else model_inputs(b, "cpu"))
            for a, b in zip(floats["legacy"], out["one_process"], strict=True))
        converted_equal &= all(differences(a, b)[0] for a, b in zip(floats["legacy"], floats["pyav_cpu_convert"],
                                                                   strict=True))
        for a, b in zip(out["legacy"], out["pyav"], strict=True):
            rest, diff = differences(a, b)
            pyav_equal &= rest
            audio_diff = max(audio_diff, diff)
    figures = {name: {"core_s_per_sample": round(cpu[name] / len(items), 4),
                      "samples_per_core_s": round(len(items) / cpu[name], 2),
                      "ffmpeg_core_s_per_sample": round(ffmpeg_cpu[name] / len(items), 4),
                      "samples_per_wall_s": round(len(items) / wall[name], 2)} for name in loaders}
    for name in ("one_process", "pyav", "pyav_cpu_convert"):
        figures[f"ratio_per_core_s_{name}"] = round(cpu["legacy"] / cpu[name], 2)
        figures[f"ratio_per_wall_s_{name}"] = round(wall["legacy"] / wall[name], 2)
    figures["samples_equal"] = equal
    figures["floats_equal_model_inputs"] = converted_equal
    figures["pyav_equal_but_audio"] = pyav_equal
    figures["pyav_audio_max_abs_diff"] = audio_diff
    figures["failures"] = {name: dict(dataset.failures) for name, (dataset, _) in loaders.items()}
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    shared = Path(os.environ.get("MEGACTOR_ASSETS", Path(__file__).resolve().parents[2] / "shared"))
    parser.add_argument("--videos", default=str(shared / "videos"))
    parser.add_argument("--manifest", help="a curated manifest (default: two shared clips curated here)")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--stages", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--samples", type=int, default=24, help="(epoch, index) items per stage")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variant-gop", type=int, help="encode the variants with a keyframe every N frames")
    parser.add_argument("--json")
    args = parser.parse_args()
    figures: dict = {"command": "python bench/train_loader.py " + " ".join(sys.argv[1:]),
                     "resolution": args.resolution, "samples_per_stage": args.samples,
                     "load_average_at_start": [round(v, 2) for v in os.getloadavg()], "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        if args.manifest:
            manifest = Path(args.manifest)
        else:
            from tests.tiny_manifest import build_tiny_manifest

            manifest = build_tiny_manifest(Path(args.videos), Path(tmp) / "manifest")
        table = with_variants(manifest, Path(tmp), args.variant_gop)
        for stage in args.stages:
            figures[f"stage{stage}_{STAGES[stage]}f"] = measure(table, stage, args.resolution, args.samples,
                                                                args.rounds)
    figures["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    return emit(figures, args.json)


if __name__ == "__main__":
    sys.exit(main())
