"""curation.clips: cuts on the shared clips and on shots joined with ffmpeg, and span splitting."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import pytest
import scenedetect

from curation import clips, media
from curation.errors import DecodeError
from tests.curation.badinputs import make_bad_inputs

SINGLE_SHOT = [
    "derived_katiehill_upscaled_1280.mp4",
    "dreamtalk_codeformer_sr_1024.mp4",
    "latentsync_demo1_video.mp4",
    "liveportrait_d0_noaudio.mp4",
    "liveportrait_d3_silenttrack.mp4",
    "mimictalk_German_20s.mp4",
    "musetalk_sun_noaudio.mp4",
    "pcavs_pose_517600055.mp4",
    "sadtalker_WDA_KatieHill_000.mp4",  # a head turn around 2 s
    "syncnet_example.avi",  # the face-tracked crop jumps at 6.6 s
    "vretalking_face_1.mp4",  # VFR
    "w2lgfpgan_kim_7s_raw.mp4",
]


def _ffmpeg(*args: str | Path) -> None:
    subprocess.run(
        ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *map(str, args)],
        check=True,
        capture_output=True,
    )


def _join(out: Path, shots: list[tuple[Path, float, float]]) -> Path:
    """Concatenate (source, start_s, duration_s) shots into one 256x256, 25 fps clip: hard cuts at known times."""
    inputs: list[str | Path] = []
    chains = []
    for i, (src, start, duration) in enumerate(shots):
        inputs += ["-ss", str(start), "-t", str(duration), "-i", src]
        chains.append(f"[{i}:v]scale=256:256,setsar=1,fps=25[v{i}]")
    joined = "".join(f"[v{i}]" for i in range(len(shots)))
    graph = ";".join(chains) + f";{joined}concat=n={len(shots)}:v=1:a=0"
    _ffmpeg(*inputs, "-filter_complex", graph, "-c:v", "libx264", "-preset", "ultrafast", out)
    return out


def _cuts(path: Path, **kwargs: float) -> clips.SceneResult:
    return clips.detect_cuts(path, media.probe(path), **kwargs)


# --- detect_cuts on the shared clips ----------------------------------------------------------------------


def test_two_shots_give_exactly_one_cut_at_six_seconds(videos_dir: Path) -> None:
    path = videos_dir / "derived_two_shots_german_kim.mp4"
    probe = media.probe(path)
    scenes = clips.detect_cuts(path, probe)
    assert len(scenes.cuts_s) == 1
    assert scenes.cuts_s[0] == pytest.approx(6.0, abs=0.5)
    assert scenes.frames_decoded == 300 and scenes.fps == 25.0
    assert scenes.flashes_s == []
    spans = clips.split_spans(probe.duration_s, scenes.cuts_s, min_clip_s=4.0, max_clip_s=30.0)
    assert [(s.start_s, s.end_s) for s in spans] == [(0.0, scenes.cuts_s[0]), (scenes.cuts_s[0], 12.0)]


def test_two_shots_cut_survives_a_lower_rate(videos_dir: Path) -> None:
    scenes = _cuts(videos_dir / "derived_two_shots_german_kim.mp4", fps=10.0)
    assert scenes.frames_decoded == 120
    assert len(scenes.cuts_s) == 1 and scenes.cuts_s[0] == pytest.approx(6.0, abs=0.5)


@pytest.mark.parametrize("name", SINGLE_SHOT)
def test_single_shot_clips_have_no_cut(videos_dir: Path, name: str) -> None:
    scenes = _cuts(videos_dir / name)
    assert scenes.cuts_s == [], name
    assert scenes.frames_decoded > 0


def test_detector_string_names_version_and_parameters(videos_dir: Path) -> None:
    scenes = _cuts(videos_dir / "pcavs_pose_517600055.mp4", threshold=4.5, max_side=128)
    assert scenes.detector.startswith(f"pyscenedetect-adaptive@{scenedetect.__version__}:threshold=4.5,")
    assert "max_side=128" in scenes.detector and "fps=auto" in scenes.detector
    assert scenes.detector == clips.detector_version(
        threshold=4.5, min_content=15.0, min_scene_s=0.5, flash_s=0.25, max_side=128, fps=None
    )


# --- detect_cuts on joined shots --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def joined(tmp_path_factory: pytest.TempPathFactory, videos_dir: Path) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("joined")
    kim = videos_dir / "w2lgfpgan_kim_7s_raw.mp4"
    anchor = videos_dir / "mimictalk_German_20s.mp4"
    katie = videos_dir / "sadtalker_WDA_KatieHill_000.mp4"
    flash = tmp / "flash.mp4"
    # Frame 50 (2.0 s) is a flash; frames 100-101 (4.0 s) a two-frame one.
    _ffmpeg(
        "-t", "6", "-i", anchor, "-an",
        "-vf", "scale=256:256,eq=brightness='if(eq(n,50),0.5,if(between(n,100,101),0.4,0))':eval=frame",
        "-c:v", "libx264", "-preset", "ultrafast", flash,
    )  # fmt: skip
    return {
        "three_shots": _join(tmp / "three.mp4", [(kim, 1.0, 2.0), (anchor, 5.0, 2.0), (katie, 4.0, 2.0)]),
        "short_insert": _join(tmp / "insert.mp4", [(anchor, 1.0, 2.0), (kim, 1.0, 0.32), (katie, 1.0, 2.0)]),
        "flash": flash,
    }


def test_three_shots_give_two_cuts(joined: dict[str, Path]) -> None:
    scenes = _cuts(joined["three_shots"])
    assert scenes.cuts_s == pytest.approx([2.0, 4.0], abs=0.1)
    spans = clips.split_spans(6.0, scenes.cuts_s, min_clip_s=1.0, max_clip_s=30.0)
    assert [s.index for s in spans] == [0, 1, 2]


def test_min_scene_s_suppresses_the_second_of_two_close_cuts(joined: dict[str, Path]) -> None:
    assert _cuts(joined["short_insert"]).cuts_s == pytest.approx([2.0], abs=0.1)
    assert _cuts(joined["short_insert"], min_scene_s=0.1).cuts_s == pytest.approx([2.0, 2.32], abs=0.1)


def test_flashes_are_not_cuts(joined: dict[str, Path]) -> None:
    scenes = _cuts(joined["flash"])
    assert scenes.cuts_s == []
    assert scenes.flashes_s == pytest.approx([2.0, 4.0], abs=0.1)  # recorded, not silently ignored
    without_check = _cuts(joined["flash"], flash_s=0.0)
    assert len(without_check.cuts_s) == 2  # what the check protects against


def test_decode_errors_propagate(tmp_path: Path, videos_dir: Path) -> None:
    bad = make_bad_inputs(tmp_path, videos_dir / "pcavs_pose_517600055.mp4")
    with pytest.raises(DecodeError):
        _cuts(bad["truncated_moov"])
    with pytest.raises(DecodeError, match="no video stream"):
        _cuts(bad["audio_only"])


# --- split_spans ------------------------------------------------------------------------------------------


def _bounds(spans: list[clips.Span]) -> list[tuple[float, float]]:
    return [(round(s.start_s, 6), round(s.end_s, 6)) for s in spans]


def test_split_no_cuts_short_source() -> None:
    spans = clips.split_spans(8.0, [], min_clip_s=4.0, max_clip_s=30.0)
    assert spans == [clips.Span(0, 0.0, 8.0)]
    assert spans[0].duration_s == 8.0


def test_split_long_scene_into_equal_parts() -> None:
    spans = clips.split_spans(100.0, [5.0], min_clip_s=4.0, max_clip_s=30.0)
    assert _bounds(spans) == [(0.0, 5.0), (5.0, 28.75), (28.75, 52.5), (52.5, 76.25), (76.25, 100.0)]
    assert clips.split_spans(60.0, [], min_clip_s=4.0, max_clip_s=30.0)[0].end_s == 30.0  # exact fit: 2 parts


def test_split_keeps_short_spans_for_the_gate() -> None:
    spans = clips.split_spans(12.0, [0.5, 11.9], min_clip_s=4.0, max_clip_s=30.0)
    assert _bounds(spans) == [(0.0, 0.5), (0.5, 11.9), (11.9, 12.0)]
    assert [s.index for s in spans] == [0, 1, 2]


def test_split_ignores_cuts_outside_and_duplicates() -> None:
    spans = clips.split_spans(10.0, [7.0, -1.0, 0.0, 3.0, 3.0, 10.0, 12.0], min_clip_s=1.0, max_clip_s=30.0)
    assert _bounds(spans) == [(0.0, 3.0), (3.0, 7.0), (7.0, 10.0)]


def test_split_prefers_full_parts_over_equal_parts_below_min() -> None:
    # Equal halves of 5.5 s would be 2.75 s, below min: both would be rejected. Keep a 5 s clip instead.
    assert _bounds(clips.split_spans(5.5, [], min_clip_s=4.0, max_clip_s=5.0)) == [(0.0, 5.0), (5.0, 5.5)]
    assert _bounds(clips.split_spans(9.0, [], min_clip_s=4.0, max_clip_s=5.0)) == [(0.0, 4.5), (4.5, 9.0)]


def test_split_edge_cases() -> None:
    assert clips.split_spans(0.0, [], min_clip_s=4.0, max_clip_s=30.0) == []
    with pytest.raises(ValueError):
        clips.split_spans(10.0, [], min_clip_s=5.0, max_clip_s=4.0)
    with pytest.raises(ValueError):
        clips.split_spans(10.0, [], min_clip_s=0.0, max_clip_s=0.0)


def test_split_covers_the_source_exactly() -> None:
    rng = random.Random(7)
    for _ in range(300):
        duration = rng.uniform(0.1, 600.0)
        cuts = [rng.uniform(-5.0, duration + 5.0) for _ in range(rng.randint(0, 12))]
        min_clip, max_clip = rng.choice([(4.0, 30.0), (2.0, 3.0), (0.0, 10.0), (4.0, 4.0)])
        spans = clips.split_spans(duration, cuts, min_clip_s=min_clip, max_clip_s=max_clip)
        assert spans[0].start_s == 0.0 and spans[-1].end_s == duration
        assert [s.index for s in spans] == list(range(len(spans)))
        for prev, nxt in zip(spans, spans[1:], strict=False):
            assert prev.end_s == nxt.start_s
        assert all(0 < s.duration_s <= max_clip + 1e-9 for s in spans)
        inner = {c for c in cuts if 0 < c < duration}
        starts = {s.start_s for s in spans}
        assert inner <= starts  # every cut starts a span
