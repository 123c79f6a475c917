"""End to end: ``megactor animate`` with the checkpoint the training flow's fixture trains (tiny model, three
stages chained), real shared clips, in every mode; its batch form through the Prefect flow on Ray; ``megactor
export`` of a step checkpoint."""

from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest

from curation import media

pytestmark = pytest.mark.slow

SPEAKER = "mimictalk_German_20s.mp4"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, videos_dir):
    folder = tmp_path_factory.mktemp("animate-inputs")
    path = videos_dir / SPEAKER
    _, rgb = next(iter(media.iter_frames(path, media.probe(path), start_s=3.0, duration_s=0.1)))
    cv2.imwrite(str(folder / "reference.png"), rgb[:, :, ::-1])
    cv2.imwrite(str(folder / "blank.png"), np.full((96, 96, 3), 90, np.uint8))
    # 1.2 s of the speaker's audio as a file of its own (audio only, AAC in m4a)
    import subprocess

    subprocess.run(["ffmpeg", "-v", "error", "-y", "-ss", "4", "-t", "1.2", "-i", str(path), "-vn", "-c:a", "aac",
                    str(folder / "speech.m4a")], check=True)
    return folder


def _frames(path) -> int:
    probe = media.probe(path)
    return sum(1 for _ in media.iter_frames(path, probe, fps=25))


def test_animate_makes_the_video_with_the_audio_muxed(megactor, trained, inputs, videos_dir, tmp_path):
    run, _ = trained
    out = tmp_path / "mixed.mp4"
    done = megactor("animate", "--checkpoint", str(run), "--reference", str(inputs / "reference.png"),
                    "--driving", str(videos_dir / SPEAKER), "--audio", str(inputs / "speech.m4a"),
                    "--mode", "mixed", "--visual-alpha", "0.7", "--audio-scale", "1.2", "--steps", "2",
                    "--output", str(out), timeout=600)
    assert "s per generated frame" in done.stdout
    _check_video(out, inputs)


def _check_video(out, inputs) -> None:
    audio_s = media.probe(inputs / "speech.m4a").duration_s  # past it, a decoder gives the encoder's padding
    assert _frames(out) == int(np.ceil(audio_s * 25 - 1e-6))
    probe = media.probe(out)
    assert probe.has_audio and probe.width == 64 and probe.video_codec == "h264"
    assert abs(probe.duration_s - audio_s) < 0.05  # the audio, whole and in sync
    assert abs(len(media.decode_audio(out, duration_s=audio_s)) / 16000 - audio_s) < 0.01


def test_animate_refuses_bad_input_with_a_message(megactor, trained, inputs, tmp_path):
    run, _ = trained
    done = megactor("animate", "--checkpoint", str(run), "--reference", str(inputs / "blank.png"), "--audio",
                    str(inputs / "speech.m4a"), "--mode", "audio", "--output", str(tmp_path / "x.mp4"), check=False)
    assert done.returncode == 2 and "no face found" in done.stderr and "Traceback" not in done.stderr
    done = megactor("animate", "--checkpoint", str(tmp_path), "--reference", str(inputs / "reference.png"),
                    "--audio", str(inputs / "speech.m4a"), "--output", str(tmp_path / "x.mp4"), check=False)
    assert done.returncode == 2 and "no trained model" in done.stderr


def test_batch_jobs_run_as_a_flow_in_every_mode(megactor, trained, inputs, videos_dir, tmp_path):
    run, _ = trained
    jobs = tmp_path / "jobs.yaml"
    common = {"reference": str(inputs / "reference.png"), "driving": str(videos_dir / SPEAKER)}
    jobs.write_text(json.dumps({"defaults": {"steps": 1, "audio": str(inputs / "speech.m4a")}, "jobs": [
        {**common, "mode": "audio", "output": "out/audio.mp4"},
        {**common, "mode": "visual", "visual_alpha": 0.0, "output": "out/visual.mp4"},
        {**common, "mode": "mixed", "audio_scale": 0.5, "output": "out/mixed.mp4"},
        {"reference": str(inputs / "blank.png"), "mode": "audio", "output": "out/faceless.mp4"},
    ]}))
    done = megactor("animate", "--jobs", str(jobs), "--checkpoint", str(run), check=False, timeout=900)
    assert done.returncode == 1  # one job failed; the others were made
    assert "4 jobs: 3 made, 0 already there, 1 failed" in done.stdout
    rows = list(csv.DictReader(open(tmp_path / "jobs.results.csv")))
    assert [r["status"] for r in rows] == ["ok", "ok", "ok", "error"] and "no face" in rows[3]["error"]
    assert all(float(r["seconds_per_frame"]) > 0 for r in rows[:3])
    for mode in ("audio", "visual", "mixed"):
        _check_video(tmp_path / "out" / f"{mode}.mp4", inputs)
    assert not (tmp_path / "out" / "faceless.mp4").exists()


def test_bad_jobs_files_are_reported_at_once(megactor, trained, tmp_path):
    jobs = tmp_path / "jobs.csv"
    jobs.write_text("reference,mode,output\nface.png,sideways,a.mp4\nface.png,audio,\n")
    done = megactor("animate", "--jobs", str(jobs), "--checkpoint", str(trained[0]), check=False)
    assert done.returncode == 2 and "2 bad job(s)" in done.stderr and "job 1: mode" in done.stderr


def test_export_writes_the_inference_files_of_any_checkpoint(megactor, trained, tmp_path):
    run, _ = trained
    step = sorted((run / "stage1" / "checkpoints").glob("step-*"))[-1]
    megactor("export", str(step), "--output", str(tmp_path / "exported"))
    meta = json.loads((tmp_path / "exported" / "model.json").read_text())
    assert meta["stage"] == 1 and meta["format"] == "megactor-inference/1"
    assert (tmp_path / "exported" / "model.safetensors").stat().st_size > 0
