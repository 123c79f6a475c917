"""MegActor-Σ inference: a reference portrait animated by a driving video, an audio track, or both, with the
paper's Amplitude Adjustment (visual motion factor α, audio scale), each constant or a per-frame curve.

The pipeline receives its components (model, VAE, audio encoder, scheduler, face analyser), diffusers style;
``from_pretrained`` builds them from a training output's inference export (``training.export``: the EMA
weights as safetensors). One ``__call__``, in numbered steps.

Modes (the training's modalities, ``training.data.MODALITIES``):

- ``visual``: eyes and mouth driven by the video, the audio branch off;
- ``audio``: no driving pixels, the mouth (and everything else) from the audio;
- ``mixed``: eyes from the video, mouth from the audio; mouth tokens may not attend to the driving region
  (the training's face-dropout mask).

Sampling follows the authors' released inference: the first latent is the reference's latent noised to the first
timestep; classifier-free guidance drops the driving frames and the audio together (the unconditional branch keeps
only the reference, as the training's ``data.uncond_prob`` samples do); long videos go through overlapping temporal windows (``window`` frames, half of them
overlapping) whose noise predictions are averaged at every step, so any length is generated without a seam and
nothing is cut to a window multiple. Deterministic samplers (DDIM, DPM-Solver++) read the noise prediction; the
learned variance PixArt-α trains is not used by them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from curation import media
from curation.encode import AudioSpan, VideoWriter
from curation.errors import ConfigError, DecodeError
from inference import amplitude
from inference.driving import (
    Driving,
    FaceAnalyzer,
    Reference,
    driving_inputs,
    driving_warps,
    frame_count,
    prepare_driving,
    prepare_reference,
)
from training.components import VAE_SCALE

log = logging.getLogger(__name__)

MODES: dict[str, dict[str, bool]] = {
    "visual": {"eyes": True, "mouth": True, "audio": False},
    "audio": {"eyes": False, "mouth": False, "audio": True},
    "mixed": {"eyes": True, "mouth": False, "audio": True},
}
SCHEDULERS = ("ddim", "dpm++")
DECODE_BATCH = 8


def make_scheduler(name: str):
    """A sampler on the training's noise schedule (1,000 linear betas, PixArt-α's), its timesteps spaced to end
    at the last one ("trailing"), so the first step starts from (nearly) pure noise."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    common = {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02,
              "prediction_type": "epsilon", "timestep_spacing": "trailing"}
    if name == "ddim":
        return DDIMScheduler(clip_sample=False, set_alpha_to_one=False, **common)
    if name == "dpm++":
        return DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2, **common)
    raise ConfigError(f"scheduler must be one of {SCHEDULERS}, got {name!r}")


@dataclass
class Animation:
    frames: np.ndarray  # (F, R, R, 3) uint8 RGB
    fps: float
    audio: AudioSpan | None
    seconds: float  # generation time, preparation included
    settings: dict[str, Any] = field(default_factory=dict)
    output: Path | None = None

    @property
    def seconds_per_frame(self) -> float:
        return self.seconds / max(len(self.frames), 1)


