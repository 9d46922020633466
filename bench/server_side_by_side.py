"""Fresh `lexsearch query` processes answered by a running server: two code versions side by side.

Starts one server per source tree over the same synthetic collection (`bench/store_1m.py --dir D` writes one;
its query vectors are cached, so no model is needed), each with its own LEXSEARCH_HOME, then runs every cached
query text as a new `lexsearch -v query --collection C --paths TEXT` process, the two versions alternating,
twice (the first pass is new to both servers, the second repeats it). Outputs are compared byte for byte.

    git worktree add /tmp/old REF
    python bench/server_side_by_side.py /tmp/c1m/col --old /tmp/old

Both versions' query processes start from the same `lexsearch` console script (``--bin``: the one on PATH by
default, e.g. an editable install's; or a regular install's, whose start is shorter), with PYTHONPATH set to
each version's tree, so only the code differs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SERVER = r"""
import sys
sys.path.insert(0, sys.argv[2] + "/bench")
from store_1m import Words
from lexsearch.index.store import Collection
from lexsearch.serve.server import Server
from lexsearch.serve.service import SearchService
col = Collection.open(sys.argv[1])
col.file_exists = lambda p: True  # synthetic paths have no files
server = Server(SearchService(col, Words()), "127.0.0.1", 0)
print("ready", flush=True)
server.serve()
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("collection", help="a synthetic collection written by bench/store_1m.py (read only)")
    ap.add_argument("--old", required=True, help="source tree of the version to compare with")
    ap.add_argument("--new", default=str(ROOT), help="source tree of the other version (default: this one)")
    ap.add_argument(
        "--bin",
        help="folder of the `lexsearch` console script the query processes run (default: the one on PATH), "
        "e.g. a venv's bin/ after a regular `pip install --no-deps .`",
    )
    args = ap.parse_args()
    db = sqlite3.connect(str(Path(args.collection) / "index.db"))
    texts = [r[0] for r in db.execute("SELECT text FROM query_cache ORDER BY text")]
    db.close()
    trees = {"old": str(Path(args.old).resolve()), "new": str(Path(args.new).resolve())}
    homes = {v: tempfile.mkdtemp(prefix=f"lexsearch-bench-{v}-") for v in trees}
    envs = {
        v: dict(os.environ, PYTHONPATH=trees[v], LEXSEARCH_HOME=homes[v], OPENBLAS_NUM_THREADS="1")
        for v in trees
    }
    script = str(Path(args.bin) / "lexsearch") if args.bin else (shutil.which("lexsearch") or "lexsearch")
    servers = {}
    try:
        for v in trees:
            cmd = [sys.executable, "-c", SERVER, args.collection, trees[v]]
            servers[v] = subprocess.Popen(cmd, env=envs[v], stdout=subprocess.PIPE, text=True)
            if servers[v].stdout.readline().strip() != "ready":
                raise SystemExit(f"the {v} server did not start")
        time.sleep(1.0)  # the servers register themselves once listening

        def run(v: str, text: str) -> tuple[float, str]:
            cmd = [script, "-v", "query", "--collection", args.collection, "--paths", text]
            t = time.perf_counter()
            out = subprocess.run(cmd, capture_output=True, text=True, env=envs[v])
            wall = time.perf_counter() - t
            if "answered by the running server" not in out.stderr:
                raise SystemExit(f"{v}: not answered by its server: {out.stderr}")
            return wall, out.stdout

        print(
            f"{len(texts)} queries, load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} CPUs, "
            f"query processes: {script}"
        )
        for phase in ("first query of each text", "the same texts again"):
            walls: dict[str, list[float]] = {"old": [], "new": []}
            for k, text in enumerate(texts):
                outs = {}
                for v in ("old", "new") if k % 2 else ("new", "old"):
                    wall, outs[v] = run(v, text)
                    walls[v].append(wall)
                if outs["old"] != outs["new"]:
                    raise SystemExit(f"the versions answer {text!r} differently")
            old, new = (statistics.median(walls[v]) * 1e3 for v in ("old", "new"))
            mins = {v: min(walls[v]) * 1e3 for v in walls}
            print(
                f"  {phase}: p50 old {old:.0f} ms, new {new:.0f} ms ({old / new:.2f}x); "
                f"min old {mins['old']:.0f}, new {mins['new']:.0f} ms"
            )
        print(f"  load average at the end {os.getloadavg()[0]:.1f}; outputs identical")
    finally:
        for proc in servers.values():
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
