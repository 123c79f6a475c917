from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from curation.errors import ConfigError
from curation.sources import (
    ADAPTERS,
    CONTENT_SAMPLE_BYTES,
    FolderAdapter,
    HdtfAdapter,
    SourceFile,
    content_id,
    make_source,
)


def touch(root: Path, relpath: str, data: bytes = b"video") -> Path:
    path = root / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def by_relpath(files: list[SourceFile]) -> dict[str, SourceFile]:
    return {f.relpath: f for f in files}


# -- listing ------------------------------------------------------------------------------------------------


def test_folder_lists_only_videos_and_counts_everything_else(tmp_path: Path) -> None:
    root = tmp_path / "my_clips"
    touch(root, "a.mp4", b"12345")
    touch(root, "B.MKV")
    touch(root, "sub/c.webm")
    touch(root, "sub/deeper/d.Ts")
    touch(root, "notes.txt")
    touch(root, "sub/meta.json")
    touch(root, "sub/other.txt")
    touch(root, "README")
    touch(root, ".hidden.mp4")
    touch(root, ".cache/x.mp4")

    adapter = FolderAdapter(root)
    files = list(adapter.iter_files())

    assert [f.relpath for f in files] == ["B.MKV", "a.mp4", "sub/c.webm", "sub/deeper/d.Ts"]
    assert adapter.dataset == "my_clips"
    assert all(f.dataset == "my_clips" and os.path.isabs(f.path) for f in files)
    assert by_relpath(files)["a.mp4"].size_bytes == 5
    assert by_relpath(files)["a.mp4"].path == str(root / "a.mp4")
    assert dict(adapter.ignored) == {".txt": 2, ".json": 1, "<none>": 1}
    assert adapter.hidden == 2
    assert adapter.listed == 4 and adapter.unparsed == 0
    assert adapter.stats()["ignored"] == {"<none>": 1, ".json": 1, ".txt": 2}


def test_listing_order_is_sorted_by_path_components_and_repeatable(tmp_path: Path) -> None:
    for relpath in ["a-b/x.mp4", "a/x.mp4", "a.mp4", "z/1.mp4", "a/b/y.mp4", "a/a.mp4", "Z.mp4"]:
        touch(tmp_path, relpath)
    adapter = FolderAdapter(tmp_path)
    first = [f.relpath for f in adapter.iter_files()]
    second = [f.relpath for f in adapter.iter_files()]
    assert first == second
    assert first == sorted(first, key=lambda r: r.split("/"))
    assert first == ["Z.mp4", "a/a.mp4", "a/b/y.mp4", "a/x.mp4", "a-b/x.mp4", "a.mp4", "z/1.mp4"]


def test_counters_describe_the_last_pass(tmp_path: Path) -> None:
    touch(tmp_path, "a.mp4")
    touch(tmp_path, "a.txt")
    adapter = FolderAdapter(tmp_path)
    list(adapter.iter_files())
    list(adapter.iter_files())
    assert adapter.ignored == {".txt": 1} and adapter.listed == 1


def test_symlinked_directories_are_followed_once_and_broken_links_listed(tmp_path: Path) -> None:
    elsewhere = tmp_path / "disk2"
    touch(elsewhere, "v.mp4")
    root = tmp_path / "root"
    root.mkdir()
    (root / "linked").symlink_to(elsewhere, target_is_directory=True)
    (elsewhere / "loop").symlink_to(root, target_is_directory=True)  # a cycle back to the root
    (root / "gone.mp4").symlink_to(tmp_path / "does-not-exist.mp4")

    adapter = FolderAdapter(root)
    files = by_relpath(list(adapter.iter_files()))

    assert sorted(files) == ["gone.mp4", "linked/v.mp4"]
    assert files["gone.mp4"].size_bytes == -1
    assert adapter.ignored["<repeated-dir>"] == 1


def test_missing_root_is_a_config_error_naming_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(ConfigError, match="nowhere"):
        make_source("voxceleb2", missing)
    touch(tmp_path, "file.mp4")
    with pytest.raises(ConfigError, match="not a directory"):
        FolderAdapter(tmp_path / "file.mp4")


