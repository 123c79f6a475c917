"""The augmentation run's summary (``summary.json``) and card (``README.md``), computed from what is on disk (the
variants and identities parts, the shards' done markers), so a resumed run reports the whole run."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from curation.augment.config import AugmentConfig
from curation.augment.pipeline import LICENCE_NOTE, AugmentLayout
from curation.augment.variants import (
    IDENTITY_DOCS,
    IDENTITY_FIELDS,
    SCHEMA_VERSION,
    VARIANT_DOCS,
    VARIANT_FIELDS,
    read_identities,
    read_variants,
)
from curation.io import write_json_atomic, write_text_atomic
from curation.manifest import scores_dir
from curation.summary import markdown_cell


def _done(layout: AugmentLayout, phase: str) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((layout.state / phase).glob("shard-*.json"))]


def build_summary(layout: AugmentLayout, config: AugmentConfig, provenance: dict[str, Any], *, clips: int,
                  shards_planned: int, identity_shards_planned: int) -> dict[str, Any]:
    variants = read_variants(layout.variants).to_pylist()
    identities = read_identities(layout.identities).to_pylist()
    done = _done(layout, "variants")
    counters: Counter = Counter()
    for marker in done:
        counters.update(marker["counters"])
    kinds = {}
    for kind in config.kinds:
        rows = [r for r in variants if r["kind"] == kind]
        usable = [r for r in rows if r["usable"]]
        kinds[kind] = {
            "variants": len(rows), "status": dict(sorted(Counter(r["status"] for r in rows).items())),
            "clips_with_usable": len({r["clip_id"] for r in usable}),
            "hours_usable": round(sum(r["duration_s"] or 0 for r in usable) / 3600, 4),
            "reasons": dict(sorted(Counter(x for r in rows for x in r["reject_reasons"]).items())),
        }
    wall = sum(m["wall_s"] for m in done)
    return {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "output": str(layout.root),
        "source_manifest": provenance["source_manifest"],
        "kept_clips": clips,
        "shards": {"planned": shards_planned, "done": len(done)},
        "identity_shards": {"planned": identity_shards_planned, "done": len(_done(layout, "identities"))},
        "variants": len(variants),
        "status": dict(sorted(Counter(r["status"] for r in variants).items())),
        "kinds": kinds,
        "identities": {"candidates": len(identities),
                       "status": dict(sorted(Counter(r["error_reason"] or "ok" for r in identities).items())),
                       "speakers": len({r["speaker"] for r in identities if r["status"] == "ok"})},
        "counters": dict(sorted(counters.items())),
        "shard_wall_s": round(wall, 3),
        "frames_per_wall_s": round(counters["frames"] / wall, 3) if wall else None,
        "provenance": provenance,
    }


def write_summary(layout: AugmentLayout, summary: dict[str, Any]) -> None:
    write_json_atomic(summary, layout.root / "summary.json")


def _clips_recipe(source_manifest: str) -> list[str]:
    """The card's pandas lines that load the source clips: a ``megactor filter`` output holds only decisions,
    joined onto the scores it points at."""
    scores = scores_dir(source_manifest)
    if scores == Path(source_manifest).resolve():
        return [f'clips = pd.read_parquet("{source_manifest}")']
    return [f'decisions = pd.read_parquet("{source_manifest}")  # a `megactor filter` output: decisions only',
            f'clips = pd.read_parquet("{scores}").drop(columns=["keep", "status", "reject_reasons", '
            '"unscored_rules"]).merge(decisions, on="clip_id")']


def card(summary: dict[str, Any]) -> str:
    prov = summary["provenance"]
    lines = [
        "# Augmented driving variants",
        "",
        "Face-swapped and stylized renderings of the kept clips of a curated talking-head manifest, made by",
        "megactor-pipeline (MegActor-Sigma, arXiv 2408.14975): the driving frames of a training sample show another",
        "identity, or a stylized face, with the same motion, so the model cannot copy the driving identity.",
        f"Source manifest: `{summary['source_manifest']}`.",
        "",
        "```python",
        "import pandas as pd",
        'variants = pd.read_parquet("variants")            # this directory\'s variants/ folder',
        'usable = variants[variants["usable"]]              # status == "ok"',
        *_clips_recipe(summary["source_manifest"]),
        'train = clips[clips["keep"]].merge(usable, on="clip_id", suffixes=("", "_variant"))',
        "```",
        "",
        "```sql",
        "SELECT kind, status, count(*) FROM 'variants/*.parquet' GROUP BY ALL;  -- duckdb",
        "```",
        "",
        "Each variant video covers exactly its clip's span: frame k is the clip's frame k at the same frame rate,",
        "whole frames with only the face region changed, the clip's audio muxed in (H.264 + AAC in mp4).",
        "`megactor train --manifest` on this directory trains on the curated clips with these variants as",
        "driving frames (the 50/40/10 real/face-swap/stylized mix).",
        "",
        "## Contents",
        "",
        f"{summary['kept_clips']} kept clips, {summary['variants']} variants: "
        + ", ".join(f"{k} {v}" for k, v in summary["status"].items()),
        "",
        "| kind | variants | ok / rejected / error | clips with a usable variant | hours usable | reasons |",
        "|---|---|---|---|---|---|",
    ]
    for kind, d in summary["kinds"].items():
        status = " / ".join(str(d["status"].get(s, 0)) for s in ("ok", "rejected", "error"))
        reasons = ", ".join(f"`{k}` {v}" for k, v in d["reasons"].items()) or "none"
        lines.append(f"| {kind} | {d['variants']} | {status} | {d['clips_with_usable']} | {d['hours_usable']:.3f} "
                     f"| {reasons} |")
    ids = summary["identities"]
    lines += ["", f"Identity pool: {ids['candidates']} candidates from {ids['speakers']} speakers; "
              + ", ".join(f"{k} {v}" for k, v in ids["status"].items()), ""]
    lines += ["## Columns", "", f"Schema {SCHEMA_VERSION}. `variants/`:", "", "| column | type | meaning |",
              "|---|---|---|"]
    lines += [f"| `{name}` | {kind} | {markdown_cell(VARIANT_DOCS[name])} |" for name, kind, _, _ in VARIANT_FIELDS]
    lines += ["", "`identities/`:", "", "| column | type | meaning |", "|---|---|---|"]
    lines += [f"| `{name}` | {kind} | {markdown_cell(IDENTITY_DOCS[name])} |" for name, kind, _, _ in IDENTITY_FIELDS]
    lines += ["", "## Provenance", "",
              f"- code {prov['code_version']}, config hash {prov['config_hash']} (making {prov['making_hash']}); "
              "config in `config.yaml`",
              f"- seed {prov['seed']}; every choice of a variant (identity, prompt, noise) derives from "
              "(seed, clip_id, kind, index)",
              "- makers: " + ", ".join(prov["makers"])]
    lines += [f"- model `{name}` sha256 `{sha}`" for name, sha in sorted(prov["models"].items())]
    if prov["prompts"]:
        lines += ["- prompts:"] + [f"  - {p}" for p in prov["prompts"]]
    lines += ["", "## Licence", "", LICENCE_NOTE,
              "The variants are derived from the source videos and keep their datasets' terms as well (HDTF, ",
              "CelebV-HQ, VoxCeleb2, TalkingHead-1KH and MultiTalk are research-only).", ""]
    return "\n".join(lines)


def write_card(layout: AugmentLayout, summary: dict[str, Any]) -> None:
    write_text_atomic(card(summary), layout.root / "README.md")
