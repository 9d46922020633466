"""Wall time of the whole `lexsearch train` command against its --max-minutes, and how fast bad data fails.

Runs the real command line in a subprocess (torch's import, the data checks, the tiny bases' pretraining,
training, the last checkpoint and the final validation all count) on a generated toy world, and prints the
wall time beside the budget. Each budget runs twice in one LEXSEARCH_HOME (a fresh one, or --home): the
first builds the tiny bases within the budget, the second finds them cached when the first pretrained them
in full (the time then goes to training), and says which it was. `--too-few` times a
caption folder with fewer pairs than one batch, which must fail before any base is built.

    python bench/train_wall.py --minutes 0.3 --minutes 8        # toy world of 2,500 images
    python bench/train_wall.py --too-few 69
    python bench/train_wall.py --world W --home H --minutes 0.3   # H's cache holds full bases of W
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(args: list[str], home: Path) -> tuple[float, int, str]:
    env = dict(os.environ, LEXSEARCH_HOME=str(home))
    t0 = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "lexsearch", *args], env=env, capture_output=True, text=True, check=False
    )
    return time.monotonic() - t0, done.returncode, (done.stdout + done.stderr).strip()


def load() -> str:
    return "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=2500, help="toy world size (the demo's: 2,500)")
    parser.add_argument("--minutes", type=float, action="append", help="--max-minutes to time (repeatable)")
    parser.add_argument("--too-few", type=int, help="time a folder of this many pairs (< one batch)")
    parser.add_argument(
        "--world", type=Path, help="an existing toy world to train on (default: generate one)"
    )
    parser.add_argument("--home", type=Path, help="LEXSEARCH_HOME to use (default: a fresh one per budget)")
    args = parser.parse_args()

    from lexsearch.data.toyworld import generate_toy_world

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.too_few:
            generate_toy_world(tmp / "few", args.too_few, seed=0)
            print(load())
            wall, code, out = run(["train", "--data", str(tmp / "few"), "--out", str(tmp / "m")], tmp / "h")
            left = "nothing" if not (tmp / "m").exists() else sorted(p.name for p in (tmp / "m").iterdir())
            print(f"{args.too_few} pairs: exit {code} after {wall:.1f} s; --out holds {left}\n  {out}")
        world = args.world or tmp / "world"
        if args.world is None:
            generate_toy_world(world, args.images, seed=0)
        for minutes in args.minutes or []:
            home = tmp / f"home-{minutes}"
            for run_no in (1, 2):
                # Bases whose pretraining the budget cut short are not cached: the second run builds them
                # again then. --home points at a LEXSEARCH_HOME whose cache holds full bases of this world.
                cached = any((args.home or home).glob("cache/tiny-bases/*/pretrain.json"))
                state = "bases cached" if cached else "bases built (none cached)"
                out_dir = tmp / f"model-{minutes}-{run_no}"
                print(load())
                cmd = ["train", "--data", str(world), "--out", str(out_dir), "--quiet"]
                wall, code, out = run([*cmd, "--max-minutes", str(minutes)], args.home or home)
                last = out.splitlines()[0] if out else ""
                print(
                    f"--max-minutes {minutes:g} ({minutes * 60:.0f} s), {state}: {wall:.1f} s wall, exit {code}"
                )
                print(f"  {last}")
        print(load())


if __name__ == "__main__":
    main()
