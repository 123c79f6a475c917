from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from curation.errors import ConfigError, EmptyFileError, ProbeError, ToolMissingError
from curation.inventory import (
    INVENTORY_SCHEMA,
    PROBE_COLUMNS,
    SCHEMA_VERSION,
    build_inventory,
    format_hours_table,
    hours_by_dataset,
    inventory_rows,
    read_inventory,
    to_table,
    write_inventory,
)
from curation.sources import FolderAdapter, SourceFile, content_id, make_source

GOOD_PROBE = {
    "container": "mov,mp4,m4a,3gp,3g2,mj2", "duration_s": 8.0, "bit_rate": 1_000_000, "has_video": True,
    "video_codec": "h264", "width": 512, "height": 512, "coded_width": 512, "coded_height": 512,
    "rotation": 0, "fps_avg": 25.0, "fps_nominal": 25.0, "vfr": False, "n_frames": 200, "has_audio": True,
    "audio_codec": "aac", "audio_sample_rate": 16000, "audio_channels": 1,
}


def fake_probe(path: str, *, timeout_s: float = 30.0) -> dict[str, Any]:
    """Stands in for curation.media.probe: the same typed errors for the same inputs."""
    data = Path(path).read_bytes()
    if not data:
        raise EmptyFileError("file is empty (0 bytes)", path=path)
    if not data.startswith(b"VIDEO"):
        raise ProbeError("ffprobe failed: Invalid data found when processing input", path=path)
    return {**GOOD_PROBE, "duration_s": float(len(data))}


def source(path: Path, dataset: str = "ds") -> SourceFile:
    size = path.stat().st_size if path.exists() else -1
    return SourceFile(dataset=dataset, path=str(path), relpath=path.name, size_bytes=size)


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# -- rows: errors are data -------------------------------------------------------------------------------


def test_bad_files_become_rows_with_a_reason(tmp_path: Path) -> None:
    empty = write(tmp_path / "empty.mp4", b"")
    text = write(tmp_path / "notes.mp4", b"this is not a video\n")
    good = write(tmp_path / "good.mp4", b"VIDEO" + b"x" * 5)

    rows = inventory_rows([source(empty), source(text), source(good)], probe_fn=fake_probe)

    assert [r["probe_status"] for r in rows] == ["error", "error", "ok"]
    assert [r["probe_error_reason"] for r in rows] == ["empty_file", "probe_failed", None]
    assert "0 bytes" in rows[0]["probe_error"] and "Invalid data" in rows[1]["probe_error"]
    for row in rows[:2]:
        assert all(row[c] is None for c in PROBE_COLUMNS)
        assert row["content_id"] is not None  # the bytes were readable, only the probe failed
    assert rows[2]["duration_s"] == 10.0 and rows[2]["probe_error"] is None
    assert all(r["probe_s"] >= 0 for r in rows)
    assert rows[1]["content_id"] == content_id(text, text.stat().st_size)


def test_unreadable_file_is_an_io_error_row(tmp_path: Path) -> None:
    (tmp_path / "gone.mp4").symlink_to(tmp_path / "missing.mp4")
    (listed,) = FolderAdapter(tmp_path).iter_files()
    (row,) = inventory_rows([listed], probe_fn=fake_probe)
    assert row["probe_status"] == "error" and row["probe_error_reason"] == "io_error"
    assert row["size_bytes"] is None and row["content_id"] is None


def test_a_bug_in_the_probe_is_captured_with_its_type(tmp_path: Path) -> None:
    def broken_probe(path: str, *, timeout_s: float) -> dict:
        raise KeyError("streams")

    path = write(tmp_path / "a.mp4", b"VIDEO")
    (row,) = inventory_rows([source(path)], probe_fn=broken_probe)
    assert row["probe_status"] == "error" and row["probe_error_reason"] == "internal_error"
    assert row["probe_error"].startswith("KeyError")


def test_missing_ffprobe_stops_the_run(tmp_path: Path) -> None:
    def no_tool(path: str, *, timeout_s: float) -> dict:
        raise ToolMissingError("ffprobe not found on PATH")

    with pytest.raises(ToolMissingError):
        inventory_rows([source(write(tmp_path / "a.mp4", b"VIDEO"))], probe_fn=no_tool)


