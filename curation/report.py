"""The dataset report: ``RUN/report/index.html``, one self-contained page in the layout of the paper's Table 2
(hours in and kept per dataset), with PNG figures beside it, computed from the run's manifest.

Every decision is re-derived here from the stored scores, vectorised over the columns, with the same rules as
``curation.filters`` (a test checks both agree clip by clip). That is what lets the page show what moving a
threshold would cost (hours kept versus each threshold, the other rules held at theirs) and which rule removes
what (hours only that rule removes, and hours it shares with others) without re-scoring anything."""

from __future__ import annotations

import html
import json
from collections.abc import Callable
from dataclasses import dataclass
from operator import ge, gt, le
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.image import imsave
from pydantic import ValidationError

from curation import manifest
from curation.config import Thresholds
from curation.errors import ConfigError, MediaError, MegactorError
from curation.filters import RULES, Rule
from curation.io import part_files, write_text_atomic

# The cascade's stages in the order the runner applies them (curation.pipeline.build_scorers), and the rules
# each one decides; the metadata gate's rules are those marked metadata_only.
STAGES = ("metadata gate", "audio activity", "face", "lip sync")
STAGE_OF_RULE = {rule.name: "metadata gate" for rule in RULES if rule.metadata_only} | {
    "speech": "audio activity", "sync_confidence": "lip sync", "sync_distance": "lip sync",
} | {name: "face" for name in ("face_found", "face_presence", "single_face", "face_resolution", "head_yaw")}

# The threshold rules as (compared column, comparison, threshold name or constant), from curation.filters.RULES
# (frame_size compares frame_min_side, which frame_from_table derives); the others are boolean flags.
Comparison = tuple[str, Callable[[Any, Any], Any], str | float]
COMPARISONS: dict[str, Comparison] = {r.name: (r.value, r.compare, r.limit) for r in RULES if r.compare}
FLAGS = {r.name: r.inputs[0] for r in RULES if r.compare is None}

# The measures the page shows as histograms, per-dataset means and kept-versus-threshold curves.
MEASURES = (
    ("face_res_px", "effective face resolution (px)", "face_res_px_min"),
    ("yaw_abs_mean_deg", "mean |yaw| (degrees)", "yaw_abs_mean_deg_max"),
    ("sync_c", "Sync-C", "sync_c_min"),
    ("sync_d", "Sync-D", "sync_d_max"),
)
EXTRA_SWEEPS = ("face_present_frac_min", "multi_face_frac_max", "speech_frac_min", "clip_s_min")
FLOAT_COLUMNS = ("duration_s", "source_duration_s", "width", "height", "face_present_frac", "multi_face_frac",
                 "face_res_px", "yaw_abs_mean_deg", "audio_speech_frac", "sync_c", "sync_d")
COLUMNS = ("clip_id", "dataset", "source_path", "start_s", "keep", "status", "error", "has_video",
           "has_audio") + FLOAT_COLUMNS
# What a thumbnail needs besides COLUMNS (curation.crops.probe_from_row); the face tracks are never read.
PROBE_COLUMNS = ("fps", "fps_nominal", "vfr", "rotation", "video_codec", "audio_codec", "audio_sample_rate")
THUMBNAILS_PER_KIND = 6


# -- loading -------------------------------------------------------------------------------------------------

@dataclass
class Run:
    root: Path
    frame: pd.DataFrame  # one row per clip: COLUMNS, floats as float64 with NaN for null, plus frame_min_side
    reasons: pa.ListArray  # the stored reject_reasons
    table: pa.Table  # the columns read (for the thumbnails' rows)
    thresholds: Thresholds
    thresholds_from: str
    summary: dict[str, Any] | None


def locate(run_dir: str | Path) -> tuple[Path, Path]:
    """``(run root, manifest directory)`` from a run's output directory or its manifest directory."""
    path = Path(run_dir)
    if (path / "manifest").is_dir():
        return path, path / "manifest"
    if path.is_dir() and part_files(path):  # a manifest directory, scores or a refilter's decisions
        return path.parent, path
    raise MegactorError(f"no manifest in {path} (expected {path / 'manifest'} or Parquet part files)")


