"""Every kind of malformed input in ``badinputs`` ends as exactly one manifest row with a status, and a reason
where it is not kept: the Prefect-free path (lister -> inventory -> ShardProcessor), as
``tests/tiny_manifest.py`` runs it. Thresholds are lowered (no SyncNet, 0.5 s clips, small faces) so that the
healthy 3 s, 320x240 files are kept and each broken one shows its own reason rather than all sharing
``clip_too_short``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.curation.badinputs import make_bad_inputs

STATUSES = {"kept", "rejected", "pending", "error"}
RUNNING_AS_ROOT = os.geteuid() == 0

# kind -> (status, the reason that must be among reject_reasons; None when kept). For errors the reason is
# also the row's error_reason. A set of statuses: any of them, with no error.
EXPECTED: dict[str, tuple[str | frozenset[str], str | None]] = {
    "valid": ("kept", None),
    "truncated": ("error", "probe_failed"),  # the moov atom is cut off
    "truncated_moov": ("error", "decode_failed"),  # probes as 3 s, decoding hits the cut
    "zero_byte": ("error", "empty_file"),
    "text_as_mp4": ("error", "probe_failed"),
    "audio_only": ("rejected", "no_video_stream"),
    "no_audio": ("rejected", "no_audio_stream"),
    "silent_audio": ("rejected", "no_speech"),
    "vfr": ("rejected", "no_audio_stream"),  # made video-only; VFR itself must not break decoding
    # displayed turned by 90 degrees, the face lies on its side: kept or rejected by a face rule, never an error
    "rotated": (frozenset({"kept", "rejected"}), None),
    "hevc": ("kept", None),
    "unicode_path": ("kept", None),
    "bitflip": ("error", "decode_failed"),
    "high10": ("kept", None),
    "one_frame": ("rejected", "clip_too_short"),
    "under_half_s": ("rejected", "clip_too_short"),
    "uhd_4k": ("kept", None),
    "webm": ("kept", None),
    "avi": ("kept", None),
    "two_audio": ("kept", None),
    "mp4_as_mov": ("kept", None),
    "mp4_as_mkv": ("kept", None),
    "dangling": ("error", "io_error"),
    "dir_named_mp4": ("error", "not_a_file"),
    "fifo": ("error", "not_a_file"),
    # root reads a mode-000 file anyway: then it must simply work like ``valid``
    "unreadable": ("kept", None) if RUNNING_AS_ROOT else ("error", "unreadable"),
    "link_inside": ("kept", None),
    "link_outside": ("error", "outside_data_root"),  # strict mode: follow_symlinks_outside_root=False
    "link_dotdot": ("error", "outside_data_root"),
}


@pytest.fixture(scope="module")
def curated(tmp_path_factory: pytest.TempPathFactory, videos_dir: Path) -> tuple[dict[str, Path], list[dict]]:
    from curation.config import load_config
    from curation.inventory import inventory_rows
    from curation.manifest import read_manifest
    from curation.pipeline import ShardProcessor, close_cached_scorers
    from curation.sources import make_source

    work = tmp_path_factory.mktemp("malformed")
    bad = make_bad_inputs(work / "bad", videos_dir / "mimictalk_German_20s.mp4")
    config = load_config(None, {"sync.enabled": False, "thresholds.require_lip_sync": False,
                                "thresholds.face_res_px_min": 40, "thresholds.clip_s_min": 0.5,
                                "runtime.device": "cpu"})
    source = make_source("folder", work / "bad", follow_symlinks_outside_root=False)
    rows = inventory_rows(list(source.iter_files()), timeout_s=20)
    ShardProcessor(config, work / "curated").process(0, rows)
    close_cached_scorers()
    return bad, read_manifest(work / "curated" / "manifest").to_pylist()


def test_the_set_has_every_kind(curated) -> None:
    bad, _ = curated
    optional = {"hevc", "webm"}  # left out by an ffmpeg without libx265 / libvpx-vp9 + libopus
    assert set(EXPECTED) - optional <= set(bad) <= set(EXPECTED)
    assert len(bad) >= 20


def test_every_input_is_one_row_with_a_status_and_a_reason(curated) -> None:
    bad, rows = curated
    by_path: dict[str, list[dict]] = {}
    for row in rows:
        by_path.setdefault(row["source_path"], []).append(row)
    assert set(by_path) == {str(path) for path in bad.values()}  # nothing dropped, nothing extra
    for kind, path in bad.items():
        (row,) = by_path[str(path)]  # the 3 s sources are one clip each: exactly one row per input
        assert row["status"] in STATUSES, kind
        assert row["status"] == "kept" or row["reject_reasons"], kind
        if row["status"] == "error":
            assert row["error"] and row["error_reason"], kind


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_each_kind_gets_its_reason(curated, kind: str) -> None:
    bad, rows = curated
    if kind not in bad:
        pytest.skip(f"this ffmpeg cannot make {kind!r}")
    (row,) = [r for r in rows if r["source_path"] == str(bad[kind])]
    status, reason = EXPECTED[kind]
    if isinstance(status, frozenset):
        assert row["status"] in status and row["error"] is None, (kind, row["reject_reasons"], row["error"])
        return
    assert row["status"] == status, (kind, row["reject_reasons"], row["error"])
    if reason is None:
        assert row["reject_reasons"] == []
    else:
        assert reason in row["reject_reasons"]
    if status == "error":
        assert row["error_reason"] == reason


def test_refused_entries_are_never_opened(curated) -> None:
    bad, rows = curated
    for kind in ("dir_named_mp4", "fifo", "link_outside", "link_dotdot"):
        (row,) = [r for r in rows if r["source_path"] == str(bad[kind])]
        assert row["video_id"] == "" and row["source_size_bytes"] is None  # no content id: nothing was read
        assert "refused by the lister" in row["error"]


def test_symlink_policy_by_default(tmp_path: Path) -> None:
    """Default mode: absolute links out of the root are followed (how datasets are linked in from other disks,
    and how the test fixtures build inputs); relative links that climb out with ``..`` are refused, files and
    directories alike; links inside the root work."""
    from curation.sources import make_source

    outside = tmp_path / "elsewhere"
    (outside / "disk").mkdir(parents=True)
    (outside / "a.mp4").write_bytes(b"A")
    (outside / "disk" / "b.mp4").write_bytes(b"B")
    (outside / "disk" / "b_link.mp4").symlink_to("b.mp4")  # relative, inside the linked-in disk: fine
    (outside / "disk" / "up.mp4").symlink_to("../a.mp4")  # relative, climbs out of the linked-in disk
    root = tmp_path / "root"
    root.mkdir()
    (root / "c.mp4").write_bytes(b"C")
    (root / "abs.mp4").symlink_to(outside / "a.mp4")
    (root / "disk").symlink_to(outside / "disk", target_is_directory=True)
    (root / "inside.mp4").symlink_to("c.mp4")
    (root / "dotdot.mp4").symlink_to("../elsewhere/a.mp4")
    (root / "dotdot_dir").symlink_to("../elsewhere/disk", target_is_directory=True)

    adapter = make_source("folder", root)
    files = {f.relpath: f for f in adapter.iter_files()}
    assert sorted(files) == ["abs.mp4", "c.mp4", "disk/b.mp4", "disk/b_link.mp4", "disk/up.mp4", "dotdot.mp4",
                             "inside.mp4"]
    refused = {relpath: f.refused for relpath, f in files.items() if f.refused}
    assert refused == {"disk/up.mp4": "outside_data_root", "dotdot.mp4": "outside_data_root"}
    assert files["abs.mp4"].size_bytes == 1 and files["dotdot.mp4"].size_bytes == -1
    assert adapter.ignored["<outside-root-dir>"] == 1
    assert adapter.stats()["refused"] == {"outside_data_root": 2}

    strict = make_source("folder", root, follow_symlinks_outside_root=False)
    files = {f.relpath: f.refused for f in strict.iter_files()}
    assert files == {"abs.mp4": "outside_data_root", "c.mp4": None, "dotdot.mp4": "outside_data_root",
                     "inside.mp4": None}
    assert strict.ignored["<outside-root-dir>"] == 2


def test_unreadable_file_is_its_own_reason(tmp_path: Path) -> None:
    from curation.inventory import inventory_rows
    from curation.sources import make_source

    path = tmp_path / "locked.mp4"
    path.write_bytes(b"VIDEO")
    path.chmod(0)
    (row,) = inventory_rows(list(make_source("folder", tmp_path).iter_files()),
                            probe_fn=lambda p, *, timeout_s: {"duration_s": 1.0})
    if RUNNING_AS_ROOT:
        pytest.skip("running as root: mode 000 does not stop root from reading, so there is no error to see")
    assert row["probe_status"] == "error" and row["probe_error_reason"] == "unreadable"


def test_the_config_key_refuses_links_out_of_the_root(tmp_path, videos_dir):
    from curation.config import config_for_inputs
    from flows.curate import _list_files

    root = tmp_path / "root"
    root.mkdir()
    (root / "outside.mp4").symlink_to(videos_dir / "mimictalk_German_20s.mp4")
    for follow, refused in ((True, False), (False, True)):
        config = config_for_inputs([root], follow_links_outside=follow,
                                   overrides={"sync.enabled": False})
        assert config.sources[0].follow_symlinks_outside_root is follow
        files, _ = _list_files(config)
        assert len(files) == 1 and bool(files[0].refused) is refused