def test_timeout_is_passed_to_the_probe(tmp_path: Path) -> None:
    seen = []

    def probe(path: str, *, timeout_s: float) -> dict:
        seen.append(timeout_s)
        return GOOD_PROBE

    inventory_rows([source(write(tmp_path / "a.mp4", b"VIDEO"))], probe_fn=probe, timeout_s=4.5)
    assert seen == [4.5]


def test_probe_values_are_coerced_to_the_schema(tmp_path: Path) -> None:
    def loose_probe(path: str, *, timeout_s: float) -> dict:
        return {**GOOD_PROBE, "width": 512.0, "rotation": 90.0, "fps_avg": 25, "duration_s": float("nan"),
                "some_new_column": "ignored"}

    rows = inventory_rows([source(write(tmp_path / "a.mp4", b"VIDEO"))], probe_fn=loose_probe)
    table = to_table(rows)
    assert table.column("width").to_pylist() == [512]
    assert table.column("rotation").to_pylist() == [90]
    assert table.column("fps_avg").to_pylist() == [25.0]
    assert table.column("duration_s").to_pylist() == [None]


# -- table, files ----------------------------------------------------------------------------------------


def test_schema_is_explicit_and_versioned() -> None:
    assert INVENTORY_SCHEMA.metadata[b"megactor.schema_version"] == SCHEMA_VERSION.encode()
    assert INVENTORY_SCHEMA.field("extra").type == pa.map_(pa.string(), pa.string())
    assert INVENTORY_SCHEMA.field("duration_s").type == pa.float64()
    assert INVENTORY_SCHEMA.field("has_audio").type == pa.bool_()
    for name in ("probe_status", "probe_error", "probe_error_reason", "probe_s", "content_id", *PROBE_COLUMNS):
        assert name in INVENTORY_SCHEMA.names
    with pytest.raises(ValueError, match="outside the schema"):
        to_table([{"dataset": "x", "bogus": 1}])


def test_write_and_read_all_parts(tmp_path: Path) -> None:
    files = [source(write(tmp_path / "v" / f"{i}.mp4", b"VIDEO" + b"x" * i), dataset=f"d{i % 2}") for i in range(4)]
    files[1] = SourceFile("d1", files[1].path, files[1].relpath, files[1].size_bytes, "yt", "spk",
                          {"split": "dev", "clip": "1"})
    rows = inventory_rows(files, probe_fn=fake_probe)
    out = tmp_path / "inventory"
    write_inventory(to_table(rows[:2]), out)
    write_inventory(to_table(rows[2:]), out, part_name="part-00001.parquet")
    (out / ".part-00002.parquet.abc.tmp").write_bytes(b"half written")

    table = read_inventory(out)

    assert table.schema.equals(INVENTORY_SCHEMA, check_metadata=False)
    assert table.column("source_path").to_pylist() == [f.path for f in files]
    assert table.to_pandas(maps_as_pydicts="strict")["extra"][1] == {"split": "dev", "clip": "1"}
    assert read_inventory(tmp_path / "v").num_rows == 0  # a directory with no parts
    with pytest.raises(ConfigError, match="does not exist"):
        read_inventory(tmp_path / "nope")


def test_extra_reads_typed_in_duckdb(tmp_path: Path) -> None:
    import duckdb
    path = write(tmp_path / "a.mp4", b"VIDEO")
    row = inventory_rows([SourceFile("vox", str(path), "a.mp4", 5, "yt", "id00012", {"split": "dev"})],
                         probe_fn=fake_probe)
    part = write_inventory(to_table(row), tmp_path / "inv")
    assert duckdb.sql(f"select extra['split'] from '{part}'").fetchall() == [("dev",)]


def test_read_refuses_another_schema_version(tmp_path: Path) -> None:
    table = to_table([])
    old = table.replace_schema_metadata({b"megactor.schema_version": b"0.1"})
    import pyarrow.parquet as pq

    (tmp_path / "inv").mkdir()
    pq.write_table(old, tmp_path / "inv" / "part-00000.parquet")
    with pytest.raises(ConfigError, match="schema_version '0.1'"):
        read_inventory(tmp_path / "inv")


