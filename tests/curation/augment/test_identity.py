"""Identity pool and pairing: never the clip's own speaker, the same draw on every rerun and whatever the workers."""

from __future__ import annotations

import random

from curation.augment import identity
from curation.augment.config import IdentityConfig


def _pool(speakers: int, per_speaker: int) -> list[dict]:
    rows = [{"identity_id": f"id-{s}-{k}", "speaker": f"spk{s}", "status": "ok", "embedding": [float(s), 1.0],
             "origin": "image", "source_path": f"/faces/{s}-{k}.jpg"}
            for s in range(speakers) for k in range(per_speaker)]
    rows.append({"identity_id": "id-bad", "speaker": "spk9", "status": "error", "embedding": None, "origin": "image",
                 "source_path": "/faces/bad.jpg", "error_reason": "no_face"})
    return rows


def test_pairing_never_draws_the_clips_own_speaker_and_spreads():
    pool = identity.Pool.from_rows(_pool(5, 3))
    assert len(pool) == 15 and "id-bad" not in pool.ids and pool.embeddings.shape == (15, 2)
    drawn = set()
    for n in range(200):
        chosen, reason = identity.pair(pool, "spk2", f"clip-{n}", seed=0, index=0)
        assert reason is None and chosen["speaker"] != "spk2"
        assert chosen["embedding"][0] == float(chosen["speaker"][3:])  # the identity's own embedding
        drawn.add(chosen["identity_id"])
    assert len(drawn) == 12  # every identity of the other four speakers gets drawn


def test_pairing_is_deterministic_whatever_the_order_the_pool_was_built_in():
    rows = _pool(4, 2)
    shuffled = rows[:]
    random.Random(1).shuffle(shuffled)  # e.g. parts committed by workers in another order
    first = [identity.pair(identity.Pool.from_rows(rows), "spk0", f"c{n}", 7, 0)[0]["identity_id"] for n in range(50)]
    again = [identity.pair(identity.Pool.from_rows(shuffled), "spk0", f"c{n}", 7, 0)[0]["identity_id"] for n in range(50)]
    assert first == again
    other_seed = [identity.pair(identity.Pool.from_rows(rows), "spk0", f"c{n}", 8, 0)[0]["identity_id"] for n in range(50)]
    second_variant = [identity.pair(identity.Pool.from_rows(rows), "spk0", f"c{n}", 7, 1)[0]["identity_id"]
                      for n in range(50)]
    assert first != other_seed and first != second_variant


def test_pairing_says_why_when_no_identity_can_serve():
    assert identity.pair(identity.Pool.from_rows([]), "spk0", "c", 0, 0) == (None, "identity_pool_empty")
    only_own = identity.Pool.from_rows(_pool(1, 3))
    assert identity.pair(only_own, "spk0", "c", 0, 0) == (None, "no_other_speaker")


def test_speaker_falls_back_to_the_source_content_id():
    assert identity.speaker_of({"speaker_id": "id10001", "video_id": "v", "source_path": "p"}) == "id10001"
    assert identity.speaker_of({"speaker_id": None, "video_id": "v", "source_path": "p"}) == "v"


def test_clip_candidate_is_the_most_frontal_large_face():
    track = [
        {"t": 1.0, "box": [0, 0, 300, 300], "yaw": 15.0},
        {"t": 2.0, "box": [0, 0, 300, 300], "yaw": -3.0},
        {"t": 3.0, "box": [0, 0, 50, 50], "yaw": 0.0},  # too small
        {"t": 4.0, "box": [0, 0, 300, 300], "yaw": 40.0},  # too turned
        {"t": 5.0, "box": None, "yaw": None},
    ]
    row = {"clip_id": "c1", "speaker_id": None, "video_id": "v1", "source_path": "/x.mp4", "face_track": track}
    candidate = identity.clip_candidate(row, IdentityConfig())
    assert candidate["status"] == "ok" and candidate["t_s"] == 2.0 and candidate["speaker"] == "v1"
    turned = {**row, "face_track": track[3:]}
    refused = identity.clip_candidate(turned, IdentityConfig())
    assert refused["status"] == "error" and refused["error_reason"] == "no_frontal_frame"


def test_folder_speakers_come_from_sub_folders_or_file_names(tmp_path):
    (tmp_path / "alice").mkdir()
    (tmp_path / "alice" / "1.jpg").write_bytes(b"x")
    (tmp_path / "alice" / "2.PNG").write_bytes(b"x")
    (tmp_path / "bob.jpg").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("not an image")
    rows = identity.folder_candidates(tmp_path)
    assert sorted((r["speaker"], r["origin"]) for r in rows) == [("alice", "image"), ("alice", "image"),
                                                               ("bob", "image")]
    assert len({r["identity_id"] for r in rows}) == 3