def test_registry_and_make_source(tmp_path: Path) -> None:
    assert set(ADAPTERS) == {"folder", "hdtf", "celebv_hq", "voxceleb2", "talkinghead_1kh", "multitalk"}
    with pytest.raises(ConfigError, match="valid kinds: celebv_hq, folder, hdtf, multitalk"):
        make_source("vfhq", tmp_path)
    with pytest.raises(ConfigError, match="bad options"):
        make_source("voxceleb2", tmp_path, url_lists_dir=tmp_path)
    assert make_source("celebv_hq", tmp_path).dataset == "celebv_hq"
    assert make_source("celebv_hq", tmp_path, dataset="celebv_part2").dataset == "celebv_part2"
    assert make_source("folder", tmp_path).dataset == tmp_path.name


# -- per-dataset layouts ---------------------------------------------------------------------------------


def test_hdtf_layouts_and_url_lists(tmp_path: Path) -> None:
    touch(tmp_path, "HDTF_dataset/WDA_video_url.txt",
          b"KatieHill https://www.youtube.com/watch?v=Y71hHF4g7Fg&t=3s\n"
          b"NancyPelosi0 https://www.youtube.com/watch?v=Dtd5jhCLoAk\n")
    touch(tmp_path, "HDTF_dataset/RD_video_url.txt", b"Radio11 https://www.youtube.com/watch?v=XtySvTwIOfw\n")
    touch(tmp_path, "clips/WDA_KatieHill_000.mp4")
    touch(tmp_path, "clips/WDA_NancyPelosi0_012.mp4")
    touch(tmp_path, "clips/WRA_LucilleRoybal-Allard_001.mp4")  # hyphenated name, no url list for WRA
    touch(tmp_path, "clips/RD_Radio11_001.mp4")
    touch(tmp_path, "clips/_videos_raw/WDA_KatieHill.mp4")
    touch(tmp_path, "mrzzm/Radio11_0.mp4")  # official README naming: group from the url lists
    touch(tmp_path, "mrzzm/Unknown_3.mp4")  # no group prefix, not in the lists
    touch(tmp_path, "clips/sadtalker_WDA_KatieHill_000.mp4")

    adapter = make_source("hdtf", tmp_path)
    files = by_relpath(list(adapter.iter_files()))

    katie = files["clips/WDA_KatieHill_000.mp4"]
    assert (katie.origin_video_id, katie.speaker_id) == ("Y71hHF4g7Fg", "KatieHill")
    assert katie.extra == {"group": "WDA", "video_name": "KatieHill", "clip": "0", "stage": "clip"}
    pelosi = files["clips/WDA_NancyPelosi0_012.mp4"]
    assert (pelosi.origin_video_id, pelosi.speaker_id, pelosi.extra["clip"]) == ("Dtd5jhCLoAk", "NancyPelosi", "12")
    wra = files["clips/WRA_LucilleRoybal-Allard_001.mp4"]
    assert (wra.origin_video_id, wra.speaker_id, wra.extra["group"]) == (None, "LucilleRoybal-Allard", "WRA")
    radio = files["clips/RD_Radio11_001.mp4"]
    assert (radio.origin_video_id, radio.speaker_id) == ("XtySvTwIOfw", None)
    raw = files["clips/_videos_raw/WDA_KatieHill.mp4"]
    assert raw.extra["stage"] == "raw" and raw.origin_video_id == "Y71hHF4g7Fg" and "clip" not in raw.extra
    mrzzm = files["mrzzm/Radio11_0.mp4"]
    assert (mrzzm.origin_video_id, mrzzm.extra["group"], mrzzm.extra["clip"]) == ("XtySvTwIOfw", "RD", "0")

    for unparsed in ("mrzzm/Unknown_3.mp4", "clips/sadtalker_WDA_KatieHill_000.mp4"):
        f = files[unparsed]
        assert (f.origin_video_id, f.speaker_id, f.extra) == (None, None, {})
    assert adapter.unparsed == 2
    assert adapter.ignored == {".txt": 2}