def read_columns(manifest_dir: Path) -> pa.Table:
    """The manifest's columns the report reads, with the schema's types, through ``manifest.read_manifest``
    (a ``megactor filter`` output: its scores with its decisions)."""
    return manifest.read_manifest(manifest_dir, columns=list(COLUMNS + PROBE_COLUMNS) + ["reject_reasons"])


def frame_from_table(table: pa.Table) -> pd.DataFrame:
    frame = table.select(list(COLUMNS)).to_pandas()
    for column in FLOAT_COLUMNS:
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(np.float64)
    for column in ("has_video", "has_audio", "keep"):
        frame[column] = frame[column].astype("boolean")
    frame["frame_min_side"] = np.minimum(frame["width"].to_numpy(), frame["height"].to_numpy())
    frame["hours"] = frame["duration_s"].to_numpy() / 3600
    return frame


def run_thresholds(root: Path, manifest_dir: Path, summary: dict[str, Any] | None) -> tuple[Thresholds, str]:
    """The thresholds the manifest's decisions were made with: a re-filtered manifest's provenance, else the
    run's config.yaml, else summary.json, else the defaults."""
    try:
        return _run_thresholds(root, manifest_dir, summary)
    except ValidationError as error:
        raise ConfigError(f"invalid thresholds for {root}: {error.errors()[0]['loc']}: "
                          f"{error.errors()[0]['msg']}") from error


def _run_thresholds(root: Path, manifest_dir: Path, summary: dict[str, Any] | None) -> tuple[Thresholds, str]:
    parts = part_files(manifest_dir)
    provenance = manifest.read_provenance(parts[0]) if parts else {}
    if provenance.get("thresholds"):
        return Thresholds(**provenance["thresholds"]), "manifest provenance (megactor filter)"
    config = root / "config.yaml"
    if config.is_file():
        return Thresholds(**(yaml.safe_load(config.read_text()) or {}).get("thresholds", {})), str(config)
    if summary and summary.get("thresholds"):
        return Thresholds(**summary["thresholds"]), str(root / "summary.json")
    return Thresholds(), "defaults (no config.yaml or summary.json found)"


def load_run(run_dir: str | Path) -> Run:
    root, manifest_dir = locate(run_dir)
    table = read_columns(manifest_dir)
    summary_path = root / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    thresholds, source = run_thresholds(root, manifest_dir, summary)
    reasons = table.column("reject_reasons").combine_chunks()
    return Run(root, frame_from_table(table), reasons, table, thresholds, source, summary)


# -- decisions, vectorised -----------------------------------------------------------------------------------

@dataclass
class Verdicts:
    """Per applicable rule, over all clips: ``ok`` (scored and passed) and ``failed`` (scored and failed)."""

    ok: dict[str, np.ndarray]
    failed: dict[str, np.ndarray]
    error: np.ndarray

    def kept(self, without: tuple[str, ...] = ()) -> np.ndarray:
        keep = ~self.error
        for name, ok in self.ok.items():
            if name not in without:
                keep = keep & ok
        return keep


def applicable_rules(thresholds: Thresholds) -> list[Rule]:
    return [rule for rule in RULES if rule.applies(thresholds)]


def verdicts(frame: pd.DataFrame, thresholds: Thresholds) -> Verdicts:
    ok: dict[str, np.ndarray] = {}
    failed: dict[str, np.ndarray] = {}
    for rule in applicable_rules(thresholds):
        if rule.compare is None:
            flag = frame[FLAGS[rule.name]]
            scored, passed = flag.notna().to_numpy(), flag.fillna(False).to_numpy(dtype=bool)
        else:
            values = frame[rule.value].to_numpy()
            scored = ~np.isnan(values)
            passed = rule.compare(values, rule.bound(thresholds))
        ok[rule.name], failed[rule.name] = scored & passed, scored & ~passed
    error = frame["error"].fillna("").astype(str).str.len().to_numpy() > 0
    return Verdicts(ok, failed, error)


# -- the numbers ---------------------------------------------------------------------------------------------

