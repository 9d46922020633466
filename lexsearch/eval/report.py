"""Plain-text tables for evaluation reports. Formatting only: these return strings, the CLI prints them."""

from __future__ import annotations

import math
from collections.abc import Sequence

from lexsearch.eval.patchdis import PatchDisReport
from lexsearch.eval.retrieval import RetrievalReport, SweepPoint


def _pct(x: float) -> str:
    return "  n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:5.1f}"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned first column, right-aligned others, columns as wide as their widest cell."""
    cells = [list(map(str, headers))] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule] + [line(r) for r in cells[1:]])


def format_retrieval(report: RetrievalReport) -> str:
    """R@1/5/10 both ways, then active dims, then the sweep (if any)."""
    r = report.recall
    ks = sorted(r.t2i)
    rows = [
        ["image->text", *(_pct(r.i2t[k]) for k in ks)],
        ["text->image", *(_pct(r.t2i[k]) for k in ks)],
    ]
    head = f"Retrieval on {report.dataset or 'data'}: {r.n_images} images, {r.n_texts} captions"
    out = [head, "", table(["direction", *(f"R@{k}" for k in ks)], rows), ""]
    out.append(
        f"sparsify {report.sparsify}: active dims images {report.active_dims_images:.1f}, "
        f"texts {report.active_dims_texts:.1f} (of {report.vocab_size})"
    )
    if r.n_images_without_caption:
        out.append(f"{r.n_images_without_caption} image(s) without captions were not image->text queries")
    if report.sweep:
        out += ["", format_sweep(report.sweep)]
    return "\n".join(out)


def format_sweep(points: Sequence[SweepPoint]) -> str:
    rows = [
        [
            f"top-{p.k}",
            f"{p.active_dims_images:.1f}",
            f"{p.active_dims_texts:.1f}",
            _pct(p.recall.i2t.get(1, math.nan)),
            _pct(p.recall.t2i.get(1, math.nan)),
        ]
        for p in points
    ]
    return "Sparsity sweep\n\n" + table(["sparsify", "dims img", "dims txt", "i2t R@1", "t2i R@1"], rows)


def format_patchdis(report: PatchDisReport, per_class: bool = True) -> str:
    """mIoU vs the random baseline, then per-class IoU (classes never seen in this set are left out)."""
    g = report.grid
    out = [
        f"PatchDis on {report.n_images} images ({g[0]}x{g[1]} patches, "
        f"upsample {report.options['upsample']}, "
        f"view {report.options.get('view', 'crop')}, candidates {report.options['candidates']}, unlabelled "
        f"{'ignored' if report.options['ignore_unlabelled'] else 'counted'})",
        "",
        table(["assignment", "mIoU"], [["model", _pct(report.miou)], ["random", _pct(report.miou_random)]]),
    ]
    if per_class:
        rows = [
            [c.name, _pct(c.iou), _pct(c.iou_random), c.gt_images]
            for c in report.per_class
            if not (math.isnan(c.iou) and math.isnan(c.iou_random))
        ]
        out += ["", table(["class", "IoU", "random", "images"], rows)]
    return "\n".join(out)


def to_json(data: object) -> str:
    """JSON with NaN (a class or direction with nothing to measure) written as null, which JSON allows."""
    import json

    def clean(x: object) -> object:
        if isinstance(x, float) and math.isnan(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x

    return json.dumps(clean(data), indent=2, allow_nan=False)
