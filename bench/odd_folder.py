"""Index a folder of odd and broken files end to end through the CLI, and print what reached the user.

    python bench/odd_folder.py                    # the tiny model, built offline (~30 s on 2 cores)
    python bench/odd_folder.py --model DIR --keep /tmp/odd

The folder comes from tests/oddfiles.py (Pillow + numpy: 16-bit and float TIFFs, tRNS, CMYK, palette +
transparency, animated GIF/APNG/WebP, Netpbm, TGA, ICO, JPEG 2000, MPO, PSD, Latin-1 and newline names,
truncated, empty, bomb-by-header and not-an-image files). Printed, for one `lexsearch index` process:
files written, exit code, indexed / failed / skipped from the summary, stderr lines, stderr lines that name
no file of the folder (aim: 0), files named more than once (aim: 0), tracebacks (aim: 0), seconds.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from oddfiles import make_odd_folder  # noqa: E402


def shown(path: str) -> str:
    text = os.fsencode(path).decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="Model folder (default: build the tiny model offline).")
    ap.add_argument("--keep", help="Write the folder here and keep it (default: a temporary folder).")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="lexsearch-odd-") as tmp:
        folder = Path(args.keep or Path(tmp) / "odd")
        expected = make_odd_folder(folder)
        model = args.model
        if model is None:
            from conftest import TINY_TEXTS

            from lexsearch.tiny.builder import build_tiny_checkpoint

            model = str(build_tiny_checkpoint(Path(tmp) / "model", TINY_TEXTS, seed=0))
        env = dict(
            os.environ,
            LEXSEARCH_HOME=str(Path(tmp) / "home"),
            CUDA_VISIBLE_DEVICES=os.environ.get("CUDA_VISIBLE_DEVICES", "" if args.device == "cpu" else "0"),
        )
        cmd = [
            sys.executable,
            "-m",
            "lexsearch",
            "index",
            str(folder),
            "--model",
            model,
            "--device",
            args.device,
            "--collection",
            "odd",
        ]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, env=env)
        seconds = time.perf_counter() - start
    err = proc.stderr.decode("utf-8", "replace").splitlines()
    names = [shown(os.fsdecode(os.path.join(os.fsencode(folder), n))) for n in expected]
    nameless = [line for line in err if not any(f"warning: {p}: " in line for p in names)]
    counts = {p: sum(line.startswith(f"warning: {p}: ") for line in err) for p in names}
    summary = proc.stdout.decode()
    figure = {k: re.search(rf"(\d+) {k}", summary) for k in ("indexed", "failed", "skipped")}
    print(f"files written:            {len(expected)} images + 3 non-images")
    print(f"exit code:                {proc.returncode}")
    for k, m in figure.items():
        print(f"{k + ':':<26}{m.group(1) if m else '?'}")
    print(f"stderr lines:             {len(err)}")
    print(f"lines naming no file:     {len(nameless)}")
    print(f"files named twice or more: {sum(n > 1 for n in counts.values())}")
    print(f"tracebacks:               {sum('Traceback' in line for line in err)}")
    print(f"seconds (whole process):  {seconds:.1f}")
    for line in nameless[:10]:
        print(f"  nameless: {line}")


if __name__ == "__main__":
    main()
