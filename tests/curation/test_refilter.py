"""Re-thresholding without re-scoring: the column-wise decisions against ``decide`` row by row (a real curated
run and random tables), decisions parts read back by every reader (read_manifest, the report, the documented
pandas and DuckDB joins), chains of refilters, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation import report
from curation.config import Thresholds
from curation.errors import MegactorError
from curation.filters import DECISION_INPUTS, RULES, decide, decide_columns
from curation.io import part_files, write_parquet_atomic
from curation.manifest import (
    DECISION_COLUMNS,
    SCHEMA,
    read_manifest,
    read_provenance,
    refilter,
    to_table,
    write_part,
)
from flows.cli import main

THRESHOLD_SETS = {
    "paper": {},
    "tiny run's (kept <-> rejected)": {"face_res_px_min": 150, "require_lip_sync": False},
    "no audio rules": {"require_lip_sync": False, "speech_frac_min": 0.0},
    "strict speech, loose face": {"speech_frac_min": 0.95, "face_res_px_min": 100, "yaw_abs_mean_deg_max": 60,
                                  "face_present_frac_min": 0.5, "multi_face_frac_max": 0.5},
    "lip sync only": {"face_res_px_min": 0, "clip_s_min": 0, "sync_c_min": 1.0, "sync_d_max": 20.0},
}


def _expected(rows: list[dict], thresholds: Thresholds) -> dict[str, list]:
    decisions = [decide(row, thresholds) for row in rows]
    return {"keep": [d.keep for d in decisions], "status": [d.status for d in decisions],
            "reject_reasons": [d.reject_reasons for d in decisions],
            "unscored_rules": [d.unscored_rules for d in decisions]}


def _decisions(table: pa.Table) -> dict[str, list]:
    return {name: table.column(name).to_pylist() for name in DECISION_COLUMNS}


# -- (b) random tables: every rule column null somewhere, errors, values on the thresholds -------------------

def _random_table(n: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    t = Thresholds()

    def numbers(at: float, low: float, high: float) -> list:
        # on the threshold (as float32 stores it), just either side, anywhere, NaN, null
        values = rng.uniform(low, high, n).tolist()
        picks = rng.integers(0, 7, n)
        for i, pick in enumerate(picks):
            values[i] = [at, np.nextafter(np.float32(at), np.float32(-np.inf)),
                         np.nextafter(np.float32(at), np.float32(np.inf)), values[i], values[i], float("nan"),
                         None][pick]
        return [None if v is None else float(v) for v in values]

    def flags() -> list:
        return [[True, True, False, None][i] for i in rng.integers(0, 4, n)]

    columns = {
        "clip_id": [f"clip-{i:05d}" for i in range(n)],
        "has_video": flags(), "has_audio": flags(),
        "width": [[None, 600, 599, 1280, 224][i] for i in rng.integers(0, 5, n)],
        "height": [[None, 600, 720, 1080, 224][i] for i in rng.integers(0, 5, n)],
        "duration_s": numbers(t.clip_s_min, 0, 20),
        "face_present_frac": numbers(t.face_present_frac_min, -0.1, 1) + [],
        "multi_face_frac": numbers(t.multi_face_frac_max, 0, 0.5),
        "face_res_px": numbers(t.face_res_px_min, 100, 1000),
        "yaw_abs_mean_deg": numbers(t.yaw_abs_mean_deg_max, 0, 60),
        "audio_speech_frac": numbers(t.speech_frac_min, 0, 1),
        "sync_c": numbers(t.sync_c_min, 0, 12), "sync_d": numbers(t.sync_d_max, 4, 12),
        "error": [[None, None, None, "", "ffmpeg exited 1"][i] for i in rng.integers(0, 5, n)],
        "error_reason": [[None, "", "decode_failed"][i] for i in rng.integers(0, 3, n)],
    }
    for i in range(0, n, 97):  # face found exactly at zero
        columns["face_present_frac"][i] = 0.0
    schema = pa.schema([SCHEMA.field(name) for name in columns])
    return pa.table(columns, schema=schema)


@pytest.mark.parametrize("name", list(THRESHOLD_SETS))
def test_column_wise_decisions_equal_decide_on_random_tables(name):
    table = _random_table(2000, seed=len(name))
    rows = table.to_pylist()
    thresholds = Thresholds(**THRESHOLD_SETS[name])
    assert _decisions(pa.table(decide_columns(table, thresholds))) == _expected(rows, thresholds)


def test_column_wise_decisions_of_a_table_without_some_columns_are_unscored():
    table = pa.table({"clip_id": ["a", "b"], "has_video": [True, False]})
    rows = table.to_pylist()
    assert _decisions(pa.table(decide_columns(table, Thresholds()))) == _expected(rows, Thresholds())
    assert all(column in DECISION_INPUTS for rule in RULES for column in rule.inputs)


# -- (a) a real curated run, with rows failing each rule --------------------------------------------------------

VARIANTS = [
    {}, {"has_video": False}, {"width": 320, "height": 240}, {"has_audio": False}, {"has_audio": None},
    {"duration_s": 2.0}, {"face_present_frac": 0.0}, {"face_present_frac": 0.5}, {"face_present_frac": None},
    {"multi_face_frac": 0.5}, {"face_res_px": 120.0}, {"face_res_px": 450.0}, {"yaw_abs_mean_deg": 45.0},
    {"audio_speech_frac": 0.1}, {"audio_speech_frac": None}, {"sync_c": 7.5, "sync_d": 7.0},
    {"sync_c": 2.0, "sync_d": 10.0}, {"sync_c": None, "sync_d": None},
    {"face_res_px": 120.0, "sync_c": 7.5, "sync_d": 7.0},
    {"error": "ffmpeg exited 1", "error_reason": "decode_failed"}, {"error": "boom", "error_reason": None},
    {"face_res_px": 100.0, "yaw_abs_mean_deg": 80.0, "error": "late", "error_reason": "too_short_for_sync"},
]


@pytest.fixture(scope="module")
def scored_run(tiny_manifest, tmp_path_factory) -> Path:
    """The tiny manifest's real rows (MediaPipe scores and face tracks), and copies of them failing each rule,
    over two part files."""
    templates = read_manifest(tiny_manifest).to_pylist()
    rows = []
    for template in templates:
        for number, change in enumerate(VARIANTS):
            rows.append({**template, **change, "clip_id": f"{template['clip_id']}-{number:02d}"})
    run = tmp_path_factory.mktemp("scored-run")
    provenance = read_provenance(part_files(tiny_manifest)[0])
    half = len(rows) // 2
    write_part(to_table(rows[:half], provenance), run / "manifest", 0)
    write_part(to_table(rows[half:], provenance), run / "manifest", 1)
    return run


@pytest.mark.parametrize("name", list(THRESHOLD_SETS))
def test_refilter_of_a_real_run_equals_decide_row_by_row(scored_run, tmp_path, name):
    thresholds = Thresholds(**THRESHOLD_SETS[name])
    scores = read_manifest(scored_run / "manifest")
    result = refilter(scored_run / "manifest", tmp_path / "manifest", thresholds, {"thresholds": {}})
    assert result.rows == scores.num_rows and len(result.parts) == 1  # one decisions part, no copy of the scores
    assert set(pq.read_schema(result.parts[0]).names) == {"clip_id", *DECISION_COLUMNS}
    refiltered = read_manifest(tmp_path / "manifest")
    assert _decisions(refiltered) == _expected(scores.to_pylist(), thresholds)
    others = [c for c in SCHEMA.names if c not in DECISION_COLUMNS]
    assert refiltered.select(others).equals(scores.select(others))  # the face tracks included


def test_the_inputs_cache_is_read_while_the_parts_are_unchanged_and_rebuilt_when_one_changes(
        scored_run, tmp_path, monkeypatch):
    import shutil

    from curation import manifest

    scores = tmp_path / "run" / "manifest"
    shutil.copytree(scored_run / "manifest", scores)
    loose, paper = Thresholds(**THRESHOLD_SETS["tiny run's (kept <-> rejected)"]), Thresholds()
    refilter(scores, tmp_path / "first", loose, {})  # reads every part, writes the cache
    cache = tmp_path / "run" / ".megactor-cache" / "manifest" / "decision-inputs.parquet"
    assert cache.is_file() and not list(scores.glob(".*"))  # outside the manifest: no glob over it sees it

    def no_part_reads(*args, **kwargs):
        raise AssertionError("a part was opened although the cache is valid")

    monkeypatch.setattr(manifest, "_read_source", no_part_reads)
    rows = read_manifest(scores).to_pylist()
    refilter(scores, tmp_path / "second", paper, {})
    assert _decisions(read_manifest(tmp_path / "second")) == _expected(rows, paper)
    monkeypatch.undo()

    part = part_files(scores)[0]  # a part rewritten (a rerun of its shard): the cache no longer matches
    table = pq.read_table(part, schema=SCHEMA)
    changed = table.set_column(table.schema.get_field_index("face_res_px"), SCHEMA.field("face_res_px"),
                               pa.array([1.0] * table.num_rows, pa.float32()))
    write_parquet_atomic(changed.replace_schema_metadata(table.schema.metadata), part)
    rows = read_manifest(scores).to_pylist()
    refilter(scores, tmp_path / "third", loose, {})
    assert _decisions(read_manifest(tmp_path / "third")) == _expected(rows, loose)
    assert "face_too_small" in {r for d in _expected(rows, loose)["reject_reasons"] for r in d}


def test_the_threshold_sets_flip_decisions_both_ways(scored_run):
    rows = read_manifest(scored_run / "manifest").to_pylist()
    keeps = {name: _expected(rows, Thresholds(**t))["keep"] for name, t in THRESHOLD_SETS.items()}
    gains = {(a, b) for a in keeps for b in keeps
             if any(x and not y for x, y in zip(keeps[a], keeps[b], strict=True))}  # a keeps a clip b rejects
    assert ("tiny run's (kept <-> rejected)", "paper") in gains  # rejected -> kept
    assert ("lip sync only", "tiny run's (kept <-> rejected)") in gains  # and the other way
    decisions = {json.dumps(_expected(rows, Thresholds(**t))) for t in THRESHOLD_SETS.values()}
    assert len(decisions) == len(THRESHOLD_SETS)


# -- (c) every reader sees the new decisions ---------------------------------------------------------------------

FLAGS = ("--face-res-min", "150", "--no-require-lip-sync", "--set", "thresholds.speech_frac_min=0.5")


@pytest.fixture(scope="module")
def refiltered(scored_run, tmp_path_factory):
    output = tmp_path_factory.mktemp("refiltered")
    assert main(["filter", "--manifest", str(scored_run), "--output", str(output), *FLAGS]) == 0
    return output


def test_read_manifest_and_the_report_see_the_new_decisions(scored_run, refiltered):
    thresholds = Thresholds(face_res_px_min=150, require_lip_sync=False, speech_frac_min=0.5)
    scores = read_manifest(scored_run / "manifest")
    table = read_manifest(refiltered / "manifest")
    expected = _expected(scores.to_pylist(), thresholds)
    assert _decisions(table) == expected
    run = report.load_run(refiltered)
    assert run.thresholds == thresholds and "megactor filter" in run.thresholds_from
    assert run.frame["keep"].tolist() == expected["keep"]
    assert run.reasons.to_pylist() == expected["reject_reasons"]
    assert report.read_columns(refiltered / "manifest").column("status").to_pylist() == expected["status"]
    assert read_manifest(refiltered / "manifest", columns=["keep"]).column("keep").to_pylist() == expected["keep"]
    record = json.loads((refiltered / "refilter.json").read_text())
    assert record["scores"] == str((scored_run / "manifest").resolve())
    assert record["status"] == dict(pd.Series(expected["status"]).value_counts())


def test_augment_and_the_splits_select_by_the_new_decisions(scored_run, refiltered):
    from curation.augment.pipeline import kept_clips, manifest_dir
    from curation.splits import split_manifest

    thresholds = Thresholds(face_res_px_min=150, require_lip_sync=False, speech_frac_min=0.5)
    scores = read_manifest(scored_run / "manifest")
    kept = sorted(c for c, keep in zip(scores.column("clip_id").to_pylist(),
                                       _expected(scores.to_pylist(), thresholds)["keep"], strict=True) if keep)
    assert kept and len(kept) < scores.num_rows
    assert kept_clips(manifest_dir(refiltered)).column("clip_id").to_pylist() == kept
    assert sorted(split_manifest(refiltered / "manifest")[0].column("clip_id").to_pylist()) == kept


def test_the_augment_cards_recipe_joins_a_refiltered_manifest(scored_run, refiltered):
    from curation.augment.summary import _clips_recipe

    namespace = {"pd": pd}
    for manifest, refiltered_source in ((scored_run / "manifest", False), (refiltered / "manifest", True)):
        lines = _clips_recipe(str(manifest))
        assert ("decisions" in lines[0]) == refiltered_source
        exec("\n".join(lines), namespace)  # the card's own lines
        ours = read_manifest(manifest).to_pandas().set_index("clip_id").sort_index()
        clips = namespace["clips"].set_index("clip_id").sort_index()
        assert list(clips.index) == list(ours.index)
        assert clips["keep"].tolist() == ours["keep"].tolist()
        assert clips["status"].tolist() == ours["status"].tolist()


def test_the_documented_pandas_and_duckdb_joins_equal_read_manifest(refiltered):
    ours = read_manifest(refiltered / "manifest").to_pandas().set_index("clip_id").sort_index()
    # docs/curation.md, "Re-thresholding"
    run = str(refiltered)
    scores = json.load(open(f"{run}/refilter.json"))["scores"]
    decisions = pd.read_parquet(f"{run}/manifest")
    df = pd.read_parquet(scores).drop(columns=decisions.columns.drop("clip_id")).merge(decisions, on="clip_id")

    df = df.set_index("clip_id").sort_index()
    assert list(df.index) == list(ours.index)
    for column in (*DECISION_COLUMNS, "face_res_px", "dataset", "source_path"):
        left, right = df[column].tolist(), ours[column].tolist()
        if column in ("reject_reasons", "unscored_rules"):
            left, right = [list(v) for v in left], [list(v) for v in right]
        assert left == right, column

    duckdb = pytest.importorskip("duckdb")
    joined = duckdb.sql(f"""
        SELECT s.* EXCLUDE (keep, status, reject_reasons, unscored_rules), d.* EXCLUDE (clip_id)
        FROM '{scores}/*.parquet' s JOIN '{run}/manifest/*.parquet' d USING (clip_id)""").arrow()
    joined = (joined.read_all() if hasattr(joined, "read_all") else joined).sort_by("clip_id")  # duckdb 2: a reader
    assert joined.column("reject_reasons").to_pylist() == [list(v) for v in ours["reject_reasons"]]
    assert joined.column("keep").to_pylist() == ours["keep"].tolist()


def test_materialize_writes_the_same_manifest_standalone(scored_run, refiltered, tmp_path):
    assert main(["filter", "--manifest", str(scored_run), "--output", str(tmp_path), "--materialize", *FLAGS]) == 0
    parts = part_files(tmp_path / "manifest")
    assert [p.name for p in parts] == [p.name for p in part_files(scored_run / "manifest")]
    standalone = pa.concat_tables([pq.read_table(p) for p in parts])  # plain files, no code needed
    assert standalone.equals(read_manifest(refiltered / "manifest"))


# -- (d) chains and bad input --------------------------------------------------------------------------------

def test_a_refilter_of_a_refilter_reads_the_original_scores(scored_run, refiltered, tmp_path):
    thresholds = Thresholds(face_res_px_min=500)
    assert main(["filter", "--manifest", str(refiltered), "--output", str(tmp_path), "--face-res-min", "500"]) == 0
    pointer = json.loads(pq.read_schema(part_files(tmp_path / "manifest")[0]).metadata[b"megactor.decisions"])
    assert {Path(p["path"]).parent for p in pointer["scores"]} == {(scored_run / "manifest").resolve()}
    scores = read_manifest(scored_run / "manifest")
    assert _decisions(read_manifest(tmp_path / "manifest")) == _expected(scores.to_pylist(), thresholds)
    # rerun into the same output with other thresholds: replaced whole, never mixed
    assert main(["filter", "--manifest", str(refiltered), "--output", str(tmp_path), "--yaw-max", "10"]) == 0
    assert _decisions(read_manifest(tmp_path / "manifest")) == _expected(scores.to_pylist(), Thresholds(
        yaw_abs_mean_deg_max=10))


def test_decisions_that_do_not_match_their_scores_are_a_clear_error(scored_run, refiltered, tmp_path):
    (part,) = part_files(refiltered / "manifest")
    table = pq.read_table(part)
    shuffled = tmp_path / "shuffled" / "manifest"
    shuffled.mkdir(parents=True)
    pq.write_table(table.take(list(range(table.num_rows))[::-1]), shuffled / part.name)
    with pytest.raises(MegactorError, match="clip ids do not match the scores"):
        read_manifest(shuffled)

    moved = tmp_path / "moved" / "manifest"
    moved.mkdir(parents=True)
    pointer = json.loads(table.schema.metadata[b"megactor.decisions"])
    pointer["scores"][0].update(path="/nonexistent/part-00000.parquet", relpath="../nowhere/part-00000.parquet")
    metadata = {**table.schema.metadata, b"megactor.decisions": json.dumps(pointer).encode()}
    pq.write_table(table.replace_schema_metadata(metadata), moved / part.name)
    with pytest.raises(MegactorError, match="which is gone"):
        read_manifest(moved)

    pointer = json.loads(table.schema.metadata[b"megactor.decisions"])
    pointer["scores"][0]["rows"] += 1
    metadata = {**table.schema.metadata, b"megactor.decisions": json.dumps(pointer).encode()}
    pq.write_table(table.replace_schema_metadata(metadata), moved / part.name)
    with pytest.raises(MegactorError, match="changed after megactor filter ran"):
        read_manifest(moved)


def test_bad_input_is_one_line_not_a_traceback(scored_run, tmp_path, capsys):
    assert main(["filter", "--manifest", str(tmp_path / "missing"), "--output", str(tmp_path / "out")]) == 2
    assert "no manifest part files" in capsys.readouterr().err
    assert main(["filter", "--manifest", str(scored_run), "--output", str(scored_run)]) == 2
    assert "--output must differ" in capsys.readouterr().err
    assert main(["filter", "--manifest", str(scored_run), "--output", str(tmp_path / "a")]) == 0
    assert main(["filter", "--manifest", str(tmp_path / "a"), "--output", str(scored_run)]) == 2  # its scores
    assert "--output must differ" in capsys.readouterr().err
    curated = tmp_path / "curated" / "manifest"
    curated.mkdir(parents=True)
    (curated / "part-00000.parquet").symlink_to(part_files(scored_run / "manifest")[0])
    assert main(["filter", "--manifest", str(scored_run), "--output", str(curated.parent)]) == 2
    assert "holds a curated manifest" in capsys.readouterr().err
    not_a_manifest = tmp_path / "other"
    not_a_manifest.mkdir()
    pq.write_table(pa.table({"x": [1]}), not_a_manifest / "part-00000.parquet")
    assert main(["filter", "--manifest", str(not_a_manifest), "--output", str(tmp_path / "b")]) == 2
    assert "no clip_id column" in capsys.readouterr().err
