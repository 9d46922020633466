"""Configuration shared by every part: where user state lives, and small helpers for dataclass <-> JSON.

All user state (collections, cached tiny base models, the demo's model) lives under one directory,
``LEXSEARCH_HOME`` (default ``~/.lexsearch``), so a test or a user can move all of it with one variable.
"""

from __future__ import annotations

import json
import os
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def home() -> Path:
    """The lexsearch home directory (created on demand)."""
    path = Path(os.environ.get("LEXSEARCH_HOME") or Path.home() / ".lexsearch").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def collections_dir() -> Path:
    path = home() / "collections"
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_dir() -> Path:
    """Cached artefacts keyed by their inputs (pretrained tiny bases, tokenizers)."""
    path = home() / "cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


# dataclasses (and the inspect module under it) load on first use: a query through a server needs home() only.


def to_dict(obj: Any) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(obj)


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build a (possibly nested) dataclass from a dict, ignoring unknown keys so older files still load."""
    import dataclasses

    hints = typing.get_type_hints(cls)
    kwargs = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        if field.name not in data:
            continue
        value, ftype = data[field.name], hints[field.name]
        if dataclasses.is_dataclass(ftype) and isinstance(value, dict):
            value = from_dict(ftype, value)
        kwargs[field.name] = value
    return cls(**kwargs)


def save_json(obj: Any, path: Path) -> None:
    """Write JSON atomically (temp file + rename) so a crash never leaves half a file."""
    import dataclasses

    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    data = to_dict(obj) if dataclasses.is_dataclass(obj) else obj
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


def load_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())
