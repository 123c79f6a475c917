"""The dataset report: its numbers against summary.json and against the filter's own decisions, the
kept-versus-threshold curves, the removal audit, and runs with nothing kept or no clips at all."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import yaml

from curation import report
from curation.config import Thresholds, load_config
from curation.filters import RULES, decide
from curation.io import part_files
from curation.manifest import apply_decision, read_manifest, read_provenance, to_table, write_part
from curation.pipeline import OutputLayout, provenance
from curation.summary import build_summary, write_summary


def synthetic_run(tiny_manifest: Path, root: Path, *, clips: int = 48,
                  datasets: tuple[str, ...] = ("hdtf", "vox"), overrides: dict | None = None,
                  seed: int = 0) -> Path:
    """A curated run (manifest, config.yaml, summary.json) of ``clips`` rows made from the tiny manifest's
    real rows with drawn scores, decided by the real filter: rejections for every measure, rows failing
    several rules, rows without lip-sync scores (pending), an error. The first rows keep the real sources
    (their thumbnails decode); the others point at files that do not exist."""
    config = load_config(None, {"runtime.device": "cpu", **(overrides or {})})
    templates = read_manifest(tiny_manifest).to_pylist()
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(clips):
        row = dict(templates[i % len(templates)])
        duration = float(rng.uniform(4, 20))
        real = i < 4
        row.update(
            clip_id=f"clip-{i:04d}", dataset=datasets[i % len(datasets)], width=1280, height=720,
            source_path=row["source_path"] if real else f"/nonexistent/source-{i}.mp4",
            start_s=0.0, end_s=duration if not real else min(duration, 6.0),
            face_res_px=float(rng.uniform(300, 900)), yaw_abs_mean_deg=float(rng.uniform(0, 50)),
            sync_c=None if i % 7 == 3 else float(rng.uniform(2, 10)),
            sync_d=None if i % 7 == 3 else float(rng.uniform(5, 11)),
            error=None, error_reason=None,
        )
        row["duration_s"] = row["end_s"] - row["start_s"]
        if not real:
            row["source_duration_s"] = row["duration_s"]
        if i == 5:
            row.update(error="ffmpeg exited 1", error_reason="decode_failed")
        rows.append(apply_decision(row, config.thresholds))
    write_part(to_table(rows, read_provenance(part_files(tiny_manifest)[0])), root / "manifest", 0)
    (root / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    layout = OutputLayout(root)
    write_summary(layout, build_summary(layout, config, provenance(config), shards_planned=1))
    return root


class Cells(HTMLParser):
    """The page's numbers: (row attributes, cell key) -> the cell's exact value."""

    def __init__(self):
        super().__init__()
        self.row: dict[str, str] = {}
        self.cells: dict[tuple, float] = {}

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tr":
            self.row = {k: v for k, v in attrs.items() if k.startswith("data-")}
        elif tag == "td" and "data-key" in attrs:
            key = tuple(sorted(self.row.items())) + (attrs["data-key"],)
            self.cells[key] = float(attrs["data-value"]) if attrs.get("data-value") else float("nan")


def page_cells(page: Path) -> dict[tuple, float]:
    parser = Cells()
    parser.feed(page.read_text())
    return parser.cells


def dataset_cell(cells: dict, dataset: str, key: str) -> float:
    return cells[(("data-dataset", dataset), key)]


@pytest.fixture(scope="module")
def run(tiny_manifest, tmp_path_factory) -> Path:
    return synthetic_run(tiny_manifest, tmp_path_factory.mktemp("report-run"))


@pytest.fixture(scope="module")
def page(run) -> Path:
    return report.build_report(run)


def test_page_numbers_equal_summary(run, page):
    summary = json.loads((run / "summary.json").read_text())
    cells = page_cells(page)
    assert page == run / "report" / "index.html"
    assert len(summary["datasets"]) == 2
    for d in summary["datasets"]:
        for key in ("hours_in", "hours_kept", "kept_pct_hours"):
            value = dataset_cell(cells, d["dataset"], key)
            assert value == pytest.approx(d[key], abs=0.006), (d["dataset"], key)
        assert dataset_cell(cells, d["dataset"], "mean_face_res_px") == pytest.approx(d["mean_face_res_px"],
                                                                                       abs=0.006)
    kept_total = sum(d["hours_kept"] for d in summary["datasets"])
    assert dataset_cell(cells, "*total*", "hours_kept") == pytest.approx(kept_total, abs=1e-3)
    assert cells[(("data-step", "kept"), "hours")] == pytest.approx(kept_total, abs=1e-3)
    assert 0 < kept_total < sum(d["hours_in"] for d in summary["datasets"])
    reasons = {k[0][1]: value for k, value in cells.items() if k[0][0] == "data-reason" and k[1] == "clips"}
    assert reasons == {k: float(v) for k, v in summary["reject_reasons"].items()}
    assert {"face_too_small", "yaw_too_large", "sync_conf_too_low", "decode_failed"} <= set(reasons)


def test_page_files(run, page):
    names = {p.name for p in page.parent.glob("*.png")}
    assert {"funnel.png", "audit.png", "hist-face_res_px.png", "hist-sync_d.png",
            "curve-sync_c_min.png"} <= names
    text = page.read_text()
    for name in names:
        assert f'src="{name}"' in text
    thumbs = sorted(page.parent.glob("thumb-*.png"))
    assert 2 <= len(thumbs) <= 2 * report.THUMBNAILS_PER_KIND  # real sources decode, missing ones do not
    assert "(source not readable)" in text


def test_every_filter_rule_has_a_vectorised_form_and_a_stage():
    for rule in RULES:
        assert rule.name in report.COMPARISONS or rule.name in report.FLAGS, rule.name
        assert report.STAGE_OF_RULE[rule.name] in report.STAGES


def test_vectorised_rules_match_the_filter(run):
    loaded = report.load_run(run)
    votes = report.verdicts(loaded.frame, loaded.thresholds)
    rows = read_manifest(run / "manifest").to_pylist()
    reason_of = {rule.name: rule.reason for rule in RULES}
    for i, row in enumerate(rows):
        decision = decide(row, loaded.thresholds)
        failed = [reason_of[name] for name, mask in votes.failed.items() if mask[i]]
        assert failed == [r for r in decision.reject_reasons if r in reason_of.values()], row["clip_id"]
    assert np.array_equal(votes.kept(), loaded.frame["keep"].to_numpy(dtype=bool))


def test_curve_at_the_threshold_is_the_kept_hours(run):
    loaded = report.load_run(run)
    frame, t = loaded.frame, loaded.thresholds
    kept_hours = frame["hours"][frame["keep"].to_numpy(dtype=bool)].sum()
    assert kept_hours > 0
    for threshold in [m[2] for m in report.MEASURES] + list(report.EXTRA_SWEEPS):
        at = getattr(t, threshold)
        curve = report.kept_hours_curve(frame, t, threshold, np.array([at]))
        assert curve[0] == pytest.approx(kept_hours, rel=1e-9), threshold


@pytest.mark.parametrize("threshold,value", [("face_res_px_min", 450.0), ("face_res_px_min", 800.0),
                                             ("yaw_abs_mean_deg_max", 12.0), ("sync_c_min", 4.0),
                                             ("sync_d_max", 10.0)])
def test_curve_elsewhere_matches_refiltering(run, threshold, value):
    """Moving one threshold: the curve says what re-deciding every row with the filter would keep."""
    loaded = report.load_run(run)
    moved = loaded.thresholds.model_copy(update={threshold: value})
    rows = read_manifest(run / "manifest").to_pylist()
    expected = sum(r["duration_s"] for r in rows if decide(r, moved).keep) / 3600
    curve = report.kept_hours_curve(loaded.frame, loaded.thresholds, threshold, np.array([value]))
    assert curve[0] == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_curves_are_monotone(run):
    loaded = report.load_run(run)
    for threshold, increasing in (("face_res_px_min", False), ("sync_d_max", True)):
        grid = report.sweep_grid(loaded.frame, threshold, getattr(loaded.thresholds, threshold))
        curve = report.kept_hours_curve(loaded.frame, loaded.thresholds, threshold, grid)
        steps = np.diff(curve)
        assert (steps >= -1e-12).all() if increasing else (steps <= 1e-12).all()


def test_removal_audit_adds_up(run):
    loaded = report.load_run(run)
    frame = loaded.frame
    votes = report.verdicts(frame, loaded.thresholds)
    audit = report.removal_audit(frame, votes)
    removed = report.hours_removed(frame, votes)
    several = report.hours_removed(frame, votes, by_several=True)
    uniques = audit.groupby(level="dataset")["unique"].sum()
    for dataset in removed.index:
        assert uniques[dataset] + several[dataset] == pytest.approx(removed[dataset], rel=1e-9)
        assert several[dataset] > 0
    rows = read_manifest(run / "manifest").to_pylist()
    for rule in RULES:
        if (rule.name, "hdtf") not in audit.index:
            continue
        both = audit.loc[(rule.name, "hdtf")]
        expected = sum(r["duration_s"] for r in rows
                       if r["dataset"] == "hdtf" and rule.reason in r["reject_reasons"]) / 3600
        assert both["unique"] + both["shared"] == pytest.approx(expected, rel=1e-9, abs=1e-12), rule.name
    not_kept = frame["hours"][~frame["keep"].to_numpy(dtype=bool)].groupby(frame["dataset"]).sum()
    assert (removed <= not_kept + 1e-12).all()  # pending clips are not kept but no rule removed them


def test_nothing_kept_one_dataset_no_sync(tiny_manifest, tmp_path):
    run = synthetic_run(tiny_manifest, tmp_path / "run", clips=12, datasets=("only",),
                        overrides={"thresholds.face_res_px_min": 5000})
    rows = read_manifest(run / "manifest")
    table = rows.set_column(rows.schema.get_field_index("sync_c"), "sync_c", [[None] * rows.num_rows])
    write_part(table, run / "manifest", 0)
    page = report.build_report(run, tmp_path / "out", thumbnails=1)
    cells = page_cells(page)
    assert page == tmp_path / "out" / "index.html"
    assert dataset_cell(cells, "only", "hours_kept") == 0.0
    assert np.isnan(dataset_cell(cells, "only", "mean_sync_c"))
    assert cells[(("data-threshold", "face_res_px_min"), "hours_at")] == 0.0
    assert len(list((tmp_path / "out").glob("thumb-*.png"))) <= 2


def test_empty_run(tmp_path):
    (tmp_path / "run" / "manifest").mkdir(parents=True)
    page = report.build_report(tmp_path / "run")
    assert "0 clips" in page.read_text()
    write_part(to_table([], {}), tmp_path / "run2" / "manifest", 0)
    assert "No clips." in report.build_report(tmp_path / "run2").read_text()


def test_thresholds_come_from_the_run(run, tmp_path):
    assert report.load_run(run).thresholds == Thresholds()
    (tmp_path / "manifest").mkdir()
    (tmp_path / "config.yaml").write_text("thresholds: {face_res_px_min: 400}\n")
    assert report.load_run(tmp_path).thresholds.face_res_px_min == 400


def test_cli(run, tmp_path, capsys):
    from flows.cli import main

    assert main(["report", str(run), "--output", str(tmp_path / "page")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "page" / "index.html")
    assert main(["report", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no manifest") and err.count("\n") == 1
