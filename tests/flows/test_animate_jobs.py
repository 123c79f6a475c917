"""The batch form's jobs files and result rows (no model needed)."""

from __future__ import annotations

import pytest

from curation.errors import ConfigError
from flows.animate import AnimateJob, load_jobs, run_job


def test_yaml_jobs_take_defaults_and_resolve_paths_beside_the_file(tmp_path):
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text("defaults: {steps: 4, audio: speech.wav}\njobs:\n"
                    "  - {reference: a.png, output: out/a.mp4, visual_alpha: curve.txt}\n"
                    "  - {reference: /abs/b.png, mode: audio, output: /abs/b.mp4, steps: 9}\n")
    first, second = load_jobs(jobs)
    assert first.reference == str(tmp_path / "a.png") and first.audio == str(tmp_path / "speech.wav")
    assert first.visual_alpha == str(tmp_path / "curve.txt") and first.steps == 4 and first.mode == "mixed"
    assert second.reference == "/abs/b.png" and second.steps == 9


def test_csv_jobs_and_every_problem_named(tmp_path):
    jobs = tmp_path / "jobs.csv"
    jobs.write_text("reference,mode,output,steps\na.png,visual,a.mp4,3\n")
    (job,) = load_jobs(jobs)
    assert job.steps == 3 and job.output == str(tmp_path / "a.mp4")
    jobs.write_text("reference,mode,output\na.png,sideways,a.mp4\na.png,audio,\nb.png,audio,a.mp4\n")
    with pytest.raises(ConfigError, match=r"2 bad job\(s\)") as error:
        load_jobs(jobs)
    assert "job 1: mode" in str(error.value) and "job 2: output" in str(error.value)
    jobs.write_text("reference,output\na.png,same.mp4\nb.png,same.mp4\n")
    with pytest.raises(ConfigError, match="same output"):
        load_jobs(jobs)
    with pytest.raises(ConfigError, match="not found"):
        load_jobs(tmp_path / "missing.yaml")


def test_a_job_whose_output_exists_is_skipped_without_loading_a_model(tmp_path):
    out = tmp_path / "done.mp4"
    out.write_bytes(b"x")
    job = AnimateJob(reference="a.png", output=str(out))
    assert run_job(job, str(tmp_path / "no-model"), "cpu", "ddim")["status"] == "skipped"
    row = run_job(job, str(tmp_path / "no-model"), "cpu", "ddim", overwrite=True)
    assert row["status"] == "error" and "no trained model" in row["error"]