def per_dataset(frame: pd.DataFrame) -> pd.DataFrame:
    """The paper's Table 2 layout; hours in are the sources' durations, as summary.json counts them."""
    sources = frame.drop_duplicates(["dataset", "source_path"]).groupby("dataset")["source_duration_s"]
    groups = frame.groupby("dataset")
    kept = frame["keep"].fillna(False).to_numpy(dtype=bool)
    table = pd.DataFrame({
        "sources": sources.size(),
        "hours_in": sources.sum(min_count=0) / 3600,
        "clips": groups.size(),
        "clips_kept": groups["keep"].sum(),
        "hours_kept": frame.assign(h=frame["hours"] * kept).groupby("dataset")["h"].sum(),
    })
    hours_in = table["hours_in"].where(table["hours_in"] > 0)
    table["kept_pct_hours"] = (100 * table["hours_kept"] / hours_in).fillna(0.0)
    return table.sort_index()


def measure_means(frame: pd.DataFrame) -> pd.DataFrame:
    columns = [m[0] for m in MEASURES] + ["audio_speech_frac"]
    return frame.groupby("dataset")[columns].mean().sort_index()


def reject_reasons(reasons: pa.ListArray, hours: np.ndarray) -> pd.DataFrame:
    flat = pc.list_flatten(reasons).to_numpy(zero_copy_only=False)
    parents = pc.list_parent_indices(reasons).to_numpy()
    stage = {rule.reason: STAGE_OF_RULE[rule.name] for rule in RULES}
    table = pd.DataFrame({"reason": flat, "hours": hours[parents]}).groupby("reason")["hours"]
    table = table.agg(["size", "sum"])
    table = table.rename(columns={"size": "clips", "sum": "hours"})
    table["stage"] = [stage.get(reason, "error") for reason in table.index]
    return table.sort_values(["clips", "hours"], ascending=False)


def funnel(frame: pd.DataFrame, votes: Verdicts) -> list[tuple[str, float]]:
    """Hours surviving each stage of the cascade: source footage, then clip hours no rule of that stage or an
    earlier one rejects, then kept (every rule scored and passed, no error)."""
    hours = frame["hours"].to_numpy()
    in_hours = frame.drop_duplicates("source_path")["source_duration_s"].sum(min_count=0) / 3600
    steps = [("source footage", float(np.nan_to_num(in_hours))), ("clips cut", float(hours.sum()))]
    alive = np.ones(len(frame), dtype=bool)
    for stage in STAGES:
        for name, failed in votes.failed.items():
            if STAGE_OF_RULE[name] == stage:
                alive &= ~failed
        steps.append((f"after {stage}", float(hours[alive].sum())))
    steps.append(("kept", float(hours[frame["keep"].fillna(False).to_numpy(dtype=bool)].sum())))
    return steps


def removal_audit(frame: pd.DataFrame, votes: Verdicts) -> pd.DataFrame:
    """Per rule (and errors) and dataset: hours only that rule removes (``unique``) and hours it removes with
    at least one other rule (``shared``). Per dataset, the uniques plus the hours removed by two or more
    rules add up to the hours removed."""
    failed = dict(votes.failed) | {"error": votes.error}
    matrix = np.column_stack(list(failed.values())) if failed else np.zeros((len(frame), 0), dtype=bool)
    n_failed = matrix.sum(axis=1)
    codes, datasets = pd.factorize(frame["dataset"], sort=True)
    hours = frame["hours"].to_numpy()
    blocks = []
    for name, column in failed.items():
        sums = {kind: np.bincount(codes, weights=hours * mask, minlength=len(datasets))
                for kind, mask in (("unique", column & (n_failed == 1)), ("shared", column & (n_failed > 1)))}
        index = pd.MultiIndex.from_product([[name], list(datasets)], names=["rule", "dataset"])
        blocks.append(pd.DataFrame(sums, index=index))
    return pd.concat(blocks)


def hours_removed(frame: pd.DataFrame, votes: Verdicts, *, by_several: bool = False) -> pd.Series:
    """Hours per dataset that any rule (or an error) removes; ``by_several``: that two or more remove."""
    failed = list(votes.failed.values()) + [votes.error]
    count = np.sum(failed, axis=0)
    mask = count > 1 if by_several else count > 0
    return frame.assign(h=frame["hours"] * mask).groupby("dataset")["h"].sum()


# -- kept versus threshold -----------------------------------------------------------------------------------

def swept_rules(threshold: str) -> tuple[str, ...]:
    return tuple(name for name, c in COMPARISONS.items() if c[2] == threshold)


