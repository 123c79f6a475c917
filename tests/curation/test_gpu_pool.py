"""The GPU scorers' model parts in a pool of Ray actors (curation.gpu_pool), proved on the CPU: the actors run
with num_gpus=0 and must give the rows the in-process scorers give, on real clips; a shard keeps a bounded
number of requests in flight; an actor that dies is restarted and its request retried, or the clip gets an
error row. And NVDEC decoding: the ffmpeg command it builds, and the fallback to the CPU decoder."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from curation import devices, gpu_pool, media, pipeline
from curation.config import load_config
from curation.inventory import inventory_rows
from curation.manifest import read_manifest
from curation.scorers.base import ClipSpan
from curation.sources import make_source
from tests.conftest import REPO
from tests.curation.pool_stub import StubScorer
from tests.tiny_dwpose import make_detector, make_pose

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})  # the actors unpickle tests' stub scorer
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def paper_config(tmp_path_factory, random_syncnet_weights):
    """The paper profile on tiny DWPose models and SyncNet with random weights, every clip scored."""
    root = tmp_path_factory.mktemp("pool_models")
    detector, pose = make_detector(root / "det.onnx", "N"), make_pose(root / "pose.onnx", "N")
    return load_config(None, {"profile": "paper", "runtime.score_all": True, "runtime.device": "cpu",
                              "face.dwpose.detector_weights": str(detector), "face.dwpose.pose_weights": str(pose),
                              "face.dwpose.batch_size": 4, "sync.weights": str(random_syncnet_weights),
                              "runtime.gpu_pool.mode": "on", "runtime.gpu_pool.size": 1})


@pytest.fixture(scope="module")
def short_sources(tmp_path_factory, videos_dir) -> list[dict[str, Any]]:
    """Two real sources cut short (SyncNet on the CPU costs ~0.1 s per frame): a talking face with audio, and a
    silent one (SyncNet skips it), plus a file that is not a video."""
    folder = tmp_path_factory.mktemp("pool_in")
    for name, seconds in (("w2lgfpgan_kim_7s_raw.mp4", 1.6), ("liveportrait_d0_noaudio.mp4", 1.0)):
        subprocess.run(["ffmpeg", "-v", "error", "-i", str(videos_dir / name), "-t", str(seconds), "-vf",
                        "scale=640:-2", "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac",
                        str(folder / name)], check=True)
    (folder / "broken.mp4").write_text("not a video")
    return inventory_rows(make_source("folder", folder).iter_files())


def test_without_ray_the_pool_stays_off(paper_config):
    if ray.is_initialized():
        pytest.skip("Ray is running in this process")
    assert pipeline.start_gpu_pool(paper_config) is None


def test_the_pool_gives_the_rows_of_the_in_process_scorers(local_ray, paper_config, short_sources, tmp_path):
    local = pipeline.ShardProcessor(paper_config, tmp_path / "local").process(0, short_sources)
    pool = pipeline.start_gpu_pool(paper_config)
    assert pool is not None and pool.names == {"face_dwpose", "sync_syncnet"} and pool.num_gpus == 0.0
    try:
        pooled = pipeline.ShardProcessor(paper_config, tmp_path / "pooled", pool=pool).process(0, short_sources)
    finally:
        pool.shutdown()
    expected = read_manifest(tmp_path / "local" / "manifest").to_pylist()
    got = read_manifest(tmp_path / "pooled" / "manifest").to_pylist()
    assert got == expected and len(got) == 3
    talking = next(row for row in got if row["source_path"].endswith("kim_7s_raw.mp4"))
    assert talking["face_present_frac"] == 1.0 and talking["sync_c"] is not None and talking["sync_windows"] >= 30
    # the shard decoded (CPU part) but loaded no model: the models are the actor's
    assert pooled["scorers"]["face_dwpose"]["frames_decoded"] == local["scorers"]["face_dwpose"]["frames_decoded"]
    shard_scorers = pipeline.cached_scorers(paper_config, pooled=True)
    assert all(getattr(s, "_model", None) is None and getattr(s, "_net", None) is None for s in shard_scorers)


def test_with_a_pool_the_shard_task_asks_for_no_gpu(paper_config):
    cuda = paper_config.with_overrides({"runtime.device": "cuda"})
    pool = gpu_pool.GpuPool(["actor"], max_in_flight=2, names={"face_dwpose", "sync_syncnet"}, num_gpus=0.5)
    assert pipeline.ray_resources(cuda)["num_gpus"] == 0.5  # without the pool: DWPose's share, held throughout
    assert pipeline.ray_resources(cuda, pool) == {"num_cpus": 1.0, "num_gpus": 0.0}
    nvdec = cuda.with_overrides({"runtime.gpu_pool.shard_num_gpus": 0.05})
    assert pipeline.ray_resources(nvdec, pool)["num_gpus"] == 0.05  # to see a GPU for NVDEC


def test_auto_turns_the_pool_on_where_the_cluster_has_gpus():
    config = load_config()
    assert not gpu_pool.pool_wanted(config, 0.0) and gpu_pool.pool_wanted(config, 8.0)
    assert not gpu_pool.pool_wanted(config.with_overrides({"runtime.device": "cpu"}), 8.0)
    assert not gpu_pool.pool_wanted(config.with_overrides({"runtime.gpu_pool.mode": "off"}), 8.0)
    assert gpu_pool.pool_wanted(config.with_overrides({"runtime.gpu_pool.mode": "on"}), 0.0)
    assert gpu_pool.actor_layout(config, 8.0) == (32, 0.25)  # four actors per GPU, a quarter each
    assert gpu_pool.actor_layout(config.with_overrides({"runtime.gpu_pool.actors_per_gpu": 2}), 2.0) == (4, 0.5)
    assert gpu_pool.actor_layout(config, 0.0) == (1, 0.0)
    assert load_config(None, {"runtime.gpu_pool.mode": False}).runtime.gpu_pool.mode == "off"  # YAML's bare off


# -- backpressure and failures, with a scorer whose model part is a stub (tests/curation/pool_stub.py) ----------

def _stub_pool(tmp_path: Path, *, in_flight: int, restarts: int, retries: int) -> tuple[StubScorer, Any]:
    config = load_config(None, {"runtime.gpu_pool.mode": "on", "runtime.gpu_pool.max_in_flight": in_flight,
                                "runtime.gpu_pool.max_restarts": restarts,
                                "runtime.gpu_pool.max_task_retries": retries,
                                "runtime.gpu_pool.actor_num_cpus": 0.5})
    marker = {"marker": str(tmp_path / "died")}
    pool = gpu_pool.start(config, lambda device: [StubScorer(marker, device=device)])
    scorer = StubScorer(marker)
    scorer.model_runner = pool
    return scorer, pool


def _clip(requests: str) -> ClipSpan:
    return ClipSpan(requests, 0.0, 1.0, None)


def test_a_bounded_number_of_requests_in_flight_and_model_errors_as_in_process(local_ray, tmp_path):
    scorer, pool = _stub_pool(tmp_path, in_flight=3, restarts=0, retries=0)
    try:
        StubScorer.produced.clear()
        row, reason, _ = scorer.run(_clip(",".join(str(i) for i in range(12))))
        assert reason is None and row["stub_out"] == [2 * i for i in range(12)]  # in order
        assert max(StubScorer.produced) == 3 and StubScorer.produced[0] == 3  # 3 read ahead, never more
        row, reason, message = scorer.run(_clip("1,not-a-number"))
        assert reason == "internal_error" and "ValueError" in message  # what the in-process scorer reports
    finally:
        pool.shutdown()


def test_a_dead_actor_is_restarted_and_retried_or_the_clip_gets_an_error_row(local_ray, tmp_path):
    scorer, pool = _stub_pool(tmp_path, in_flight=2, restarts=2, retries=1)
    try:
        row, reason, message = scorer.run(_clip("1,die-once,3"))  # dies once: restarted, the request retried
        assert (tmp_path / "died").exists(), "the actor was meant to die once"
        assert reason is None, message
        assert row["stub_out"] == [2, 1, 6]
        row, reason, message = scorer.run(_clip("1,die"))  # dies on every try: an error row, not a lost clip
        assert row == {} and reason == "model_worker_failed" and "stub" in message
        assert scorer.counters["errors"] == 1 and scorer.counters["clips"] == 1
    finally:
        pool.shutdown()


# -- NVDEC ----------------------------------------------------------------------------------------------------

def _command(monkeypatch, videos_dir, **options) -> list[str]:
    seen = {}
    monkeypatch.setattr(media, "_read_frames", lambda cmd, *args: seen.setdefault("cmd", cmd))
    path = videos_dir / "w2lgfpgan_kim_7s_raw.mp4"
    media.iter_frames(path, media.probe(path), start_s=1.0, duration_s=2.0, fps=5, max_side=640, **options)
    return seen["cmd"]


def test_hwaccel_adds_the_cuda_decoder_and_keeps_rgb24_frames(monkeypatch, videos_dir):
    plain = _command(monkeypatch, videos_dir)
    nvdec = _command(monkeypatch, videos_dir, hwaccel="cuda")
    at = nvdec.index("-hwaccel")
    assert nvdec[at + 1] == "cuda" and at < nvdec.index("-i")  # an input option
    assert nvdec[:at] + nvdec[at + 2:] == plain  # nothing else changes: same filters, same rgb24 pipe
    assert plain[plain.index("-pix_fmt") + 1] == "rgb24" and "-hwaccel_output_format" not in nvdec


def test_hwaccel_falls_back_to_the_cpu_decoder_with_a_log_line(monkeypatch, caplog):
    def decide(requested: str) -> str | None:
        devices.decode_hwaccel.cache_clear()
        return devices.decode_hwaccel(requested)

    monkeypatch.setattr(devices, "nvdec_decodes", lambda: True)
    monkeypatch.setattr(devices, "ffmpeg_hwaccels", lambda: ("vdpau", "cuda"))
    monkeypatch.setattr(devices, "gpu_visible", lambda: True)
    assert decide("off") is None and decide("auto") == "cuda"
    caplog.set_level("INFO", logger="curation.devices")
    monkeypatch.setattr(devices, "ffmpeg_hwaccels", lambda: ("vaapi",))
    assert decide("auto") is None and "does not list cuda" in caplog.text
    monkeypatch.setattr(devices, "ffmpeg_hwaccels", lambda: ("cuda",))
    monkeypatch.setattr(devices, "nvdec_decodes", lambda: False)
    assert decide("cuda") is None and "test decode" in caplog.text
    monkeypatch.undo()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # what Ray gives a task that asked for no GPU
    assert not devices.gpu_visible() and decide("cuda") is None and "no GPU visible" in caplog.text
    devices.decode_hwaccel.cache_clear()


def test_the_shard_hands_the_decoder_choice_to_the_gpu_scorers(monkeypatch, paper_config):
    monkeypatch.setattr(pipeline, "decode_hwaccel", lambda requested: "cuda")
    scorers = pipeline.ShardProcessor(paper_config, "/nonexistent")._scorers()
    assert {s.name: dict(s.decode_options) for s in scorers} == {
        "audio_activity": {}, "face_dwpose": {"hwaccel": "cuda"}, "sync_syncnet": {"hwaccel": "cuda"}}
    monkeypatch.setattr(pipeline, "decode_hwaccel", lambda requested: None)
    assert all(not s.decode_options for s in pipeline.ShardProcessor(paper_config, "/nonexistent")._scorers())
