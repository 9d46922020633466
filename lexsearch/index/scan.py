"""Folder scan: find image files under some roots, cheaply, and hash their content for rename detection.

The scan only stats files (one ``os.scandir`` entry each); nothing is opened here, so re-indexing an
unchanged folder costs a directory walk. Hidden files and folders and the usual junk (version control, NAS
thumbnails, macOS resource forks) are skipped unless asked. Symlinked folders are followed, but each real
folder (device + inode) is visited once, so a link loop cannot hang the scan.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import logging
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from lexsearch.index.paths import folder_digest

logger = logging.getLogger(__name__)

# Extensions Pillow (plus pillow-heif for HEIC/HEIF) decodes safely; matched case-insensitively. Beyond the
# photo formats: JPEG 2000, Netpbm, TGA, ICO, MPO (stereo JPEG), APNG, the PSD composite, PCX, SGI, QOI, DDS.
# Not EPS/PDF (they run Ghostscript) nor camera RAW (Pillow cannot decode it): those are counted as skipped.
IMAGE_EXTENSIONS = frozenset(
    {
        ".jpg",
        ".jpeg",
        ".jpe",
        ".jfif",
        ".png",
        ".apng",
        ".webp",
        ".gif",
        ".bmp",
        ".dib",
        ".tif",
        ".tiff",
        ".heic",
        ".heif",
        ".avif",
        ".jp2",
        ".j2k",
        ".jpx",
        ".jpf",
        ".j2c",
        ".ppm",
        ".pgm",
        ".pbm",
        ".pnm",
        ".tga",
        ".ico",
        ".mpo",
        ".psd",
        ".pcx",
        ".sgi",
        ".rgb",
        ".qoi",
        ".dds",
    }
)

# Folder names that are never photos a person wants searched: VCS metadata, dependency trees, Synology and
# QNAP thumbnail folders, trash cans. Skipped even with --include-hidden (they are junk, not just hidden).
JUNK_DIRS = frozenset(
    {
        ".git",
        ".hg",
        ".svn",
        "node_modules",
        "__pycache__",
        "@eaDir",
        ".@__thumb",
        "#recycle",
        "$RECYCLE.BIN",
        ".Trash",
        ".Trashes",
        ".thumbnails",
        ".cache",
        ".venv",
        "venv",
        "System Volume Information",
    }
)

# Hash the head and the tail of a file plus its size: enough to recognise a moved photo without reading
# all of a 30 MB RAW-sized JPEG; a full read would make rename detection as slow as decoding.
HASH_HEAD_BYTES = 1 << 20
HASH_TAIL_BYTES = 1 << 10


@dataclass(frozen=True)
class ScannedFile:
    """One candidate image found by the scan (stat only, never opened)."""

    path: str  # absolute, as reached from the root (symlinked folders keep their link path)
    size: int
    mtime_ns: int


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def skip_kind(name: str) -> str:
    """The type of a file the scan passes over: its extension ('.mov'), or 'no extension'."""
    return os.path.splitext(name)[1].lower() or "no extension"


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


# Thumbnail caches and folder settings Windows writes next to photos: not worth a 'skipped' line.
_JUNK_FILES = frozenset({"thumbs.db", "ehthumbs.db", "desktop.ini"})


def _is_junk_file(name: str) -> bool:
    # ._foo.jpg are AppleDouble resource forks that macOS scatters on non-HFS volumes; they end in .jpg
    # but are not images. Thumbs.db / .DS_Store have no image extension anyway.
    return name.startswith("._") or name.lower() in _JUNK_FILES


def _excluded(path: str, name: str, patterns: tuple[str, ...]) -> bool:
    # A pattern matches either the bare name (``--exclude '*.gif'``, ``--exclude raw``) or the whole path
    # (``--exclude '*/2019/*'``), which is what people type without thinking about which one it is.
    return any(fnmatch.fnmatch(name, p) or fnmatch.fnmatch(path, p) for p in patterns)


@dataclass
class Folder:
    """The image files of one folder as the scan lists them (sorted by name, after the filters).

    ``path`` is None for files given directly as roots: they are not a folder's whole listing.
    """

    path: str | None
    files: list[ScannedFile]

    @functools.cached_property
    def digest(self) -> bytes | None:
        """``paths.folder_digest`` of the listing (what the collection keeps per folder), None for loose files."""
        if self.path is None:
            return None
        return folder_digest((os.path.basename(f.path), f.size, f.mtime_ns) for f in self.files)


def scan(
    roots: Iterable[str | os.PathLike[str]],
    *,
    exclude: Iterable[str] = (),
    include_hidden: bool = False,
    on_skip: Callable[[str, str], None] | None = None,
) -> Iterator[ScannedFile]:
    """Yield every image file under ``roots`` (files given directly as roots are yielded too).

    Unreadable folders are logged and skipped; the scan itself never raises for a bad entry. ``on_skip``
    hears (path, kind) of each other file that is passed over for its type (a video, a sidecar, a RAW);
    hidden, junk and excluded files are left out on purpose and not reported.
    """
    for folder in scan_folders(roots, exclude=exclude, include_hidden=include_hidden, on_skip=on_skip):
        yield from folder.files


def scan_folders(
    roots: Iterable[str | os.PathLike[str]],
    *,
    exclude: Iterable[str] = (),
    include_hidden: bool = False,
    on_skip: Callable[[str, str], None] | None = None,
) -> Iterator[Folder]:
    """The scan of :func:`scan`, one :class:`Folder` per folder visited (also those without images), in
    the same order; files given directly as roots come as a ``Folder(None, [file])`` each."""
    on_skip = on_skip or (lambda path, reason: None)
    patterns = tuple(exclude)
    seen_dirs: set[tuple[int, int]] = set()
    seen_files: set[str] = set()
    for root in roots:
        root_path = os.path.abspath(os.fspath(root))
        try:
            st = os.stat(root_path)
        except OSError as exc:
            logger.warning("cannot read %s: %s", root_path, exc.strerror or exc)
            continue
        if stat.S_ISREG(st.st_mode):
            if not is_image_name(root_path):
                on_skip(root_path, skip_kind(root_path))
            elif root_path not in seen_files:
                seen_files.add(root_path)
                yield Folder(None, [ScannedFile(root_path, st.st_size, st.st_mtime_ns)])
            continue
        yield from _walk(root_path, st, patterns, include_hidden, seen_dirs, seen_files, on_skip)


def _walk(
    top: str,
    top_stat: os.stat_result,
    patterns: tuple[str, ...],
    include_hidden: bool,
    seen_dirs: set[tuple[int, int]],
    seen_files: set[str],
    on_skip: Callable[[str, str], None],
) -> Iterator[Folder]:
    # Iterative depth-first walk: deep trees cannot hit the recursion limit.
    stack = [(top, top_stat)]
    while stack:
        folder, folder_stat = stack.pop()
        key = (folder_stat.st_dev, folder_stat.st_ino)
        if key in seen_dirs:  # a symlink loop or the same folder reached twice: visit it once
            continue
        seen_dirs.add(key)
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            logger.warning("cannot read folder %s: %s", folder, exc.strerror or exc)
            continue
        subdirs = []
        files = []
        for entry in entries:
            name = entry.name
            if (not include_hidden and _is_hidden(name)) or _excluded(entry.path, name, patterns):
                continue
            try:
                if entry.is_dir(follow_symlinks=True):
                    if name in JUNK_DIRS:
                        continue
                    subdirs.append((entry.path, entry.stat(follow_symlinks=True)))
                elif entry.is_file(follow_symlinks=True) and not _is_junk_file(name):
                    if not is_image_name(name):
                        on_skip(entry.path, skip_kind(name))
                        continue
                    if entry.path in seen_files:
                        continue
                    st = entry.stat(follow_symlinks=True)
                    seen_files.add(entry.path)
                    files.append(ScannedFile(entry.path, st.st_size, st.st_mtime_ns))
            except OSError as exc:  # dangling link, permission race: skip the entry, keep scanning
                logger.debug("skipping %s: %s", entry.path, exc)
        yield Folder(folder, files)
        # Reverse so the stack pops folders in name order: a stable, readable indexing order.
        stack.extend(reversed(subdirs))


def content_hash(path: str | os.PathLike[str], size: int | None = None) -> str:
    """Hash of the first 1 MB + last 1 KB + the size: recognises a moved or renamed file cheaply."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        if size is None:
            size = os.fstat(f.fileno()).st_size
        h.update(f.read(HASH_HEAD_BYTES))
        if size > HASH_HEAD_BYTES:
            f.seek(max(HASH_HEAD_BYTES, size - HASH_TAIL_BYTES))
            h.update(f.read(HASH_TAIL_BYTES))
    h.update(str(size).encode())
    return h.hexdigest()


def under_roots(path: str, roots: Iterable[str | os.PathLike[str]]) -> bool:
    """Whether ``path`` is (or lies under) one of ``roots``: which stored rows a scan is responsible for."""
    for root in roots:
        r = os.path.abspath(os.fspath(root))
        if path == r or path.startswith(r.rstrip(os.sep) + os.sep):
            return True
    return False


def normalise_roots(roots: Iterable[str | os.PathLike[str]]) -> list[str]:
    return [str(Path(os.path.abspath(os.fspath(r)))) for r in roots]
