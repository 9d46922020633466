"""The resume state of a run, without pickle: tensors (optimiser moments, RNG states) in safetensors, the
rest (step, scheduler, optimiser hyper-parameters) in JSON written last and atomically.

torch's RNG state is a uint8 tensor, so it fits safetensors like any weight.
"""

from __future__ import annotations

from pathlib import Path

import torch

STATE_TENSORS = "train_state.safetensors"
STATE_JSON = "train_state.json"


def save_state(
    out: Path, optimizer, scheduler, step: int, rng: dict[str, list[torch.Tensor]], extra: dict
) -> None:
    """Optimiser moments and RNG states to safetensors, everything else to JSON (written last, atomically)."""
    from safetensors.torch import save_file

    from lexsearch.config import save_json

    opt = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, st in opt["state"].items():
        for key, value in st.items():
            if torch.is_tensor(value):
                tensors[f"optim.{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{key}"] = value
    for kind, states in rng.items():
        for r, t in enumerate(states):
            tensors[f"rng.{kind}.{r}"] = t.cpu().contiguous()
    tmp = out / (STATE_TENSORS + ".tmp")
    save_file(tensors, str(tmp))
    tmp.replace(out / STATE_TENSORS)
    sched = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
    meta = dict(extra, step=step, param_groups=opt["param_groups"], optim_scalars=scalars, scheduler=sched)
    save_json(meta, out / STATE_JSON)


def load_state(out: Path, optimizer, scheduler) -> tuple[dict, dict[str, list[torch.Tensor]]]:
    """Restore the optimiser and scheduler; return (the JSON state, RNG states by kind and rank)."""
    from safetensors.torch import load_file

    from lexsearch.config import load_json

    meta = load_json(out / STATE_JSON)
    tensors = load_file(str(out / STATE_TENSORS))
    state: dict[int, dict] = {}
    rng: dict[str, list] = {}
    for name, t in tensors.items():
        head, a, b = name.split(".", 2)
        if head == "optim":
            state.setdefault(int(a), {})[b] = t
        elif head == "rng":
            rng.setdefault(a, []).append((int(b), t))
    for key, value in meta["optim_scalars"].items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    scheduler.load_state_dict(dict(meta["scheduler"], lr_lambdas=[None] * len(optimizer.param_groups)))
    return meta, {k: [t for _, t in sorted(v, key=lambda x: x[0])] for k, v in rng.items()}