def test_build_inventory_keeps_listing_order_and_counts(tmp_path: Path) -> None:
    vox = tmp_path / "vox"
    for speaker in ("id00002", "id00001"):
        for utterance in ("00002", "00001", "00003"):
            write(vox / "dev" / "mp4" / speaker / "21Uxsk56VDQ" / f"{utterance}.mp4", b"VIDEO" + b"x" * 3)
    write(vox / "dev" / "mp4" / "id00001" / "21Uxsk56VDQ" / "broken.mp4", b"garbage")
    write(vox / "vox2_meta.csv", b"id,name\n")
    folder = tmp_path / "extra_clips"
    write(folder / "b.mp4", b"")
    write(folder / "a.mp4", b"VIDEO")

    def jittery_probe(path: str, *, timeout_s: float) -> dict:
        time.sleep(random.uniform(0, 0.01))  # completion order differs from submission order
        return fake_probe(path, timeout_s=timeout_s)

    sources = [make_source("voxceleb2", vox), make_source("folder", folder)]
    table = build_inventory(sources, workers=4, progress=False, probe_fn=jittery_probe)
    serial = build_inventory(sources, workers=1, progress=False, probe_fn=fake_probe)

    relpaths = table.column("source_relpath").to_pylist()
    assert relpaths == serial.column("source_relpath").to_pylist()
    assert relpaths[:7] == sorted(relpaths[:7], key=lambda r: r.split("/"))
    assert relpaths[7:] == ["a.mp4", "b.mp4"]
    assert table.column("dataset").to_pylist() == ["voxceleb2"] * 7 + ["extra_clips"] * 2
    assert table.column("probe_status").to_pylist().count("error") == 2
    vox_listing, folder_listing = json.loads(table.schema.metadata[b"megactor.listing"])
    assert vox_listing["dataset"] == "voxceleb2" and vox_listing["root"] == str(vox)
    assert vox_listing["ignored"] == {".csv": 1} and vox_listing["unparsed"] == 1
    assert folder_listing["listed"] == 2


def test_sources_may_share_a_dataset_name(tmp_path: Path) -> None:
    write(tmp_path / "disk1" / "a.mp4", b"VIDEO")
    write(tmp_path / "disk2" / "a.mp4", b"VIDEO!")
    sources = [FolderAdapter(tmp_path / "disk1", "clips"), FolderAdapter(tmp_path / "disk2", "clips")]
    table = build_inventory(sources, workers=2, progress=False, probe_fn=fake_probe)
    assert table.column("source_path").to_pylist() == [str(tmp_path / "disk1" / "a.mp4"),
                                                       str(tmp_path / "disk2" / "a.mp4")]
    assert hours_by_dataset(table)["files"].tolist() == [2]


def test_build_inventory_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="workers"):
        build_inventory([FolderAdapter(tmp_path)], workers=0, probe_fn=fake_probe)


# -- hours -----------------------------------------------------------------------------------------------


def row(dataset: str, status: str, duration: float | None, size: int | None) -> dict[str, Any]:
    return {
        "dataset": dataset, "source_path": f"/{dataset}/{random.random()}", "source_relpath": "x.mp4",
        "size_bytes": size, "extra": {}, "duration_s": duration, "probe_status": status, "probe_s": 0.1,
    }


