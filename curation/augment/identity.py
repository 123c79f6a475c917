"""The identity pool the face swap draws from, and the pairing of clips with identities.

Pool: by default one frame of every kept clip (the most frontal sampled frame whose face is large enough, from the
manifest's stored face track: no re-scoring), so a run needs no extra input; or the face images of a folder
(``folder/<speaker>/*.jpg``, or ``folder/<speaker>.jpg``: one speaker per sub-folder or per file). Every candidate
becomes a row of the identities table: its ArcFace embedding, or why it cannot serve (no face, unreadable image,
no frontal frame in the clip), so a bad image costs its own row and nothing else.

Pairing: a clip's identity comes from a *different* speaker (``speaker_id``, else the source's ``video_id``), drawn
uniformly among the usable identities of the other speakers, in identity-id order, by a generator seeded with
(seed, clip_id, variant index) only: the same on every rerun and whatever the number of workers."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation import media
from curation.augment.config import IdentityConfig
from curation.augment.variants import identity_id

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def speaker_of(row: dict[str, Any]) -> str:
    """Who speaks in a clip: the dataset's speaker id, else the source file's content id."""
    return str(row.get("speaker_id") or row.get("video_id") or row["source_path"])


def clip_candidate(row: dict[str, Any], config: IdentityConfig) -> dict[str, Any]:
    """The identity candidate a kept clip offers: its most frontal sampled frame with a face at least
    ``min_face_px`` wide and at most ``max_yaw_deg`` turned (an error row when it has none)."""
    base = {"speaker": speaker_of(row), "origin": "clip_frame", "source_path": row["source_path"],
            "clip_id": row["clip_id"]}
    points = [p for p in row.get("face_track") or []
              if p.get("box") is not None and p["box"][2] - p["box"][0] >= config.min_face_px
              and (p.get("yaw") is None or abs(p["yaw"]) <= config.max_yaw_deg)]
    if not points:
        return {**base, "identity_id": identity_id(f"{row['clip_id']}:none"), "status": "error",
                "error_reason": "no_frontal_frame",
                "error": f"no sampled frame with a face >= {config.min_face_px:g} px and |yaw| <= "
                         f"{config.max_yaw_deg:g} deg"}
    best = min(points, key=lambda p: (abs(p["yaw"]) if p.get("yaw") is not None else 90.0, -p["box"][2]))
    return {**base, "identity_id": identity_id(row["source_path"], best["t"]), "t_s": float(best["t"]),
            "status": "ok"}


def folder_candidates(folder: Path) -> list[dict[str, Any]]:
    """One candidate per image file under ``folder``: the speaker is the first-level sub-folder, or the file's
    name for images directly in ``folder``."""
    rows = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
        relative = path.relative_to(folder)
        speaker = relative.parts[0] if len(relative.parts) > 1 else path.stem
        rows.append({"identity_id": identity_id(str(path.resolve())), "speaker": speaker, "origin": "image",
                     "source_path": str(path.resolve()), "status": "ok"})
    return rows


def load_image(path: str) -> np.ndarray:
    """An RGB uint8 image; ValueError when the file cannot be read as one."""
    data = np.fromfile(path, dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise ValueError(f"{path}: not a readable image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def candidate_frame(candidate: dict[str, Any], probe: media.ProbeResult | None = None) -> np.ndarray:
    """The RGB picture a candidate's face is in: the image, or the clip's frame at ``t_s``."""
    if candidate["origin"] == "image":
        return load_image(candidate["source_path"])
    path = candidate["source_path"]
    probe = probe or media.probe(path)
    rate = media.default_fps(probe)
    for _, frame in media.iter_frames(path, probe, start_s=candidate["t_s"], duration_s=1.0 / rate, fps=rate):
        return frame
    raise ValueError(f"{path}: no frame at {candidate['t_s']:.3f} s")


def _draw(seed: int, clip_id: str, index: int, count: int) -> int:
    digest = int.from_bytes(hashlib.sha256(clip_id.encode()).digest()[:8], "little")
    return int(np.random.default_rng([seed, digest, index]).integers(0, count))


@dataclass(frozen=True)
class Pool:
    """The usable identities of a run, in identity-id order (the order pairing draws in), as arrays: a pool of
    100,000 identities is a 200 MB embedding matrix, not 51 million Python floats."""

    ids: np.ndarray  # (N,) str
    speakers: np.ndarray  # (N,) str
    sources: np.ndarray  # (N,) str
    embeddings: np.ndarray  # (N, D) float32, L2-normalised

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def from_table(cls, table: pa.Table) -> Pool:
        """The ``status == "ok"`` rows of an identities table."""
        table = table.filter(pc.and_(pc.equal(table["status"], "ok"), pc.is_valid(table["embedding"])))
        table = table.take(pc.sort_indices(table, [("identity_id", "ascending")]))
        embeddings = np.asarray(table["embedding"].combine_chunks().flatten(), dtype=np.float32)
        width = embeddings.size // max(len(table), 1)
        return cls(ids=np.asarray(table["identity_id"].to_pylist(), dtype=object),
                   speakers=np.asarray(table["speaker"].to_pylist(), dtype=object),
                   sources=np.asarray(table["source_path"].to_pylist(), dtype=object),
                   embeddings=embeddings.reshape(len(table), width))

    @classmethod
    def from_rows(cls, rows: Sequence[dict[str, Any]]) -> Pool:
        from curation.augment.variants import IDENTITIES_SCHEMA

        names = IDENTITIES_SCHEMA.names
        return cls.from_table(pa.Table.from_pylist([{k: r.get(k) for k in names} for r in rows],
                                                   schema=IDENTITIES_SCHEMA))


def pair(pool: Pool, clip_speaker: str, clip_id: str, seed: int,
         index: int) -> tuple[dict[str, Any] | None, str | None]:
    """The identity for variant ``index`` of a clip: ({identity_id, speaker, source_path, embedding}, None), or
    (None, reason) when the pool holds no usable identity of another speaker."""
    if not len(pool):
        return None, "identity_pool_empty"
    others = np.flatnonzero(pool.speakers != clip_speaker)
    if not len(others):
        return None, "no_other_speaker"
    k = others[_draw(seed, clip_id, index, len(others))]
    return {"identity_id": pool.ids[k], "speaker": pool.speakers[k], "source_path": pool.sources[k],
            "embedding": pool.embeddings[k]}, None