class AnimationPipeline:
    def __init__(self, model, vae, audio_encoder, scheduler, face: FaceAnalyzer | None, *, resolution: int,
                 fps: float, crop_scale: float, mask_dilation: float, device: str | torch.device = "cpu",
                 info: dict[str, Any] | None = None):
        self.model, self.vae, self.audio_encoder, self.scheduler, self.face = model, vae, audio_encoder, scheduler, face
        self.resolution, self.fps, self.crop_scale, self.mask_dilation = resolution, fps, crop_scale, mask_dilation
        self.device = torch.device(device)
        self.info = info or {}

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: str = "cpu", scheduler: str = "ddim",
                        vae_dir: str | Path | None = None, whisper_dir: str | Path | None = None,
                        face: FaceAnalyzer | None = None) -> AnimationPipeline:
        """From a training output (a run's root, a stage's output, or its ``final/``): the EMA weights of the
        inference export, and the VAE and Whisper folders it was trained with (or the ones given here)."""
        from training import components
        from training.config import validate
        from training.export import load_model

        model, meta = load_model(path)
        train = dict(meta["train_config"])
        train["model"] = {**train["model"],
                          "vae_dir": str(vae_dir) if vae_dir else meta.get("vae_dir"),
                          "whisper_dir": str(whisper_dir) if whisper_dir else meta.get("whisper_dir")}
        for key in ("vae_dir", "whisper_dir"):
            folder = train["model"][key]
            if folder is not None and not Path(folder).is_dir():
                flag = "--" + key.replace("_", "-")
                raise ConfigError(f"the model was trained with {key} {folder}, which is not here: pass {flag} "
                                  f"(see `megactor weights list`)")
        config = validate(train, origin=f"{meta['folder']}/model.json")
        target = torch.device(device)
        vae = components.build_vae(config, target)
        audio = components.build_audio_encoder(config, target) if model.config.use_audio else None
        data = meta["data"]
        return cls(model.to(target), vae, audio, make_scheduler(scheduler), face or FaceAnalyzer(),
                   resolution=data["resolution"], fps=data["fps"], crop_scale=data["crop_scale"],
                   mask_dilation=data["mask_dilation"], device=target,
                   info={"checkpoint": meta["folder"], "stage": meta["stage"], "step": meta["step"],
                         "weights": meta["weights"], "weights_sha256": meta["weights_sha256"]})

    @torch.no_grad()
    def __call__(self, reference: np.ndarray | str | Path | Reference, driving: str | Path | Driving | None = None,
                 audio: str | Path | AudioSpan | None = None, *, mode: str = "mixed",
                 visual_alpha: float | str | Path | np.ndarray = 1.0,
                 audio_scale: float | str | Path | np.ndarray = 1.0, steps: int = 25, guidance: float = 2.0,
                 seed: int = 0, window: int = 16, align: bool = True, grayscale: bool = False,
                 output: str | Path | None = None,
                 progress: Callable[[int, int], None] | None = None) -> Animation:
        started = time.perf_counter()
        flags = self._check(mode, driving, audio, steps, guidance, window)

        # 1. the reference: its face crop, as training crops a clip
        if not isinstance(reference, Reference):
            image = reference if isinstance(reference, np.ndarray) else _read_image(reference)
            reference = prepare_reference(image, self._face(), resolution=self.resolution,
                                          crop_scale=self.crop_scale, source=str(reference)
                                          if not isinstance(reference, np.ndarray) else "reference image")

        # 2. the audio, and the length of the video (the audio's duration, else the driving video's)
        span, waveform = self._audio(audio)
        driven_modes = flags["eyes"] or flags["mouth"]
        if not driven_modes:  # audio mode: a driving video given anyway is not read
            driving = None
        if driving is not None and not isinstance(driving, Driving):
            max_frames = None if span is None else frame_count(span.duration_s, None, self.fps)
            video = self._face().video(driving, self.fps, max_frames=max_frames)
            driving = prepare_driving(video, resolution=self.resolution, crop_scale=self.crop_scale,
                                      mask_dilation=self.mask_dilation)
        frames = frame_count(None if span is None else span.duration_s,
                             None if driving is None else len(driving), self.fps)
        alphas = _curve(visual_alpha, frames, self.fps, "visual_alpha")
        scales = _curve(audio_scale, frames, self.fps, "audio_scale")

        # 3. the driving frames: amplitude-adjusted, aligned to the reference, only the driven regions kept
        res = self.resolution
        if driven_modes:
            driving = driving.extended(frames)
            warps = driving_warps(driving, reference, alphas, align)
            pixels, driven, mouth = driving_inputs(driving, warps, drive_eyes=flags["eyes"],
                                                   drive_mouth=flags["mouth"], grayscale=grayscale)
        else:
            pixels = np.zeros((frames, res, res, 3), dtype=np.uint8)
            driven = mouth = np.zeros((frames, res, res), dtype=np.float32)

        # 4. Whisper tokens for each frame's audio window
        tokens = None
        if flags["audio"]:
            if self.audio_encoder is None:
                raise ConfigError(f"mode {mode!r} needs the audio branch, which this model (stage "
                                  f"{self.info.get('stage', '?')}) was not trained with: use mode 'visual'")
            tokens = self.audio_encoder(torch.from_numpy(waveform)[None].to(self.device), num_frames=frames,
                                        fps=self.fps)  # (1, F, T, D)

        # 5. denoise, over overlapping temporal windows
        latents = self._denoise(reference, pixels, driven, mouth, tokens, scales, flags, steps=steps,
                                guidance=guidance, seed=seed, window=window, progress=progress)

        # 6. decode
        video = self._decode(latents)

        # 7. write: H.264 with the audio muxed in, frame k at k / fps
        animation = Animation(video, self.fps, span, 0.0, {
            "mode": mode, "steps": steps, "guidance": guidance, "seed": seed, "window": window, "align": align,
            "visual_alpha": _describe(visual_alpha), "audio_scale": _describe(audio_scale), **self.info})
        if output is not None:
            animation.output = write_video(output, video, self.fps, span)
        animation.seconds = time.perf_counter() - started
        log.info("%d frames in %.1f s: %.2f s per generated frame", frames, animation.seconds,
                 animation.seconds_per_frame)
        return animation

    def close(self) -> None:
        """Release the face analyser's native resources (MediaPipe); the pipeline reopens it if used again."""
        if self.face is not None:
            self.face.close()

    # -- steps ---------------------------------------------------------------------------------------------
    def _check(self, mode: str, driving, audio, steps: int, guidance: float, window: int) -> dict[str, bool]:
        if mode not in MODES:
            raise ConfigError(f"mode must be one of {sorted(MODES)}, got {mode!r}")
        flags = MODES[mode]
        if (flags["eyes"] or flags["mouth"]) and driving is None:
            raise ConfigError(f"mode {mode!r} needs a driving video")
        if flags["audio"] and audio is None:
            raise ConfigError(f"mode {mode!r} needs an audio track")
        if steps < 1 or guidance < 0 or window < 1:
            raise ConfigError(f"need steps >= 1, guidance >= 0 and window >= 1; got {steps}, {guidance}, {window}")
        return flags

    def _face(self) -> FaceAnalyzer:
        if self.face is None:
            self.face = FaceAnalyzer()
        return self.face

    def _audio(self, audio) -> tuple[AudioSpan | None, np.ndarray | None]:
        if audio is None:
            return None, None
        if not isinstance(audio, AudioSpan):
            probe = media.probe(audio)
            if not probe.has_audio:
                raise DecodeError("no audio stream", path=str(audio))
            audio = AudioSpan(str(audio), 0.0, float(probe.duration_s or 0.0))
        waveform = media.decode_audio(audio.path, start_s=audio.start_s, duration_s=audio.duration_s)
        if len(waveform) == 0:
            raise DecodeError("the audio track is empty", path=audio.path)
        # the decoded length is the truth (a container's duration may include padding)
        return AudioSpan(audio.path, audio.start_s, len(waveform) / 16000.0), waveform

    def _denoise(self, reference: Reference, pixels: np.ndarray, driven: np.ndarray, mouth: np.ndarray,
                 tokens: torch.Tensor | None, scales: np.ndarray, flags: dict[str, bool], *, steps: int,
                 guidance: float, seed: int, window: int, progress) -> torch.Tensor:
        from training.components import token_mask

        device, model = self.device, self.model
        frames = len(pixels)
        generator = torch.Generator(device="cpu").manual_seed(seed)
        ref = torch.from_numpy(reference.image).permute(2, 0, 1)[None].float().div(127.5).sub(1).to(device)
        ref_latent = self.vae.encode(ref).latent_dist.mean * VAE_SCALE  # (1, 4, h, w)
        h, w = ref_latent.shape[-2:]
        p = model.config.patch_size

        driving = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(255.0).to(device)  # (F, 3, R, R)
        key = token_mask(torch.from_numpy(driven)[None, :, None].to(device), (h // p, w // p))[0]  # (F, N)
        query = token_mask(torch.from_numpy(mouth)[None, :, None].to(device), (h // p, w // p))[0]
        if flags["mouth"]:  # as in training: mouth queries are blind to the driving region only when undriven
            query = torch.zeros_like(query)
        scale = torch.from_numpy(np.asarray(scales, dtype=np.float32)).to(device)
        guided = guidance != 1.0

        self.scheduler.set_timesteps(steps, device=device)
        timesteps = self.scheduler.timesteps
        noise = torch.randn((frames, 4, h, w), generator=generator).to(device)
        latents = self.scheduler.add_noise(ref_latent.expand(frames, -1, -1, -1), noise, timesteps[:1])
        spans = windows(frames, min(window, model.config.max_frames), temporal=bool(model.config.temporal_blocks))
        autocast = device.type == "cuda"
        done, total = 0, len(timesteps) * len(spans)
        for t in timesteps:
            eps = torch.zeros_like(latents)
            count = torch.zeros((frames, 1, 1, 1), device=device)
            for start, stop in spans:
                sample = self.scheduler.scale_model_input(latents[start:stop], t)[None]  # (1, n, 4, h, w)
                batch = 2 if guided else 1
                audio = None if tokens is None else tokens[:, start:stop].expand(batch, -1, -1, -1)
                drive = driving[start:stop][None]
                keys, queries = key[start:stop][None], query[start:stop][None]
                if guided:  # the unconditional branch: no driving frames, no audio
                    drive = torch.cat([drive, torch.zeros_like(drive)])
                    keys = torch.cat([keys, torch.zeros_like(keys)])
                    queries = torch.cat([queries, torch.zeros_like(queries)])
                audio_mask = None if tokens is None else torch.tensor([True, False][:batch], device=device)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
                    out = model(sample.expand(batch, -1, -1, -1, -1), t.expand(batch).to(device),
                                ref_latent.expand(batch, -1, -1, -1), drive, audio,
                                mouth_query_mask=queries, driving_key_mask=keys,
                                audio_scale=scale[start:stop][None].expand(batch, -1), audio_mask=audio_mask)
                out = out[:, :, :4].float()  # the noise prediction
                prediction = out[1] + guidance * (out[0] - out[1]) if guided else out[0]  # (n, 4, h, w)
                eps[start:stop] += prediction
                count[start:stop] += 1
                done += 1
                if progress is not None:
                    progress(done, total)
            latents = self.scheduler.step(eps / count, t, latents).prev_sample
        return latents

    def _decode(self, latents: torch.Tensor) -> np.ndarray:
        out = []
        for start in range(0, len(latents), DECODE_BATCH):
            images = self.vae.decode(latents[start:start + DECODE_BATCH] / VAE_SCALE).sample  # (n, 3, R, R)
            out.append(((images.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu())
        return torch.cat(out).numpy()


def windows(frames: int, window: int, *, temporal: bool) -> list[tuple[int, int]]:
    """(start, stop) of the temporal windows covering ``frames``: ``window`` long, each starting half a window
    after the previous one, the last one ending at the last frame. A model without temporal layers treats frames
    independently: its windows do not overlap."""
    if frames <= window:
        return [(0, frames)]
    stride = max(1, window // 2) if temporal else window
    starts = list(range(0, frames - window + 1, stride))
    if starts[-1] + window < frames:
        starts.append(frames - window)
    return [(s, min(s + window, frames)) for s in starts]


def write_video(path: str | Path, frames: np.ndarray, fps: float, audio: AudioSpan | None) -> Path:
    """H.264 mp4, the audio span muxed in (AAC); written atomically."""
    path = Path(path)
    height, width = frames.shape[1:3]
    with VideoWriter(path, width=width, height=height, fps=fps, audio=audio) as out:
        for frame in frames:
            out.write(frame)
    return path


def _curve(value, frames: int, fps: float, name: str) -> np.ndarray:
    if isinstance(value, np.ndarray):
        if value.shape != (frames,):
            raise ConfigError(f"{name}: a per-frame curve needs {frames} values, got shape {value.shape}")
        return value.astype(np.float64)
    try:
        return amplitude.load_curve(value, frames, fps)
    except ValueError as error:
        raise ConfigError(f"{name}: {error}") from None


def _describe(value) -> Any:
    if isinstance(value, np.ndarray):
        return f"curve of {len(value)} values, mean {float(value.mean()):.3f}"
    return str(value) if isinstance(value, Path) else value


def _read_image(path: str | Path) -> np.ndarray:
    import cv2

    if not Path(path).is_file():
        raise DecodeError("no such image file", path=str(path))
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:  # not an image cv2 reads: try a video's first frame
        probe = media.probe(path)
        for _, rgb in media.iter_frames(path, probe, duration_s=1.0):
            return rgb
        raise DecodeError("cannot read an image from this file", path=str(path))
    return np.ascontiguousarray(image[:, :, ::-1])
