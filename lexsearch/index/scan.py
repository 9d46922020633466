"""Folder scan: find image files under some roots, cheaply, and hash their content for rename detection.

The scan only stats files (one ``os.scandir`` entry each); nothing is opened here, so re-indexing an
unchanged folder costs a directory walk. Hidden files and folders and the usual junk (version control, NAS
thumbnails, macOS resource forks) are skipped unless asked. Symlinked folders are followed, but each real
folder (device + inode) is visited once, so a link loop cannot hang the scan.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

# Extensions Pillow (plus pillow-heif for HEIC/HEIF) decodes; matched case-insensitively.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic", ".heif", ".avif"}
)

# Folder names that are never photos a person wants searched: VCS metadata, dependency trees, Synology and
# QNAP thumbnail folders, trash cans. Skipped even with --include-hidden (they are junk, not just hidden).
JUNK_DIRS = frozenset(
    {".git", ".hg", ".svn", "node_modules", "__pycache__", "@eaDir", ".@__thumb", "#recycle", "$RECYCLE.BIN",
     ".Trash", ".Trashes", ".thumbnails", ".cache", ".venv", "venv", "System Volume Information"}
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


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _is_junk_file(name: str) -> bool:
    # ._foo.jpg are AppleDouble resource forks that macOS scatters on non-HFS volumes; they end in .jpg
    # but are not images. Thumbs.db / .DS_Store have no image extension anyway.
    return name.startswith("._")


def _excluded(path: str, name: str, patterns: tuple[str, ...]) -> bool:
    # A pattern matches either the bare name (``--exclude '*.gif'``, ``--exclude raw``) or the whole path
    # (``--exclude '*/2019/*'``), which is what people type without thinking about which one it is.
    return any(fnmatch.fnmatch(name, p) or fnmatch.fnmatch(path, p) for p in patterns)


def scan(
    roots: Iterable[str | os.PathLike[str]],
    *,
    exclude: Iterable[str] = (),
    include_hidden: bool = False,
) -> Iterator[ScannedFile]:
    """Yield every image file under ``roots`` (files given directly as roots are yielded too).

    Unreadable folders are logged and skipped; the scan itself never raises for a bad entry.
    """
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
            if is_image_name(root_path) and root_path not in seen_files:
                seen_files.add(root_path)
                yield ScannedFile(root_path, st.st_size, st.st_mtime_ns)
            continue
        yield from _walk(root_path, st, patterns, include_hidden, seen_dirs, seen_files)


def _walk(
    top: str,
    top_stat: os.stat_result,
    patterns: tuple[str, ...],
    include_hidden: bool,
    seen_dirs: set[tuple[int, int]],
    seen_files: set[str],
) -> Iterator[ScannedFile]:
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
        for entry in entries:
            name = entry.name
            if (not include_hidden and _is_hidden(name)) or _excluded(entry.path, name, patterns):
                continue
            try:
                if entry.is_dir(follow_symlinks=True):
                    if name in JUNK_DIRS:
                        continue
                    subdirs.append((entry.path, entry.stat(follow_symlinks=True)))
                elif entry.is_file(follow_symlinks=True) and is_image_name(name) and not _is_junk_file(name):
                    if entry.path in seen_files:
                        continue
                    st = entry.stat(follow_symlinks=True)
                    seen_files.add(entry.path)
                    yield ScannedFile(entry.path, st.st_size, st.st_mtime_ns)
            except OSError as exc:  # dangling link, permission race: skip the entry, keep scanning
                logger.debug("skipping %s: %s", entry.path, exc)
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