def kept_hours_curve(frame: pd.DataFrame, thresholds: Thresholds, threshold: str,
                     grid: np.ndarray) -> np.ndarray:
    """Hours kept if ``threshold`` took each value of ``grid``, every other rule at its configured threshold.
    Clips a rule could not score (the cascade stopped first) are never kept, so where a threshold is loosened
    the curve is a lower bound unless the run scored everything (``--score-all``)."""
    votes = verdicts(frame, thresholds)
    rules = tuple(name for name in swept_rules(threshold) if name in votes.ok)
    if not rules:
        raise ValueError(f"no applicable rule reads threshold {threshold}")
    others = votes.kept(without=rules)
    values = np.full(len(frame), np.inf)
    compare = COMPARISONS[rules[0]][1]
    for name in rules:  # same comparison for all of them: the clip's tightest value decides
        values = np.minimum(values, frame[COMPARISONS[name][0]].to_numpy())
    return _hours_passing(values[others], frame["hours"].to_numpy()[others], compare, np.asarray(grid, float))


def _hours_passing(values: np.ndarray, hours: np.ndarray, compare, grid: np.ndarray) -> np.ndarray:
    """For each grid value g, the hours of clips with ``compare(value, g)``: one sort, one cumulative sum."""
    scored = ~np.isnan(values)
    order = np.argsort(values[scored], kind="stable")
    ordered = values[scored][order]
    cumulative = np.concatenate([[0.0], np.cumsum(hours[scored][order])])
    if compare in (ge, gt):
        side = "left" if compare is ge else "right"
        return cumulative[-1] - cumulative[np.searchsorted(ordered, grid, side=side)]
    return cumulative[np.searchsorted(ordered, grid, side="right" if compare is le else "left")]


def sweep_grid(frame: pd.DataFrame, threshold: str, at: float, points: int = 200) -> np.ndarray:
    values = np.concatenate([frame[COMPARISONS[name][0]].to_numpy() for name in swept_rules(threshold)])
    values = values[np.isfinite(values)]
    low, high = (min(values.min(), at), max(values.max(), at)) if len(values) else (at - 1, at + 1)
    if high == low:
        low, high = low - 1, high + 1
    return np.unique(np.append(np.linspace(low, high, points), at))


# -- figures -------------------------------------------------------------------------------------------------

def _figure(width: float, height: float):
    """An Agg figure of its own (no pyplot state: safe in threads, nothing to close)."""
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig, fig.subplots()


def _save(fig: Figure, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return path.name


def histogram_figure(frame: pd.DataFrame, column: str, label: str, at: float, path: Path) -> str:
    fig, ax = _figure(4.6, 3.0)
    values = frame[column].to_numpy()
    scored = ~np.isnan(values)
    if scored.any():
        kept = frame["keep"].fillna(False).to_numpy(dtype=bool)
        bins = np.histogram_bin_edges(values[scored], bins=30)
        hours = frame["hours"].to_numpy()
        ax.hist(values[scored], bins=bins, weights=hours[scored], color="#bbb", label="scored")
        ax.hist(values[scored & kept], bins=bins, weights=hours[scored & kept], color="#2a7", label="kept")
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "not scored in this run", ha="center", va="center", transform=ax.transAxes)
    ax.axvline(at, color="#c22", linestyle="--", linewidth=1.2)
    ax.set_xlabel(f"{label} (threshold {at:g})", fontsize=8)
    ax.set_ylabel("hours", fontsize=8)
    return _save(fig, path)


def curve_figure(grid: np.ndarray, hours: np.ndarray, threshold: str, at: float, path: Path) -> str:
    fig, ax = _figure(4.6, 3.0)
    ax.plot(grid, hours, color="#25a")
    ax.axvline(at, color="#c22", linestyle="--", linewidth=1.2)
    ax.set_xlabel(f"{threshold} (configured {at:g})", fontsize=8)
    ax.set_ylabel("hours kept", fontsize=8)
    return _save(fig, path)


def funnel_figure(steps: list[tuple[str, float]], path: Path) -> str:
    fig, ax = _figure(6.5, 2.8)
    ax.barh([s[0] for s in steps][::-1], [s[1] for s in steps][::-1], color="#25a")
    ax.set_xlabel("hours", fontsize=8)
    ax.tick_params(labelsize=8)
    return _save(fig, path)


