"""The run summary (``summary.json``) and the dataset card (``README.md``), both computed from what is on
disk (the manifest parts and the shards' done markers), so a resumed run reports the whole run."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from curation import manifest
from curation.config import CurationConfig
from curation.io import write_json_atomic, write_text_atomic
from curation.pipeline import OutputLayout


def _counters(layout: OutputLayout) -> tuple[Counter, dict[str, Counter], float]:
    totals: Counter = Counter()
    scorers: dict[str, Counter] = {}
    wall = 0.0
    for marker in sorted((layout.state / "shards").glob("shard-*.json")):
        done = json.loads(marker.read_text())
        totals.update(done["counters"])
        wall += done["wall_s"]
        for name, values in done["scorers"].items():
            scorers.setdefault(name, Counter()).update(values)
    return totals, scorers, wall


def _per_dataset(df: pd.DataFrame) -> list[dict[str, Any]]:
    rows = []
    for dataset, group in df.groupby("dataset", sort=True):
        sources = group.drop_duplicates("source_path")
        kept = group[group["keep"]]
        hours_in = float(sources["source_duration_s"].fillna(0).sum() / 3600)
        hours_kept = float(kept["duration_s"].sum() / 3600)
        rows.append({
            "dataset": dataset,
            "sources": int(len(sources)),
            "clips": int(len(group)),
            "hours_in": round(hours_in, 4),
            "clips_kept": int(len(kept)),
            "hours_kept": round(hours_kept, 4),
            "kept_pct_hours": round(100 * hours_kept / hours_in, 2) if hours_in else 0.0,
            "status": {k: int(v) for k, v in group["status"].value_counts().sort_index().items()},
            "mean_face_res_px": _mean(group["face_res_px"]),
            "mean_yaw_abs_deg": _mean(group["yaw_abs_mean_deg"]),
        })
    return rows


def _mean(series: pd.Series) -> float | None:
    value = series.dropna().mean()
    return None if pd.isna(value) else round(float(value), 2)


def build_summary(layout: OutputLayout, config: CurationConfig, provenance: dict[str, Any],
                  shards_planned: int) -> dict[str, Any]:
    df = manifest.read_manifest(layout.manifest).to_pandas()
    totals, scorers, wall = _counters(layout)
    reasons = Counter(reason for reasons in df["reject_reasons"] for reason in reasons)
    scoring_wall = sum(c.get("wall_s", 0.0) for c in scorers.values())
    return {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "output": str(layout.root),
        "shards": {"planned": shards_planned, "done": len(list((layout.state / "shards").glob("*.json")))},
        "clips": int(len(df)),
        "sources": int(df["source_path"].nunique()) if len(df) else 0,
        "status": {k: int(v) for k, v in df["status"].value_counts().sort_index().items()},
        "reject_reasons": dict(sorted(reasons.items())),
        "unscored_rules": dict(sorted(Counter(r for rs in df["unscored_rules"] for r in rs).items())),
        "datasets": _per_dataset(df) if len(df) else [],
        "counters": dict(sorted(totals.items())),
        "scorers": {name: dict(sorted(values.items())) for name, values in scorers.items()},
        "shard_wall_s": round(wall, 3),
        "scoring_realtime_factor": round(totals["video_s_scored"] / scoring_wall, 3) if scoring_wall else None,
        "thresholds": config.thresholds.model_dump(),
        "provenance": provenance,
    }


def write_summary(layout: OutputLayout, summary: dict[str, Any]) -> None:
    write_json_atomic(summary, layout.root / "summary.json")


def markdown_cell(text: str) -> str:
    """``text`` safe inside a Markdown table cell (a pipe would end the cell)."""
    return text.replace("|", "\\|")


def dataset_card(summary: dict[str, Any]) -> str:
    lines = [
        "# Curated talking-head manifest",
        "",
        "Produced by megactor-pipeline, the MegActor-Sigma (arXiv 2408.14975) public-data curation. One row per",
        "clip (a time span of a source video, not re-encoded). Load it without our code:",
        "",
        "```python",
        "import pandas as pd",
        'df = pd.read_parquet("manifest")          # this directory\'s manifest/ folder',
        'train = df[df["keep"]]',
        "```",
        "",
        "```sql",
        "SELECT dataset, count(*) FROM 'manifest/*.parquet' WHERE keep GROUP BY dataset;  -- duckdb",
        "```",
        "",
        "## Filter",
        "",
        "| rule | threshold |",
        "|---|---|",
    ]
    lines += [f"| `{k}` | {v} |" for k, v in summary["thresholds"].items()]
    lines += [
        "",
        "A clip is `kept` when every rule was scored and passed; `pending` when nothing failed but a rule could",
        "not be scored (e.g. Sync-C/Sync-D before the SyncNet scorer runs); `rejected` lists every failed rule in",
        "`reject_reasons`; `error` carries the message in `error`.",
        "",
        "Effective face resolution (`face_res_px`): per sampled frame, min(width, height) of the tight box around",
        "the face landmarks, in source pixels (the side of the largest square inside the face); per clip, the",
        "median. Head yaw (`yaw_abs_mean_deg`): mean absolute yaw over frames with a face, from the face model's",
        "head-pose matrix.",
        "",
        "## Contents",
        "",
        "| dataset | sources | hours in | clips | clips kept | hours kept | kept % (hours) |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {d['dataset']} | {d['sources']} | {d['hours_in']:.3f} | {d['clips']} | {d['clips_kept']} | "
        f"{d['hours_kept']:.3f} | {d['kept_pct_hours']:.1f} |"
        for d in summary["datasets"]
    ]
    lines += ["", "Status: " + ", ".join(f"{k} {v}" for k, v in summary["status"].items()), "",
              "Reject reasons: " + (", ".join(f"`{k}` {v}" for k, v in summary["reject_reasons"].items()) or "none"),
              "", "## Columns", "", "| column | type | meaning |", "|---|---|---|"]
    lines += [f"| `{f.name}` | {f.type} | {markdown_cell(manifest.COLUMN_DOCS[f.name])} |" for f in manifest.SCHEMA]
    prov = summary["provenance"]
    lines += ["", "## Provenance", "",
              f"- schema {prov['schema_version']}, code {prov['code_version']}, profile `{prov['profile']}`",
              f"- config hash {prov['config_hash']} (scoring {prov['scoring_hash']}); config in `config.yaml`",
              "- scorers: " + ", ".join(prov["scorers"] + [prov["gate"]])]
    lines += [f"- model `{name}` sha256 `{sha}`" for name, sha in sorted(prov["models"].items())]
    lines += ["", "## Licence", "",
              "The manifest holds scores and paths, not media. The videos keep their datasets' own licences and terms",
              "(HDTF, CelebV-HQ, VoxCeleb2, TalkingHead-1KH and MultiTalk are research-only); check them before use.",
              ""]
    return "\n".join(lines)


def write_card(layout: OutputLayout, summary: dict[str, Any]) -> None:
    write_text_atomic(dataset_card(summary), layout.root / "README.md")