def test_hdtf_explicit_url_lists_dir(tmp_path: Path) -> None:
    lists = tmp_path / "meta"
    touch(lists, "WRA_video_url.txt", b"AdamKinzinger0 https://www.youtube.com/watch?v=abcdefghijk\n")
    touch(tmp_path, "data/WRA_AdamKinzinger0_000.mp4")
    adapter = HdtfAdapter(tmp_path / "data", url_lists_dir=lists)
    (clip,) = adapter.iter_files()
    assert (clip.origin_video_id, clip.speaker_id) == ("abcdefghijk", "AdamKinzinger")
    with pytest.raises(ConfigError, match="url_lists_dir"):
        HdtfAdapter(tmp_path, url_lists_dir=tmp_path / "missing")


def test_celebv_hq_clip_and_raw_names(tmp_path: Path) -> None:
    touch(tmp_path, "processed/M2Ohb0FAaJU_1.mp4")
    touch(tmp_path, "processed/_0tf2n3rlJU_0.mp4")  # YouTube ids may start with "_"
    touch(tmp_path, "raw/M2Ohb0FAaJU.mp4")
    touch(tmp_path, "processed/not_a_clip.mp4")
    touch(tmp_path, "celebvhq_info.json")

    adapter = make_source("celebv_hq", tmp_path)
    files = by_relpath(list(adapter.iter_files()))

    assert files["processed/M2Ohb0FAaJU_1.mp4"].origin_video_id == "M2Ohb0FAaJU"
    assert files["processed/M2Ohb0FAaJU_1.mp4"].extra == {"clip": "1", "stage": "clip"}
    assert files["processed/_0tf2n3rlJU_0.mp4"].origin_video_id == "_0tf2n3rlJU"
    assert files["raw/M2Ohb0FAaJU.mp4"].extra == {"stage": "raw"}
    assert all(f.speaker_id is None for f in files.values())
    assert files["processed/not_a_clip.mp4"].origin_video_id is None
    assert adapter.unparsed == 1 and adapter.ignored == {".json": 1}


def test_voxceleb2_speaker_video_split_utterance(tmp_path: Path) -> None:
    touch(tmp_path, "dev/mp4/id00012/21Uxsk56VDQ/00001.mp4")
    touch(tmp_path, "dev/mp4/id00012/21Uxsk56VDQ/00002.mp4")
    touch(tmp_path, "test/mp4/id00017/01dfn2spqyE/00003.mp4")
    touch(tmp_path, "unsplit/mp4/id00018/5BVBfpfzjIk/00006.mp4")
    touch(tmp_path, "dev/mp4/id00012/21Uxsk56VDQ/preview.mp4")
    touch(tmp_path, "dev/mp4/speaker12/21Uxsk56VDQ/00001.mp4")
    touch(tmp_path, "vox2_meta.csv")

    adapter = make_source("voxceleb2", tmp_path)
    files = by_relpath(list(adapter.iter_files()))

    first = files["dev/mp4/id00012/21Uxsk56VDQ/00001.mp4"]
    assert (first.speaker_id, first.origin_video_id) == ("id00012", "21Uxsk56VDQ")
    assert first.extra == {"split": "dev", "utterance": "00001", "stage": "clip"}
    assert files["test/mp4/id00017/01dfn2spqyE/00003.mp4"].extra["split"] == "test"
    unsplit = files["unsplit/mp4/id00018/5BVBfpfzjIk/00006.mp4"]
    assert unsplit.speaker_id == "id00018" and "split" not in unsplit.extra
    assert files["dev/mp4/id00012/21Uxsk56VDQ/preview.mp4"].speaker_id is None
    assert files["dev/mp4/speaker12/21Uxsk56VDQ/00001.mp4"].speaker_id is None
    assert adapter.unparsed == 2 and adapter.listed == 6