def audit_figure(audit: pd.DataFrame, path: Path) -> str:
    totals = audit.groupby(level="rule", sort=False)[["unique", "shared"]].sum()
    fig, ax = _figure(6.5, 0.4 * max(len(totals), 3) + 0.8)
    ax.barh(totals.index, totals["unique"], color="#c22", label="only this rule")
    ax.barh(totals.index, totals["shared"], left=totals["unique"], color="#e99", label="with other rules")
    ax.set_xlabel("hours removed", fontsize=8)
    ax.tick_params(labelsize=8)
    ax.legend(fontsize=7)
    return _save(fig, path)


# -- thumbnails ----------------------------------------------------------------------------------------------

def pick_thumbnails(frame: pd.DataFrame, reasons: pa.ListArray, per_kind: int) -> list[tuple[int, str]]:
    """Row positions and captions: up to ``per_kind`` kept clips, and rejected ones, one per distinct first
    reason before repeating a reason."""
    kept = np.flatnonzero(frame["keep"].fillna(False).to_numpy(dtype=bool))[:per_kind]
    offsets = reasons.offsets.to_numpy()
    rejected = np.flatnonzero(np.diff(offsets) > 0)
    firsts = pc.list_flatten(reasons).to_numpy(zero_copy_only=False)[offsets[rejected] - offsets[0]]
    _, first_of_each = np.unique(firsts, return_index=True)
    distinct = rejected[np.sort(first_of_each)]
    order = np.concatenate([distinct, np.setdiff1d(rejected, distinct)])[:per_kind]
    return [(int(i), "kept") for i in kept] + [(int(i), ", ".join(reasons[int(i)].as_py())) for i in order]


def thumbnail(table: pa.Table, position: int, path: Path) -> str | None:
    """A frame from the middle of the clip, or None when the source cannot be read."""
    from curation.crops import probe_from_row
    from curation.media import iter_frames

    row = table.slice(position, 1).to_pylist()[0]
    try:
        probe = probe_from_row(row)
        middle = row["start_s"] + row["duration_s"] / 2
        frames = iter_frames(row["source_path"], probe, start_s=middle, duration_s=1.0, fps=1, max_side=200,
                             timeout_s=30)
        _, image = next(iter(frames), (None, None))
        frames.close()
    except (MediaError, MegactorError, OSError):
        return None
    if image is None:
        return None
    imsave(path, image)
    return path.name


# -- the page ------------------------------------------------------------------------------------------------

CSS = """body{font-family:sans-serif;max-width:1100px;margin:1em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0 1em}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}.figs img{margin:4px;border:1px solid #eee}
.thumb{display:inline-block;width:210px;margin:4px;vertical-align:top;font-size:12px}
.thumb img{max-width:200px}.note{color:#555;font-size:13px}"""
IMAGES_CHECK = """<script>
window.addEventListener('load', function () {
  var broken = Array.prototype.filter.call(document.images, function (i) {
    return !(i.complete && i.naturalWidth > 0); });
  document.body.setAttribute('data-images-loaded', broken.length ? 'broken: ' + broken.map(function (i) {
    return i.getAttribute('src'); }).join(' ') : 'all');
});
</script>"""


def _num(value: float | None, digits: int = 3) -> str:
    return "–" if value is None or pd.isna(value) else f"{value:.{digits}f}"


def _cell(value: float | None, digits: int, **keys: str) -> str:
    attrs = "".join(f' data-{k}="{html.escape(str(v))}"' for k, v in keys.items())
    raw = "" if value is None or pd.isna(value) else repr(float(value))
    return f'<td{attrs} data-value="{raw}">{_num(value, digits)}</td>'


def _count(value: int, key: str) -> str:
    return f'<td data-key="{key}" data-value="{int(value)}">{int(value)}</td>'


