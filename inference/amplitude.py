"""Visual amplitude adjustment (MegActor-Sigma, "Visual amplitude at inference").

The released code has no visual amplitude, so this follows the paper's description: per driving frame i, fit the
similarity M_i taking frame 0's facial landmarks to frame i's, scale its rotation angle by α, its scale by s^α and
its translation by α, and warp frame i back to frame 0's pose (M_i^-1) before applying the scaled transform. α = 1
reproduces the driving head motion, α = 0 freezes the head at frame 0's pose, α > 1 exaggerates it; α may vary
per frame.

Geometry conventions: points are (x, y) in pixel coordinates with pixel centres at integer positions (OpenCV's
convention, so ``cv2.warpAffine`` and :func:`transform_points` agree); an affine is a 2x3 float64 matrix applied as
``p' = A p + b``. Pure numpy + OpenCV, no torch, so the CLI can validate and preview amplitudes cheaply.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

# An identity warp closer than this (in matrix entries) is treated as exact, so α = 1 never resamples a frame.
_IDENTITY_ATOL = 1e-9
_IDENTITY = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


# --- affine helpers ----------------------------------------------------------------------------------------------


def _as_affine(m: np.ndarray, name: str) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    if m.shape[-2:] != (2, 3):
        raise ValueError(f"{name} must be a 2x3 affine (or a stack of them), got shape {m.shape}")
    return m


def compose(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a ∘ b``: apply ``b`` first, then ``a``. Broadcasts over leading axes so per-frame stacks compose at once."""
    a = _as_affine(a, "a")
    b = _as_affine(b, "b")
    linear = a[..., :, :2] @ b[..., :, :2]
    translation = (a[..., :, :2] @ b[..., :, 2:3])[..., 0] + a[..., :, 2]
    return np.concatenate([linear, translation[..., None]], axis=-1)


def invert(m: np.ndarray) -> np.ndarray:
    """Inverse affine; raises rather than returning infinities, since a singular warp would blank the frame."""
    m = _as_affine(m, "m")
    linear = m[..., :, :2]
    det = np.linalg.det(linear)
    if not np.all(np.isfinite(det)) or np.any(np.abs(det) < 1e-12):
        raise ValueError(f"cannot invert a singular or non-finite affine (determinant {det})")
    inverse_linear = np.linalg.inv(linear)
    translation = -(inverse_linear @ m[..., :, 2:3])[..., 0]
    return np.concatenate([inverse_linear, translation[..., None]], axis=-1)