def test_talkinghead_1kh_stages(tmp_path: Path) -> None:
    touch(tmp_path, "train/raw_videos/--Y9imYnfBw.mp4")
    touch(tmp_path, "train/1min_clips/--Y9imYnfBw_0000.mp4")
    touch(tmp_path, "train/cropped_clips/--Y9imYnfBw_0003_S120_E1610_L425_T43_R905_B523.mp4")
    touch(tmp_path, "val/cropped_clips/Tq1dUXzW2fE_0001_S0_E750_L-12_T0_R500_B512.mp4")
    touch(tmp_path, "train/cropped_clips/clip.mp4")
    touch(tmp_path, "data_list/train_video_tubes.txt")

    adapter = make_source("talkinghead_1kh", tmp_path)
    files = by_relpath(list(adapter.iter_files()))

    assert files["train/raw_videos/--Y9imYnfBw.mp4"].extra == {"split": "train", "stage": "raw"}
    assert files["train/1min_clips/--Y9imYnfBw_0000.mp4"].extra == {"split": "train", "chunk": "0", "stage": "chunk"}
    clip = files["train/cropped_clips/--Y9imYnfBw_0003_S120_E1610_L425_T43_R905_B523.mp4"]
    assert clip.origin_video_id == "--Y9imYnfBw" and clip.speaker_id is None
    assert clip.extra == {"split": "train", "chunk": "3", "start_frame": "120", "end_frame": "1610",
                          "crop_ltrb": "425,43,905,523", "stage": "clip"}
    val = files["val/cropped_clips/Tq1dUXzW2fE_0001_S0_E750_L-12_T0_R500_B512.mp4"]
    assert val.extra["split"] == "val" and val.extra["crop_ltrb"] == "-12,0,500,512"
    assert files["train/cropped_clips/clip.mp4"].origin_video_id is None
    assert adapter.unparsed == 1


def test_multitalk_language_folders(tmp_path: Path) -> None:
    touch(tmp_path, "multitalk_dataset/arabic/O-VJXuHb390_0.mp4")
    touch(tmp_path, "multitalk_dataset/Czech/QrDZjUeiUwc_1.mp4")
    touch(tmp_path, "raw_video/arabic/O-VJXuHb390.mp4")
    touch(tmp_path, "multitalk_dataset/klingon/O-VJXuHb390_0.mp4")
    touch(tmp_path, "multitalk_dataset/O-VJXuHb390_0.mp4")

    adapter = make_source("multitalk", tmp_path)
    files = by_relpath(list(adapter.iter_files()))

    arabic = files["multitalk_dataset/arabic/O-VJXuHb390_0.mp4"]
    assert arabic.origin_video_id == "O-VJXuHb390"
    assert arabic.extra == {"language": "arabic", "clip": "0", "stage": "clip"}
    assert files["multitalk_dataset/Czech/QrDZjUeiUwc_1.mp4"].extra["language"] == "czech"
    assert files["raw_video/arabic/O-VJXuHb390.mp4"].extra == {"language": "arabic", "stage": "raw"}
    assert files["multitalk_dataset/klingon/O-VJXuHb390_0.mp4"].origin_video_id is None
    assert files["multitalk_dataset/O-VJXuHb390_0.mp4"].origin_video_id is None
    assert adapter.unparsed == 2


# -- content id --------------------------------------------------------------------------------------------


def test_content_id_names_content_not_path(tmp_path: Path) -> None:
    original = touch(tmp_path, "a/clip.mp4", b"frame data " * 1000)
    copy = tmp_path / "b" / "renamed.mkv"
    copy.parent.mkdir()
    shutil.copyfile(original, copy)
    other = touch(tmp_path, "c/clip.mp4", b"frame dat! " * 1000)  # same size, different bytes
    size = original.stat().st_size

    cid = content_id(original, size)
    assert len(cid) == 32 and int(cid, 16) >= 0
    assert content_id(copy, size) == cid
    assert content_id(other, size) != cid
    assert content_id(touch(tmp_path, "empty.mp4", b""), 0) != content_id(touch(tmp_path, "one.mp4", b"\0"), 1)


def test_content_id_samples_head_middle_tail_of_large_files(tmp_path: Path) -> None:
    size = 8 * CONTENT_SAMPLE_BYTES
    data = bytearray(os.urandom(size))
    path = touch(tmp_path, "big.mp4", bytes(data))
    cid = content_id(path, size)

    middle = (size - CONTENT_SAMPLE_BYTES) // 2 + 10
    for offset, changes in ((5, True), (middle, True), (size - 5, True), (2 * CONTENT_SAMPLE_BYTES, False)):
        changed = bytearray(data)
        changed[offset] ^= 0xFF
        path.write_bytes(bytes(changed))
        assert (content_id(path, size) != cid) is changes, offset


def test_content_id_of_unreadable_file_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        content_id(tmp_path / "missing.mp4", 10)