def _table(header: list[str], rows: list[str]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def datasets_html(table: pd.DataFrame) -> str:
    rows = []
    for dataset, r in table.iterrows():
        d = html.escape(str(dataset))
        rows.append(f'<tr data-dataset="{d}"><td>{d}</td><td>{int(r.sources)}</td>'
                    + _cell(r.hours_in, 4, key="hours_in") + _count(r.clips, "clips")
                    + _count(r.clips_kept, "clips_kept") + _cell(r.hours_kept, 4, key="hours_kept")
                    + _cell(r.kept_pct_hours, 1, key="kept_pct_hours")
                    + "</tr>")
    total = table[["hours_in", "hours_kept"]].sum()
    rows.append('<tr data-dataset="*total*"><th>total</th><td></td>'
                + _cell(total.hours_in, 4, key="hours_in")
                + _count(table.clips.sum(), "clips") + _count(table.clips_kept.sum(), "clips_kept")
                + _cell(total.hours_kept, 4, key="hours_kept") + "<td></td></tr>")
    header = ["dataset", "sources", "hours in", "clips", "clips kept", "hours kept", "kept % (hours)"]
    return _table(header, rows)


def reasons_html(table: pd.DataFrame) -> str:
    rows = [f'<tr data-reason="{html.escape(str(reason))}"><td><code>{html.escape(str(reason))}</code></td>'
            f'<td>{html.escape(r.stage)}</td>' + _count(r.clips, "clips") + _cell(r.hours, 4, key="hours")
            + "</tr>" for reason, r in table.iterrows()]
    return _table(["reason", "stage", "clips", "hours"], rows) if rows else "<p>No clip was rejected.</p>"


def means_html(means: pd.DataFrame) -> str:
    rows = [f'<tr data-dataset="{html.escape(str(d))}"><td>{html.escape(str(d))}</td>'
            + "".join(_cell(r[c], 2, key=f"mean_{c}") for c in means.columns) + "</tr>"
            for d, r in means.iterrows()]
    return _table(["dataset", *[f"mean {c}" for c in means.columns]], rows)


def funnel_html(steps: list[tuple[str, float]]) -> str:
    rows = [f'<tr data-step="{html.escape(name)}"><td>{html.escape(name)}</td>' + _cell(h, 4, key="hours")
            + "</tr>" for name, h in steps]
    return _table(["stage", "hours surviving"], rows)


def audit_html(audit: pd.DataFrame) -> str:
    rows = [f'<tr data-rule="{html.escape(rule)}" data-dataset="{html.escape(str(d))}">'
            f"<td>{html.escape(rule)}</td><td>{html.escape(str(d))}</td>"
            + _cell(r["unique"], 4, key="unique") + _cell(r["shared"], 4, key="shared")
            + "</tr>" for (rule, d), r in audit.iterrows()]
    return _table(["rule", "dataset", "hours only this rule removes", "hours removed with other rules"], rows)


def curves_html(curves: list[dict[str, Any]]) -> str:
    rows = [f'<tr data-threshold="{c["threshold"]}"><td><code>{c["threshold"]}</code></td>'
            f'<td>{c["at"]:g}</td>'
            + _cell(c["hours_at"], 4, key="hours_at") + _cell(c["hours_max"], 4, key="hours_max") + "</tr>"
            for c in curves]
    return _table(["threshold", "configured", "hours kept there", "most hours kept on the curve"], rows)


def thumbs_html(thumbs: list[tuple[str | None, str, str]]) -> str:
    cells = []
    for image, caption, clip in thumbs:
        picture = (f'<img src="{image}" alt="{html.escape(clip)}">' if image
                   else "<p>(source not readable)</p>")
        cells.append(f'<div class="thumb">{picture}<br>{html.escape(caption)}<br><small>{html.escape(clip)}'
                     "</small></div>")
    return "".join(cells) or "<p>No clips.</p>"


def _figs(names: list[str]) -> str:
    return '<div class="figs">' + "".join(f'<img src="{n}" alt="{n}">' for n in names) + "</div>"


# -- building ------------------------------------------------------------------------------------------------

def build_report(run_dir: str | Path, output: str | Path | None = None, *,
                 thumbnails: int = THUMBNAILS_PER_KIND) -> Path:
    """Write the report page and its figures; returns the page's path (default ``RUN/report/index.html``)."""
    run = load_run(run_dir)
    out = Path(output) if output else run.root / "report"
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.png"):
        stale.unlink()
    frame, t = run.frame, run.thresholds
    votes = verdicts(frame, t)
    steps = funnel(frame, votes)
    audit = removal_audit(frame, votes)
    hists = [histogram_figure(frame, column, label, getattr(t, threshold), out / f"hist-{column}.png")
             for column, label, threshold in MEASURES]
    curves, curve_figs = _curves(frame, t, out)
    body = [
        f"<h1>Dataset report: {html.escape(str(run.root))}</h1>",
        _intro(run, frame),
        "<h2>Hours per dataset</h2>", datasets_html(per_dataset(frame)),
        "<h2>The cascade: hours surviving each stage</h2>", funnel_html(steps),
        _figs([funnel_figure(steps, out / "funnel.png")]),
        "<h2>Measures and thresholds</h2>",
        '<p class="note">Hours of clips by score (grey: scored, green: kept); red dashes: the threshold.</p>',
        _figs(hists),
        "<h2>Per-dataset means</h2>", means_html(measure_means(frame)),
        "<h2>Reject reasons</h2>", reasons_html(reject_reasons(run.reasons, frame["hours"].to_numpy())),
        "<h2>Hours kept versus threshold</h2>", _curve_note(), curves_html(curves), _figs(curve_figs),
        "<h2>What each rule removes</h2>", _audit_note(),
        _figs([audit_figure(_removing(audit), out / "audit.png")]),
        audit_html(_removing(audit)), _idle_rules(audit),
        "<h2>Clips</h2>", thumbs_html(_thumbnails(run, thumbnails, out)),
    ]
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>megactor report</title><style>{CSS}"
            f"</style></head><body>{''.join(body)}{IMAGES_CHECK}</body></html>\n")
    return write_text_atomic(page, out / "index.html")