def transform_points(points: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine to points of shape (..., 2), with the same pixel convention as ``cv2.warpAffine``."""
    points = np.asarray(points, dtype=np.float64)
    if points.shape[-1] != 2:
        raise ValueError(f"points must have shape (..., 2), got {points.shape}")
    m = _as_affine(m, "m")
    if m.ndim != 2:
        raise ValueError(f"transform_points takes a single 2x3 affine, got shape {m.shape}")
    return points @ m[:, :2].T + m[:, 2]


# --- similarity fit and decomposition ----------------------------------------------------------------------------


def fit_similarity(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation; never a reflection) mapping src onto dst.

    This is Umeyama's solution specialised to 2-D: with points as complex numbers centred on their (weighted)
    means, the optimal ``s·e^{iθ}`` is ``Σ w conj(x) y / Σ w |x|²``. Working in the complex plane rules out
    reflections by construction, which is what we want for head pose: a mirrored landmark set must not flip the
    face. Degenerate input raises because a zero or undefined scale would make the inverse warp meaningless.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.ndim != 2 or src.shape[1] != 2 or src.shape != dst.shape:
        raise ValueError(f"src and dst must both have shape (N, 2); got {src.shape} and {dst.shape}")
    if len(src) < 2:
        raise ValueError(f"a similarity needs at least 2 point pairs, got {len(src)}")
    if not (np.all(np.isfinite(src)) and np.all(np.isfinite(dst))):
        raise ValueError("src and dst must be finite (NaN or inf landmarks found)")
    if weights is None:
        w = np.ones(len(src))
    else:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (len(src),):
            raise ValueError(f"weights must have shape ({len(src)},), got {w.shape}")
        if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
            raise ValueError("weights must be finite, non-negative and not all zero")
    w = w / w.sum()

    zs = src[:, 0] + 1j * src[:, 1]
    zd = dst[:, 0] + 1j * dst[:, 1]
    mean_s = np.sum(w * zs)
    mean_d = np.sum(w * zd)
    xs = zs - mean_s
    xd = zd - mean_d
    spread_s = float(np.sum(w * np.abs(xs) ** 2))
    spread_d = float(np.sum(w * np.abs(xd) ** 2))
    if spread_s <= 1e-12 * max(1.0, abs(mean_s) ** 2) or spread_d <= 1e-12 * max(1.0, abs(mean_d) ** 2):
        raise ValueError("degenerate landmarks: all (weighted) points coincide in src or dst")
    k = np.sum(w * np.conj(xs) * xd) / spread_s
    if abs(k) <= 1e-12 * math.sqrt(spread_d / spread_s):
        raise ValueError("degenerate fit: no rotation and scale relates src to dst (zero cross-covariance)")
    t = mean_d - k * mean_s
    return np.array([[k.real, -k.imag, t.real], [k.imag, k.real, t.imag]])


@dataclass(frozen=True)
class Similarity:
    """A similarity decomposed about a centre: ``p' = scale · R(angle) · (p − centre) + centre + (tx, ty)``.

    Rotation and scale act about ``centre`` (frame 0's landmark centroid), not the image origin, so that scaling
    the angle by α turns the head in place instead of swinging the face around the top-left corner; the
    translation is therefore the displacement of the face centre, which is what should scale linearly with α.
    """

    scale: float
    angle: float  # radians, in (−π, π]
    tx: float
    ty: float
    centre: tuple[float, float]

    def matrix(self) -> np.ndarray:
        c, s = math.cos(self.angle), math.sin(self.angle)
        linear = self.scale * np.array([[c, -s], [s, c]])
        centre = np.asarray(self.centre, dtype=np.float64)
        translation = centre + np.array([self.tx, self.ty]) - linear @ centre
        return np.concatenate([linear, translation[:, None]], axis=1)

    @classmethod
    def from_matrix(cls, m: np.ndarray, centre: tuple[float, float] | np.ndarray) -> Similarity:
        """Decompose a 2x3 similarity about ``centre``; a general affine is projected onto its closest similarity
        (the rotation-scale part of its linear map), since only similarities have an angle and a scale to scale."""
        m = _as_affine(m, "m")
        if m.ndim != 2:
            raise ValueError(f"from_matrix takes a single 2x3 affine, got shape {m.shape}")
        a = 0.5 * (m[0, 0] + m[1, 1])
        b = 0.5 * (m[1, 0] - m[0, 1])
        scale = math.hypot(a, b)
        if not math.isfinite(scale) or scale <= 1e-12:
            raise ValueError(f"matrix has no similarity part (scale {scale}): {m.tolist()}")
        angle = math.atan2(b, a)
        centre_arr = np.asarray(centre, dtype=np.float64).reshape(2)
        linear = np.array([[a, -b], [b, a]])
        translation = m[:, 2] + linear @ centre_arr - centre_arr
        return cls(
            scale=scale,
            angle=angle,
            tx=float(translation[0]),
            ty=float(translation[1]),
            centre=(float(centre_arr[0]), float(centre_arr[1])),
        )


def scale_similarity(sim: Similarity, alpha: float) -> Similarity:
    """Amplitude α of a head motion: ``s^α``, ``α·θ`` and ``α·t`` about the same centre.

    The scale is raised to a power (not multiplied) so that α interpolates zoom geometrically: α = 0 gives scale 1,
    and α = 2 doubles the zoom in log space, symmetric for zooming in and out.
    """
    return Similarity(
        scale=sim.scale**alpha,
        angle=alpha * sim.angle,
        tx=alpha * sim.tx,
        ty=alpha * sim.ty,
        centre=sim.centre,
    )


# --- per-frame warps ---------------------------------------------------------------------------------------------


def _alpha_per_frame(alpha: float | np.ndarray, frames: int) -> np.ndarray:
    alphas = np.asarray(alpha, dtype=np.float64)
    if alphas.ndim == 0:
        alphas = np.full(frames, float(alphas))
    if alphas.shape != (frames,):
        raise ValueError(f"alpha must be a scalar or have shape ({frames},), got {alphas.shape}")
    if not np.all(np.isfinite(alphas)):
        raise ValueError("alpha must be finite")
    return alphas


def amplitude_warps(
    landmarks: np.ndarray, alpha: float | np.ndarray, valid: np.ndarray | None = None
) -> np.ndarray:
    """Per-frame affine warps ``W_i = S_i(α_i) ∘ M_i^-1`` that change the head-motion amplitude of a driving video.

    ``M_i`` is the similarity fitted from the anchor frame's landmarks to frame i's and ``S_i(α)`` its α-scaled
    version about the anchor's landmark centroid (see :class:`Similarity`). ``W_i`` maps frame i's pixels to
    output pixels and can be passed straight to :func:`warp_frames`.

    The anchor is frame 0, or the first frame with landmarks when frame 0 has none (a missed detection on the
    first frame should not abort a long clip). A frame is usable when ``valid`` (if given) is true and all its
    landmarks are finite; the others reuse the motion ``M`` of the nearest usable frame (the earlier one on a tie)
    with their own α, so a dropped detection holds the pose rather than snapping the head back to frame 0.
    Where α_i == 1 the warp is set to the exact identity so the frame is passed through unresampled.
    """
    points = np.asarray(landmarks, dtype=np.float64)
    if points.ndim != 3 or points.shape[2] != 2 or points.shape[0] < 1:
        raise ValueError(f"landmarks must have shape (frames, points, 2), got {points.shape}")
    frames = points.shape[0]
    alphas = _alpha_per_frame(alpha, frames)
    usable = np.all(np.isfinite(points), axis=(1, 2))
    if valid is not None:
        valid = np.asarray(valid, dtype=bool)
        if valid.shape != (frames,):
            raise ValueError(f"valid must have shape ({frames},), got {valid.shape}")
        usable &= valid
    usable_idx = np.flatnonzero(usable)
    if len(usable_idx) == 0:
        raise ValueError("no frame has landmarks: cannot anchor the amplitude adjustment")
    anchor = points[usable_idx[0]]
    centre = anchor.mean(axis=0)

    motions: dict[int, np.ndarray] = {}
    for i in usable_idx:
        try:
            motions[int(i)] = fit_similarity(anchor, points[i])
        except ValueError as error:
            raise ValueError(f"frame {i}: {error}") from error

    # Nearest usable frame per frame (the earlier one on a tie), in O(F log V) rather than an F x V table.
    index = np.arange(frames)
    after = np.clip(np.searchsorted(usable_idx, index), 0, len(usable_idx) - 1)
    before = np.clip(after - 1, 0, len(usable_idx) - 1)
    earlier_is_nearer = np.abs(index - usable_idx[before]) <= np.abs(usable_idx[after] - index)
    source = np.where(earlier_is_nearer, usable_idx[before], usable_idx[after])

    warps = np.empty((frames, 2, 3))
    for i in range(frames):
        if alphas[i] == 1.0:
            warps[i] = _IDENTITY
            continue
        motion = motions[int(source[i])]
        scaled = scale_similarity(Similarity.from_matrix(motion, centre), float(alphas[i])).matrix()
        warps[i] = compose(scaled, invert(motion))
    return warps


def _is_identity(warp: np.ndarray) -> bool:
    return bool(np.allclose(warp, _IDENTITY, rtol=0.0, atol=_IDENTITY_ATOL))


def warp_frames(
    frames: np.ndarray,
    warps: np.ndarray,
    *,
    border_value: float | tuple[float, ...] = 0,
    interpolation: int = cv2.INTER_LINEAR,
) -> np.ndarray:
    """Apply one affine per frame with ``cv2.warpAffine`` (forward map: frame pixel -> output pixel).

    Identity warps copy the frame instead of resampling, so α = 1 leaves the driving video bit-identical (a
    bilinear resample at integer positions is not guaranteed to be, and would still cost time on long clips).
    """
    frames = np.asarray(frames)
    if frames.ndim not in (3, 4):
        raise ValueError(f"frames must have shape (F, H, W) or (F, H, W, C), got {frames.shape}")
    if frames.dtype not in (np.uint8, np.float32):
        raise ValueError(f"frames must be uint8 or float32, got {frames.dtype}")
    warps = _as_affine(warps, "warps")
    if warps.shape != (len(frames), 2, 3):
        raise ValueError(f"warps must have shape ({len(frames)}, 2, 3), got {warps.shape}")
    height, width = frames.shape[1:3]
    if np.isscalar(border_value):
        border = (float(border_value),) * 4
    else:
        border = tuple(float(v) for v in border_value)
    out = np.empty_like(frames)
    for i, (frame, warp) in enumerate(zip(frames, warps, strict=True)):
        if _is_identity(warp):
            out[i] = frame
            continue
        warped = cv2.warpAffine(
            frame,
            warp,
            (width, height),
            flags=interpolation,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=border,
        )
        out[i] = warped.reshape(frame.shape)  # OpenCV drops a trailing single channel
    return out


# --- amplitude curves --------------------------------------------------------------------------------------------


def _check_values(values: np.ndarray, where: str) -> np.ndarray:
    if values.size == 0:
        raise ValueError(f"{where}: no values")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{where}: values must be finite (found NaN or inf)")
    if np.any(values < 0):
        raise ValueError(f"{where}: amplitude must be non-negative, found {float(values.min())}")
    return values


def _interpolate(times: np.ndarray, values: np.ndarray, frames: int, fps: float, where: str) -> np.ndarray:
    if times.shape != values.shape:
        raise ValueError(f"{where}: 't' has {times.size} entries but 'value' has {values.size}")
    if not np.all(np.isfinite(times)):
        raise ValueError(f"{where}: times must be finite")
    _check_values(values, where)
    if np.any(np.diff(times) <= 0):
        raise ValueError(f"{where}: times must be strictly increasing")
    # np.interp holds the end values outside the keyed range, which is what a short curve should do.
    return np.interp(np.arange(frames) / fps, times, values)


def _per_frame(values: np.ndarray, frames: int, where: str) -> np.ndarray:
    _check_values(values, where)
    if values.size != frames:
        raise ValueError(
            f"{where}: {values.size} per-frame values for {frames} frames; give one per frame or a 't,value' curve"
        )
    return values


def _parse_number(text: str, where: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{where}: not a number: {text!r}") from None


def _load_text(path: Path, text: str, frames: int, fps: float) -> np.ndarray:
    lines = [
        (number, line.strip())
        for number, line in enumerate(text.splitlines(), start=1)
        if line.strip() and not line.strip().startswith("#")
    ]
    if not lines:
        raise ValueError(f"{path}: empty amplitude curve")
    header = [cell.strip().lower() for cell in lines[0][1].split(",")]
    if header == ["t", "value"]:
        times, values = [], []
        for number, line in lines[1:]:
            cells = line.split(",")
            if len(cells) != 2:
                raise ValueError(f"{path}:{number}: expected 't,value', got {line!r}")
            times.append(_parse_number(cells[0], f"{path}:{number}"))
            values.append(_parse_number(cells[1], f"{path}:{number}"))
        return _interpolate(np.array(times), np.array(values), frames, fps, str(path))
    values = []
    for number, line in lines:
        if "," in line:
            raise ValueError(
                f"{path}:{number}: expected one value per line (or a 't,value' header for a timed curve), got {line!r}"
            )
        values.append(_parse_number(line, f"{path}:{number}"))
    return _per_frame(np.array(values), frames, str(path))


def _load_json(path: Path, text: str, frames: int, fps: float) -> np.ndarray:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: invalid JSON ({error})") from None

    def numbers(items: object, key: str) -> np.ndarray:
        if not isinstance(items, list) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in items
        ):
            raise ValueError(f"{path}: {key} must be a list of numbers")
        return np.array(items, dtype=np.float64)

    if isinstance(data, list):
        return _per_frame(numbers(data, "the curve"), frames, str(path))
    if isinstance(data, dict) and set(data) == {"t", "value"}:
        return _interpolate(
            numbers(data["t"], "'t'"), numbers(data["value"], "'value'"), frames, fps, str(path)
        )
    raise ValueError(
        f'{path}: expected a list of per-frame values or an object {{"t": [...], "value": [...]}}'
    )


def load_curve(value: float | str | Path, frames: int, fps: float) -> np.ndarray:
    """Per-frame amplitude α from a constant or a curve file, validated here so bad input is a CLI error.

    Files: ``.txt``/``.csv`` with one value per frame per line, or a ``t,value`` header followed by rows keyed in
    seconds; ``.json`` with a list of per-frame values or ``{"t": [...], "value": [...]}``. Timed curves are
    linearly interpolated at frame times ``i / fps`` and held at their end values; blank lines and ``#`` comments
    are ignored in text files. A string that parses as a number is a constant (the CLI passes strings).
    """
    if frames < 1:
        raise ValueError(f"frames must be at least 1, got {frames}")
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be positive, got {fps}")
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _check_values(np.full(frames, float(value)), "amplitude")
    if isinstance(value, str):
        try:
            constant = float(value)
        except ValueError:
            pass
        else:
            return _check_values(np.full(frames, constant), "amplitude")
    if not isinstance(value, str | Path):
        raise ValueError(f"amplitude must be a number or a path to a curve file, got {type(value).__name__}")
    path = Path(value)
    suffix = path.suffix.lower()
    if suffix not in (".txt", ".csv", ".json"):
        raise ValueError(f"{path}: amplitude curve must be a .txt, .csv or .json file (or a number)")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: cannot read amplitude curve ({error})") from None
    if suffix == ".json":
        return _load_json(path, text, frames, fps)
    return _load_text(path, text, frames, fps)
