"""Where raw video comes from: one adapter per public dataset, each listing its files with the ids its
published layout encodes (speaker, origin YouTube video, split, language, clip index).

An adapter never drops a file without counting it: video files whose names do not match the dataset's
layout are still listed (ids ``None``) and counted in ``unparsed``; non-video files are counted by extension
in ``ignored`` (directories that could not be listed, or that a symlink leads back to, under
``"<unlistable-dir>"`` and ``"<repeated-dir>"``); hidden entries (dot-names) are counted in ``hidden``. The counters describe the last
completed ``iter_files()`` pass.

Listing order is deterministic: a depth-first walk with each directory's entries sorted by name, i.e. relpaths
sorted component by component (``"a/x.mp4"`` before ``"a-b/x.mp4"``). It streams, so a million-file dataset
is never held in memory by the lister.

Several download scripts keep the uncut source videos next to the clips (HDTF ``_videos_raw/``, CelebV-HQ
``raw/``, MultiTalk ``raw_video/``, TalkingHead-1KH ``raw_videos/`` and ``1min_clips/``). Those files are listed
like any other, with ``extra["stage"]`` saying what they are (``clip``, ``raw`` or ``chunk``), so hours are
not double counted by accident downstream.

Entries that must not be read are listed, not skipped, with ``SourceFile.refused`` saying why, so the
inventory turns them into error rows without opening them: ``not_a_file`` (a directory, named pipe, socket or
device whose name has a video extension; a directory named so is still walked into) and
``outside_data_root`` (a symlink that leaves the data root, by the policy below).

Symlink policy. Links are followed where they lead (datasets are often linked in from other disks, and a
curated subset is naturally a folder of links), except:

- a link whose target is *relative* and that resolves outside the tree being walked is refused: a relative
  target that climbs out with ``..`` is what a crafted archive ("zip slip") or a copied tree whose links now
  point at whatever lies next to it produces, never a deliberate way of linking a dataset in. "The tree being
  walked" is the data root, or, below a directory linked in with an absolute target, that directory;
- with ``follow_symlinks_outside_root=False`` (strict mode, for trees one did not make) every link, file or
  directory, whose resolved location is outside the data root is refused, whatever its target looks like.

Absolute links out of the root are followed by default because linking in is deliberate: an operator writes
``ln -s /mnt/disk2/hdtf data/hdtf``, and the test fixtures build their inputs as folders of absolute links to
shared clips. Refused file links with a video extension are listed (``refused="outside_data_root"``); refused
directory links are counted in ``ignored["<outside-root-dir>"]``. Broken links are listed with
``size_bytes=-1`` (the inventory records them as ``io_error`` rows).
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
import re
import stat
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

from curation.errors import ConfigError

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v", ".flv", ".mpg", ".mpeg", ".ts", ".wmv"}
)

# YouTube video ids are 11 characters of the URL-safe base64 alphabet; "_" and "-" are legal, so
# names like "_0tf2n3rlJU_0" must be split by length, not on the first underscore.
_YTID = r"[A-Za-z0-9_-]{11}"
_YTID_RE = re.compile(rf"^{_YTID}$")


@dataclass(frozen=True)
class SourceFile:
    """One video file of a dataset. ``size_bytes`` is -1 when the file could not be stat'ed (a broken
    symlink, a permission error) or was refused: it is still listed so the inventory records the failure.
    ``refused``: why the lister refused the entry (``not_a_file``, ``outside_data_root``); such an entry must
    not be opened."""

    dataset: str
    path: str
    relpath: str
    size_bytes: int
    origin_video_id: str | None = None
    speaker_id: str | None = None
    extra: dict[str, str] = field(default_factory=dict, hash=False)
    refused: str | None = None


class SourceAdapter:
    """A dataset root on disk. Subclasses set ``kind`` and override ``parse``."""

    kind: ClassVar[str] = ""

    def __init__(self, root: str | os.PathLike[str], dataset: str | None = None, *,
                 follow_symlinks_outside_root: bool = True):
        root_path = Path(root).expanduser()
        if not root_path.exists():
            raise ConfigError(f"{self.kind} source root does not exist: {os.fspath(root_path)!r}")
        if not root_path.is_dir():
            raise ConfigError(f"{self.kind} source root is not a directory: {os.fspath(root_path)!r}")
        self.root = os.path.abspath(root_path)
        self.real_root = os.path.realpath(root_path)
        self.follow_symlinks_outside_root = follow_symlinks_outside_root
        self.dataset = dataset or self.default_dataset_name()
        self.ignored: Counter[str] = Counter()
        self.unparsed = 0
        self.hidden = 0
        self.listed = 0
        self.refused: Counter[str] = Counter()

    def default_dataset_name(self) -> str:
        return self.kind

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={self.root!r}, dataset={self.dataset!r})"

    def parse(self, relpath: str) -> dict[str, Any]:
        """Ids encoded in a file's relative path: ``{"origin_video_id", "speaker_id", "extra"}``, or an empty
        dict when the path does not follow the dataset's layout."""
        raise NotImplementedError

    def stats(self) -> dict[str, Any]:
        """The counters of the last listing, JSON-ready (stored with the inventory)."""
        return {
            "kind": self.kind,
            "root": self.root,
            "listed": self.listed,
            "unparsed": self.unparsed,
            "hidden": self.hidden,
            "refused": dict(sorted(self.refused.items())),
            "ignored": dict(sorted(self.ignored.items())),
        }

    def iter_files(self) -> Iterator[SourceFile]:
        ignored: Counter[str] = Counter()
        refused_counts: Counter[str] = Counter()
        counts = {"unparsed": 0, "hidden": 0, "listed": 0}
        for path, relpath, refused in self._walk(ignored, counts):
            size = -1
            if refused is None:
                try:
                    status = os.stat(path)
                except OSError as exc:
                    log.warning("%s: cannot stat %s: %s", self.dataset, path, exc)
                else:
                    if stat.S_ISREG(status.st_mode):
                        size = status.st_size
                    else:
                        refused = "not_a_file"  # a named pipe would block the reader forever
            if refused is not None:
                log.warning("%s: refusing %s (%s)", self.dataset, path, refused)
                refused_counts[refused] += 1
            ids = self.parse(relpath)
            if not ids:
                counts["unparsed"] += 1
            counts["listed"] += 1
            yield SourceFile(
                dataset=self.dataset,
                path=path,
                relpath=relpath,
                size_bytes=size,
                origin_video_id=ids.get("origin_video_id"),
                speaker_id=ids.get("speaker_id"),
                extra=dict(ids.get("extra", {})),
                refused=refused,
            )
        self.ignored, self.refused = ignored, refused_counts
        self.unparsed, self.hidden, self.listed = counts["unparsed"], counts["hidden"], counts["listed"]
        if self.unparsed:
            log.warning("%s: %d video files do not follow the %s layout (listed with no ids)",
                        self.dataset, self.unparsed, self.kind)

    def _link_leaves_root(self, path: str, tree: str) -> bool:
        """Whether the symlink at ``path`` must be refused (see the module's symlink policy); ``tree`` is the
        real path of the tree being walked."""
        real = os.path.realpath(path)
        if _is_within(real, self.real_root):
            return False
        if not self.follow_symlinks_outside_root:
            return True
        try:
            target = os.readlink(path)
        except OSError:
            return False  # gone meanwhile: the stat that follows reports it
        return not os.path.isabs(target) and not _is_within(real, tree)

    def _walk(self, ignored: Counter[str], counts: dict[str, int]) -> Iterator[tuple[str, str, str | None]]:
        # Symlinked directories are followed (datasets are often linked in from other disks) unless the
        # symlink policy refuses them; the set of visited real paths stops a link cycle from recursing forever.
        visited: set[str] = set()

        def walk(directory: str, prefix: str, tree: str) -> Iterator[tuple[str, str, str | None]]:
            real = os.path.realpath(directory)
            if real in visited:
                log.warning("%s: skipping %s, a link to a directory already listed", self.dataset, directory)
                ignored["<repeated-dir>"] += 1
                return
            visited.add(real)
            try:
                with os.scandir(directory) as scan:
                    entries = sorted(scan, key=lambda entry: entry.name)
            except OSError as exc:
                log.warning("%s: cannot list %s: %s", self.dataset, directory, exc)
                ignored["<unlistable-dir>"] += 1
                return
            for entry in entries:
                if entry.name.startswith("."):
                    counts["hidden"] += 1
                    continue
                relpath = f"{prefix}{entry.name}"
                extension = os.path.splitext(entry.name)[1].lower()
                is_video_name = extension in VIDEO_EXTENSIONS
                try:
                    is_dir = entry.is_dir(follow_symlinks=True)
                except OSError:
                    is_dir = False
                try:
                    is_link = entry.is_symlink()
                except OSError:
                    is_link = False  # vanished meanwhile: the stat that follows reports it
                if is_link and self._link_leaves_root(entry.path, tree):
                    if is_video_name:
                        yield entry.path, relpath, "outside_data_root"
                    else:
                        log.warning("%s: not following %s, a link out of the data root", self.dataset,
                                    entry.path)
                        ignored["<outside-root-dir>" if is_dir else extension or "<none>"] += 1
                    continue
                if is_dir:
                    if is_video_name:
                        yield entry.path, relpath, "not_a_file"
                    inner = tree
                    if is_link and not _is_within(os.path.realpath(entry.path), tree):
                        inner = os.path.realpath(entry.path)  # a disk linked in: its own tree from here on
                    yield from walk(entry.path, relpath + "/", inner)
                    continue
                if is_video_name:
                    yield entry.path, relpath, None
                else:
                    ignored[extension or "<none>"] += 1

        yield from walk(self.root, "", self.real_root)


