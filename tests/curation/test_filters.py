from curation.config import load_config
from curation.filters import decide, gate_reasons

T = load_config().thresholds
GOOD = {
    "has_video": True, "width": 1280, "height": 1280, "has_audio": True, "duration_s": 8.0,
    "face_present_frac": 1.0, "multi_face_frac": 0.0, "face_res_px": 640.0, "yaw_abs_mean_deg": 5.0,
    "audio_speech_frac": 0.8, "sync_c": 7.0, "sync_d": 7.0,
}


def test_a_clip_passing_every_rule_is_kept():
    decision = decide(GOOD, T)
    assert (decision.keep, decision.status, decision.reject_reasons, decision.unscored_rules) == (True, "kept", [], [])


def test_every_failing_rule_is_recorded():
    row = {**GOOD, "face_res_px": 300.0, "yaw_abs_mean_deg": 45.0, "sync_c": 2.0, "sync_d": 9.0,
           "audio_speech_frac": 0.0}
    decision = decide(row, T)
    assert decision.status == "rejected"
    assert set(decision.reject_reasons) == {"face_too_small", "yaw_too_large", "sync_conf_too_low",
                                            "sync_dist_too_high", "no_speech"}


def test_boundaries_follow_the_paper():
    assert decide({**GOOD, "face_res_px": 600.0}, T).keep  # "at least 600x600"
    assert not decide({**GOOD, "sync_c": 6.0}, T).keep  # Sync-C > 6
    assert not decide({**GOOD, "sync_d": 8.5}, T).keep  # Sync-D < 8.5
    assert decide({**GOOD, "yaw_abs_mean_deg": 30.0}, T).keep  # mean angle above 30 is excluded


def test_unscored_lip_sync_is_pending_not_passed_or_failed():
    decision = decide({**GOOD, "sync_c": None, "sync_d": None}, T)
    assert (decision.keep, decision.status, decision.reject_reasons) == (False, "pending", [])
    assert decision.unscored_rules == ["sync_confidence", "sync_distance"]
    relaxed = load_config(None, {"thresholds.require_lip_sync": False}).thresholds
    assert decide({**GOOD, "sync_c": None, "sync_d": None}, relaxed).status == "kept"


def test_gate_decides_from_metadata_alone():
    source = {"has_video": True, "width": 512, "height": 512, "has_audio": False, "duration_s": 3.0}
    assert gate_reasons(source, T, clip_level=False) == ["frame_too_small", "no_audio_stream"]
    assert gate_reasons(source, T, clip_level=True) == ["frame_too_small", "no_audio_stream", "clip_too_short"]
    assert gate_reasons({"has_video": False}, T, clip_level=False) == ["no_video_stream"]


def test_error_rows_are_errors_with_their_reason():
    decision = decide({**GOOD, "error": "decode failed", "error_reason": "decode_failed"}, T)
    assert (decision.keep, decision.status) == (False, "error")
    assert "decode_failed" in decision.reject_reasons