def test_hours_by_dataset_sums_ok_files_only() -> None:
    table = to_table([
        row("vox", "ok", 3600.0, 2_000_000_000),
        row("vox", "ok", 1800.0, 500_000_000),
        row("vox", "error", None, 0),
        row("vox", "ok", None, None),  # ok but no duration (e.g. a stream without one): counted, no hours
        row("celebv", "ok", 7200.0, 1_000_000_000),
        row("hdtf", "error", None, 123),
    ])
    df = hours_by_dataset(table)

    assert list(df.columns) == ["dataset", "files", "probed_ok", "errors", "hours", "size_gb"]
    assert df["dataset"].tolist() == ["celebv", "hdtf", "vox"]
    by = df.set_index("dataset")
    assert by.loc["vox", "files"] == 4 and by.loc["vox", "probed_ok"] == 3 and by.loc["vox", "errors"] == 1
    assert by.loc["vox", "hours"] == pytest.approx(1.5)
    assert by.loc["vox", "size_gb"] == pytest.approx(2.5)
    assert by.loc["celebv", "hours"] == pytest.approx(2.0)
    assert by.loc["hdtf", "hours"] == 0.0 and by.loc["hdtf", "errors"] == 1

    text = format_hours_table(df)
    lines = text.splitlines()
    assert lines[0].split() == ["dataset", "files", "probed_ok", "errors", "hours", "size_gb"]
    assert lines[-1].split() == ["TOTAL", "6", "4", "2", "3.50", "3.50"]
    assert any(line.split()[:2] == ["vox", "4"] for line in lines)


def test_hours_of_an_empty_inventory() -> None:
    df = hours_by_dataset(to_table([]))
    assert df.empty and list(df.columns) == ["dataset", "files", "probed_ok", "errors", "hours", "size_gb"]
    assert format_hours_table(df).splitlines()[-1].split() == ["TOTAL", "0", "0", "0", "0.00", "0.00"]


# -- with the real probe on real clips -------------------------------------------------------------------


def real_probe():
    from curation import media

    return media.probe


def test_real_probe_on_the_shared_clips(videos_dir: Path) -> None:
    probe = real_probe()
    table = build_inventory([FolderAdapter(videos_dir, "shared")], workers=2, progress=False, probe_fn=probe)
    df = table.to_pandas().set_index("source_relpath")

    assert len(df) == len([p for p in os.listdir(videos_dir) if not p.startswith(".")])
    assert (df["probe_status"] == "ok").all(), df.loc[df["probe_status"] != "ok", "probe_error"].to_dict()
    assert df.loc["syncnet_example.avi", "duration_s"] == pytest.approx(12.7, abs=0.2)
    assert df.loc["latentsync_demo1_video.mp4", "video_codec"] == "hevc"
    assert not df.loc["liveportrait_d0_noaudio.mp4", "has_audio"]
    assert df.loc["vretalking_face_1.mp4", "vfr"]
    assert df["content_id"].nunique() == len(df)
    hours = hours_by_dataset(table).set_index("dataset")
    assert hours.loc["shared", "hours"] == pytest.approx(df["duration_s"].sum() / 3600)
    assert 0.03 < hours.loc["shared", "hours"] < 0.1


def test_real_probe_errors_and_an_hdtf_tree(tmp_path: Path, videos_dir: Path) -> None:
    probe = real_probe()
    hdtf = tmp_path / "hdtf"
    hdtf.mkdir()
    # A link named the way HDTF's download script names clips, pointing at the real (SadTalker-hosted) HDTF clip.
    (hdtf / "WDA_KatieHill_000.mp4").symlink_to(videos_dir / "sadtalker_WDA_KatieHill_000.mp4")
    write(hdtf / "WDA_KatieHill_001.mp4", b"")
    write(hdtf / "WDA_KatieHill_002.mp4", b"<html>404 Not Found</html>\n")

    table = build_inventory([make_source("hdtf", hdtf)], workers=2, progress=False, probe_fn=probe)
    rows = {r["source_relpath"]: r for r in table.to_pylist()}

    good = rows["WDA_KatieHill_000.mp4"]
    assert good["probe_status"] == "ok" and good["speaker_id"] == "KatieHill"
    assert good["duration_s"] == pytest.approx(8.0, abs=0.2) and good["width"] == 512
    original = videos_dir / "sadtalker_WDA_KatieHill_000.mp4"
    assert good["content_id"] == content_id(original, original.stat().st_size)
    assert rows["WDA_KatieHill_001.mp4"]["probe_error_reason"] == "empty_file"
    assert rows["WDA_KatieHill_002.mp4"]["probe_error_reason"] == "probe_failed"
    assert rows["WDA_KatieHill_002.mp4"]["probe_error"]