def _is_within(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


def _ids(origin_video_id: str | None = None, speaker_id: str | None = None, **extra: str | None) -> dict:
    return {
        "origin_video_id": origin_video_id,
        "speaker_id": speaker_id,
        "extra": {key: str(value) for key, value in extra.items() if value is not None},
    }


def _parts(relpath: str) -> tuple[tuple[str, ...], str]:
    """(directory components, file stem)."""
    path = PurePosixPath(relpath)
    return path.parent.parts, path.stem


def _nearest(parts: tuple[str, ...], names: frozenset[str]) -> str | None:
    """The closest ancestor directory whose (lower-cased) name is one of ``names``."""
    for part in reversed(parts):
        if part.lower() in names:
            return part.lower()
    return None


class FolderAdapter(SourceAdapter):
    """Any directory tree of videos; no ids are inferred. The dataset name defaults to the root's name."""

    kind = "folder"

    def default_dataset_name(self) -> str:
        return os.path.basename(self.root.rstrip(os.sep)) or "folder"

    def parse(self, relpath: str) -> dict[str, Any]:
        return _ids()


class HdtfAdapter(SourceAdapter):
    """HDTF (Zhang et al., CVPR 2021), 512x512 face crops of YouTube videos in three groups:
    ``RD`` (radio), ``WDA`` (Democrat addresses), ``WRA`` (Republican addresses).

    Layouts accepted (any depth below the root):

    - universome/HDTF ``download.py`` (linked from the official README): flat clips
      ``{group}_{video name}_{clip:03d}.mp4``, e.g. ``WDA_KatieHill_000.mp4``, and the uncut downloads
      ``_videos_raw/{group}_{video name}.mp4`` (``stage=raw``).
    - MRzzm/HDTF README: ``{video name}_{clip}.mp4``, e.g. ``Radio11_0.mp4``; with no group prefix the name
      is recognised only through the url lists (below), otherwise it counts as unparsed.

    The video name is a person plus an optional index of that person's source video (``NancyPelosi0``,
    ``NancyPelosi1``): ``speaker_id`` is the name without the trailing digits. Radio videos (``Radio11``)
    name no person, so their ``speaker_id`` is ``None``. ``origin_video_id`` (the YouTube id) comes from the
    dataset's ``{RD,WDA,WRA}_video_url.txt`` lists (``video name | url``), read from ``url_lists_dir``, or
    from the root or ``root/HDTF_dataset`` when they are there; without them it is ``None``.
    """

    kind = "hdtf"
    GROUPS = ("RD", "WDA", "WRA")
    _NAME = re.compile(r"^(?:(?P<group>RD|WDA|WRA)_)?(?P<video>[A-Za-z][A-Za-z0-9-]*?)(?:_(?P<clip>\d+))?$")
    _URL_ID = re.compile(r"[?&]v=([A-Za-z0-9_-]{11})")

    def __init__(self, root: str | os.PathLike[str], dataset: str | None = None, *,
                 url_lists_dir: str | os.PathLike[str] | None = None,
                 follow_symlinks_outside_root: bool = True):
        super().__init__(root, dataset, follow_symlinks_outside_root=follow_symlinks_outside_root)
        if url_lists_dir is not None and not Path(url_lists_dir).is_dir():
            raise ConfigError(f"hdtf url_lists_dir is not a directory: {os.fspath(url_lists_dir)!r}")
        candidates = [Path(url_lists_dir)] if url_lists_dir is not None else [
            Path(self.root), Path(self.root) / "HDTF_dataset"]
        self.youtube_ids: dict[tuple[str, str], str] = {}
        for directory in candidates:
            for group in self.GROUPS:
                url_list = directory / f"{group}_video_url.txt"
                if url_list.is_file():
                    self.youtube_ids.update(self._read_url_list(url_list, group))
        self._group_of = {video: group for group, video in self.youtube_ids}

    @classmethod
    def _read_url_list(cls, path: Path, group: str) -> dict[tuple[str, str], str]:
        ids = {}
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            fields = line.split()
            if len(fields) >= 2 and (match := cls._URL_ID.search(fields[1])):
                ids[(group, fields[0].removesuffix(".mp4"))] = match.group(1)
        return ids

    def parse(self, relpath: str) -> dict[str, Any]:
        parts, stem = _parts(relpath)
        match = self._NAME.match(stem)
        if not match:
            return {}
        group, video, clip = match.group("group"), match.group("video"), match.group("clip")
        if group is None:
            group = self._group_of.get(video)
        if group is None:
            return {}  # no group prefix and not in the url lists: nothing says this is an HDTF name
        raw = clip is None or "_videos_raw" in parts
        speaker = None if group == "RD" else re.sub(r"\d+$", "", video) or None
        return _ids(
            self.youtube_ids.get((group, video)) if group else None,
            speaker,
            group=group,
            video_name=video,
            clip=str(int(clip)) if clip is not None else None,
            stage="raw" if raw else "clip",
        )


class CelebvHqAdapter(SourceAdapter):
    """CelebV-HQ (Zhu et al., ECCV 2022). CelebV-HQ/CelebV-HQ ``download_and_process.py``: clips named by
    their key in ``celebvhq_info.json``, ``{youtube id}_{n}.mp4`` (e.g. ``M2Ohb0FAaJU_1.mp4``), under
    ``processed/``; uncut downloads ``raw/{youtube id}.mp4`` (``stage=raw``). The JSON has no identity
    labels, so ``speaker_id`` is ``None``."""

    kind = "celebv_hq"
    _CLIP = re.compile(rf"^(?P<ytid>{_YTID})(?:_(?P<clip>\d+))?$")

    def parse(self, relpath: str) -> dict[str, Any]:
        _, stem = _parts(relpath)
        match = self._CLIP.match(stem)
        if not match:
            return {}
        clip = match.group("clip")
        return _ids(match.group("ytid"), None, clip=clip, stage="clip" if clip is not None else "raw")


class Voxceleb2Adapter(SourceAdapter):
    """VoxCeleb2 (Chung et al., Interspeech 2018), the official ``vox2_{dev,test}_mp4`` archives:
    ``{dev,test}/mp4/id{NNNNN}/{youtube id}/{NNNNN}.mp4`` (e.g. ``dev/mp4/id00012/21Uxsk56VDQ/00001.mp4``):
    speaker id, the YouTube video the utterance was cut from, utterance number. The split is the nearest
    ancestor directory named ``dev`` or ``test`` (absent when the archive was unpacked without one)."""

    kind = "voxceleb2"
    SPLITS = frozenset({"dev", "test"})
    _SPEAKER = re.compile(r"^id\d{5}$")
    _UTTERANCE = re.compile(r"^\d{5}$")

    def parse(self, relpath: str) -> dict[str, Any]:
        parts, stem = _parts(relpath)
        if len(parts) < 2 or not self._UTTERANCE.match(stem):
            return {}
        speaker, ytid = parts[-2], parts[-1]
        if not self._SPEAKER.match(speaker) or not _YTID_RE.match(ytid):
            return {}
        return _ids(ytid, speaker, split=_nearest(parts[:-2], self.SPLITS), utterance=stem, stage="clip")


class TalkingHead1khAdapter(SourceAdapter):
    """TalkingHead-1KH (Wang et al., CVPR 2021), after tcwang0509/TalkingHead-1KH
    ``videos_download_and_crop.sh {small,train,val}``:

    - ``{split}/raw_videos/{youtube id}.mp4`` (``stage=raw``);
    - ``{split}/1min_clips/{youtube id}_{chunk:04d}.mp4`` from ``videos_split.sh`` (``stage=chunk``);
    - ``{split}/cropped_clips/{youtube id}_{chunk:04d}_S{start}_E{end}_L{left}_T{top}_R{right}_B{bottom}.mp4``
      from ``videos_crop.py`` (``stage=clip``): start/end frames within the one-minute chunk and the crop box.

    No identity labels, so ``speaker_id`` is ``None``. The official downloader fetches a video-only stream,
    so these clips usually have no audio.
    """

    kind = "talkinghead_1kh"
    SPLITS = frozenset({"small", "train", "val"})
    _NAME = re.compile(
        rf"^(?P<ytid>{_YTID})(?:_(?P<chunk>\d{{4}})"
        r"(?:_S(?P<S>\d+)_E(?P<E>\d+)_L(?P<L>-?\d+)_T(?P<T>-?\d+)_R(?P<R>-?\d+)_B(?P<B>-?\d+))?)?$"
    )

    def parse(self, relpath: str) -> dict[str, Any]:
        parts, stem = _parts(relpath)
        match = self._NAME.match(stem)
        if not match:
            return {}
        chunk, start = match.group("chunk"), match.group("S")
        stage = "raw" if chunk is None else "chunk" if start is None else "clip"
        crop = None if start is None else ",".join(match.group(k) for k in "LTRB")
        return _ids(
            match.group("ytid"),
            None,
            split=_nearest(parts, self.SPLITS),
            chunk=str(int(chunk)) if chunk is not None else None,
            start_frame=start,
            end_frame=match.group("E"),
            crop_ltrb=crop,
            stage=stage,
        )


class MultitalkAdapter(SourceAdapter):
    """MultiTalk (Sung-Bin et al., Interspeech 2024), postech-ami/MultiTalk ``MultiTalk_dataset``: one folder
    per language, ``multitalk_dataset/{language}/{youtube id}_{n}.mp4`` (e.g. ``arabic/O-VJXuHb390_0.mp4``),
    uncut downloads in ``raw_video/{language}/{youtube id}.mp4`` (``stage=raw``). The language folder must be
    one of the 20 published languages; no identity labels, so ``speaker_id`` is ``None``."""

    kind = "multitalk"
    LANGUAGES = frozenset({
        "arabic", "catalan", "croatian", "czech", "dutch", "english", "french", "german", "greek", "hindi",
        "italian", "japanese", "mandarin", "polish", "portuguese", "russian", "spanish", "thai", "turkish",
        "ukrainian",
    })
    _CLIP = re.compile(rf"^(?P<ytid>{_YTID})(?:_(?P<clip>\d+))?$")

    def parse(self, relpath: str) -> dict[str, Any]:
        parts, stem = _parts(relpath)
        match = self._CLIP.match(stem)
        if not match or not parts or parts[-1].lower() not in self.LANGUAGES:
            return {}
        clip = match.group("clip")
        return _ids(match.group("ytid"), None, language=parts[-1].lower(), clip=clip,
                    stage="clip" if clip is not None else "raw")


ADAPTERS: dict[str, type[SourceAdapter]] = {
    adapter.kind: adapter
    for adapter in (FolderAdapter, HdtfAdapter, CelebvHqAdapter, Voxceleb2Adapter, TalkingHead1khAdapter,
                    MultitalkAdapter)
}


def make_source(kind: str, root: str | os.PathLike[str], dataset: str | None = None,
                **options: Any) -> SourceAdapter:
    """The adapter for ``kind``; ``options`` are adapter-specific keywords (e.g. hdtf ``url_lists_dir``)."""
    try:
        adapter = ADAPTERS[kind]
    except KeyError:
        raise ConfigError(f"unknown source kind {kind!r}; valid kinds: {', '.join(sorted(ADAPTERS))}") from None
    try:
        inspect.signature(adapter).bind(root, dataset, **options)
    except TypeError as exc:
        raise ConfigError(f"bad options for source kind {kind!r}: {exc}") from None
    return adapter(root, dataset, **options)


CONTENT_SAMPLE_BYTES = 1 << 20
CONTENT_ID_SCHEME = "blake2b-128(size_le64 + head/middle/tail 1 MiB)"


def content_id(path: str | os.PathLike[str], size_bytes: int) -> str:
    """A content fingerprint: blake2b-128 (hex) of the size and 1 MiB from the head, middle and tail.

    Sampled, not a full hash, because the inputs are multi-TB: hashing every byte would cost as much I/O as
    decoding everything, while three 1 MiB reads cost about one seek each. It names the content, not the
    path, so a copy of a file in another directory (or dataset) gets the same id. Caveat: two files of the
    same size that differ only outside the sampled windows collide; for encoded video that is vanishingly
    rare (any re-encode changes the container header and the size), but it is not a cryptographic identity
    of the whole file. Files of 3 MiB or less are hashed whole. Raises OSError when the file cannot be read.
    """
    digest = hashlib.blake2b(digest_size=16)
    digest.update(int(size_bytes).to_bytes(8, "little", signed=True))
    with open(path, "rb") as handle:
        if size_bytes <= 3 * CONTENT_SAMPLE_BYTES:
            digest.update(handle.read())
        else:
            for offset in (0, (size_bytes - CONTENT_SAMPLE_BYTES) // 2, size_bytes - CONTENT_SAMPLE_BYTES):
                handle.seek(offset)
                digest.update(handle.read(CONTENT_SAMPLE_BYTES))
    return digest.hexdigest()