def _curves(frame: pd.DataFrame, t: Thresholds, out: Path) -> tuple[list[dict[str, Any]], list[str]]:
    applicable = {rule.name for rule in applicable_rules(t)}
    curves, figs = [], []
    for threshold in [m[2] for m in MEASURES] + list(EXTRA_SWEEPS):
        if not set(swept_rules(threshold)) & applicable:
            continue
        at = float(getattr(t, threshold))
        grid = sweep_grid(frame, threshold, at)
        hours = kept_hours_curve(frame, t, threshold, grid)
        curves.append({"threshold": threshold, "at": at, "hours_at": float(hours[np.searchsorted(grid, at)]),
                       "hours_max": float(hours.max())})
        figs.append(curve_figure(grid, hours, threshold, at, out / f"curve-{threshold}.png"))
    return curves, figs


def _thumbnails(run: Run, per_kind: int, out: Path) -> list[tuple[str | None, str, str]]:
    picks = pick_thumbnails(run.frame, run.reasons, per_kind)
    return [(thumbnail(run.table, i, out / f"thumb-{n:02d}.png"), caption, str(run.frame["clip_id"].iloc[i]))
            for n, (i, caption) in enumerate(picks)]


def _intro(run: Run, frame: pd.DataFrame) -> str:
    status = frame["status"].value_counts().sort_index()
    created = (run.summary or {}).get("created_at", "no summary.json")
    thresholds = ", ".join(f"<code>{k}</code> {v}" for k, v in run.thresholds.model_dump().items())
    return (f"<p>{len(frame)} clips; status: " + (", ".join(f"{k} {v}" for k, v in status.items()) or "none")
            + f". Summary: {html.escape(str(created))}.</p><p class='note'>Thresholds (from "
            f"{html.escape(run.thresholds_from)}): {thresholds}</p>")


def _curve_note() -> str:
    return ("<p class='note'>Hours that would be kept if one threshold moved, every other rule at its "
            "configured threshold, from the stored scores. Clips the cascade stopped before a stage have "
            "no scores for it and are never counted, so loosened thresholds show a lower bound (exact for "
            "runs with --score-all).</p>")


def _rule_totals(audit: pd.DataFrame) -> pd.Series:
    return audit.groupby(level="rule", sort=False)[["unique", "shared"]].sum().sum(axis=1)


def _removing(audit: pd.DataFrame) -> pd.DataFrame:
    """The audit's rows for rules that removed something somewhere."""
    totals = _rule_totals(audit)
    return audit[audit.index.get_level_values("rule").isin(totals.index[totals > 0])]


def _idle_rules(audit: pd.DataFrame) -> str:
    idle = [str(rule) for rule, hours in _rule_totals(audit).items() if hours == 0]
    return f"<p class='note'>Rules that removed nothing: {html.escape(', '.join(idle))}.</p>" if idle else ""


def _audit_note() -> str:
    return ("<p class='note'>Per rule and dataset: hours only that rule rejects (removing the rule "
            "would keep them, all else equal) and hours it rejects together with at least one other rule. "
            "Under the cascade a clip is scored only until its first failing stage, so sharing is across "
            "rules of that stage.</p>")
