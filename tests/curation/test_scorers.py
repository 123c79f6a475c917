import numpy as np
import pytest

from curation import media
from curation.config import load_config
from curation.scorers.audio_activity import AudioActivityScorer
from curation.scorers.base import ClipSpan
from curation.scorers.face_mediapipe import MediaPipeFaceScorer, euler_from_rotation

CONFIG = load_config()


@pytest.fixture(scope="module")
def face_scorer(weights_root):
    import os

    os.environ["MEGACTOR_WEIGHTS_DIR"] = str(weights_root)
    scorer = MediaPipeFaceScorer(CONFIG.face)
    yield scorer
    scorer.close()


def _clip(videos_dir, name, start=0.0, end=None):
    path = str(videos_dir / name)
    probe = media.probe(path)
    return ClipSpan(path, start, end if end is not None else probe.duration_s, probe)


def test_euler_angles_of_known_rotations():
    a = np.radians(25)
    yaw_only = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    yaw, pitch, roll = euler_from_rotation(2.0 * yaw_only)  # a scaled matrix gives the same angles
    assert yaw == pytest.approx(25, abs=1e-6) and abs(pitch) < 1e-6 and abs(roll) < 1e-6


def test_face_resolution_in_source_pixels_whatever_the_decode_scale(face_scorer, videos_dir):
    row, reason, _ = face_scorer.run(_clip(videos_dir, "derived_katiehill_upscaled_1280.mp4", 0, 4))
    assert reason is None
    assert row["face_present_frac"] == 1.0 and row["face_count_max"] == 1
    assert 600 <= row["face_res_px"] <= 720  # measured face box ~640x780 at 1280 px, decoded at 640 px
    small, _, _ = face_scorer.run(_clip(videos_dir, "sadtalker_WDA_KatieHill_000.mp4", 0, 4))
    assert row["face_res_px"] / small["face_res_px"] == pytest.approx(2.5, rel=0.05)  # the 1280/512 upscale
    assert row["face_frames_sampled"] == 20 and len(row["face_track"]) == 20  # 4 s at 5 fps


def test_turned_head_has_larger_yaw(face_scorer, videos_dir):
    turned, _, _ = face_scorer.run(_clip(videos_dir, "pcavs_pose_517600055.mp4"))
    frontal, _, _ = face_scorer.run(_clip(videos_dir, "mimictalk_German_20s.mp4", 0, 5))
    assert turned["yaw_abs_mean_deg"] > 12 > 5 > frontal["yaw_abs_mean_deg"]


def test_small_face_in_full_body_shot(face_scorer, videos_dir):
    row, _, _ = face_scorer.run(_clip(videos_dir, "musetalk_sun_noaudio.mp4", 0, 4))
    assert 80 < row["face_res_px"] < 200


def test_undecodable_input_becomes_an_error_not_an_exception(face_scorer, tmp_path, videos_dir):
    probe = media.probe(videos_dir / "mimictalk_German_20s.mp4")
    row, reason, message = face_scorer.run(ClipSpan(str(tmp_path / "gone.mp4"), 0, 2, probe))
    assert row == {} and reason == "decode_failed" and "face_mediapipe" in message
    assert face_scorer.counters["errors"] >= 1


def test_silence_is_not_speech(videos_dir):
    scorer = AudioActivityScorer(CONFIG.audio)
    speech, _, _ = scorer.run(_clip(videos_dir, "mimictalk_German_20s.mp4", 0, 10))
    silent, _, _ = scorer.run(_clip(videos_dir, "liveportrait_d3_silenttrack.mp4", 0, 10))
    assert speech["audio_speech_frac"] > 0.5 and silent["audio_speech_frac"] < 0.05
    assert silent["audio_rms_dbfs"] < -80 < -40 < speech["audio_rms_dbfs"]
    none, reason, _ = scorer.run(_clip(videos_dir, "liveportrait_d0_noaudio.mp4"))
    assert none == {} and reason is None and scorer.counters["skipped_no_audio"] == 1


def test_audio_score_does_not_depend_on_what_was_scored_before(videos_dir):
    clip = _clip(videos_dir, "w2lgfpgan_kim_7s_raw.mp4")
    fresh, _, _ = AudioActivityScorer(CONFIG.audio).run(clip)
    used = AudioActivityScorer(CONFIG.audio)
    used.run(_clip(videos_dir, "sadtalker_WDA_KatieHill_000.mp4"))
    after, _, _ = used.run(clip)
    assert after == fresh
