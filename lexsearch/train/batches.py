"""Batches for training: (pixels, captions) per rank and step, from caption folders or WebDataset shards.

The batches of a step are a pure function of (seed, epoch, step, rank), so resuming at a step needs no saved
sampler state. Images are decoded and preprocessed in DataLoader workers, ahead of the model.
"""

from __future__ import annotations

import logging
import math
import os
import time

import numpy as np
import torch

from lexsearch.errors import DataError, UsageError
from lexsearch.model.images import preprocess
from lexsearch.train import distributed as D
from lexsearch.train.config import TrainConfig

log = logging.getLogger(__name__)


class PairImages(torch.utils.data.Dataset):
    """Map-style (pixels, caption) over a FolderPairs, decoded in DataLoader workers."""

    def __init__(self, pairs, size: int, mean, std) -> None:
        self.pairs, self.size, self.mean, self.std = pairs, size, tuple(mean), tuple(std)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int):
        pair = self.pairs[i]
        return preprocess(pair.image, self.size, self.mean, self.std), pair.caption


class ImageKeys(torch.utils.data.Dataset):
    """Pixels of the unique images of a FolderPairs (validation's image side)."""

    def __init__(self, pairs, size: int, mean, std) -> None:
        self.pairs, self.size, self.mean, self.std = pairs, size, tuple(mean), tuple(std)

    def __len__(self) -> int:
        return len(self.pairs.images)

    def __getitem__(self, j: int):
        return preprocess(self.pairs.load_image(self.pairs.images[j]), self.size, self.mean, self.std)


def image_batches(pairs, model_config, batch_size: int, num_workers: int):
    """Batches of preprocessed pixels (B, 3, S, S) of a FolderPairs' unique images, in order."""
    return torch.utils.data.DataLoader(
        ImageKeys(pairs, model_config.image_size, model_config.image_mean, model_config.image_std),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=lambda b: torch.from_numpy(np.stack(b)),
    )


class ShardStream(torch.utils.data.IterableDataset):
    """(pixels, caption) from this rank's share of WebDataset shards for one epoch."""

    def __init__(self, pairs, size: int, mean, std, info: D.DistInfo, seed: int, epoch: int) -> None:
        self.pairs, self.size, self.mean, self.std = pairs, size, tuple(mean), tuple(std)
        self.info, self.seed, self.epoch = info, seed, epoch

    def __iter__(self):
        for pair in self.pairs.iterate(
            rank=self.info.rank,
            world_size=self.info.world_size,
            seed=self.seed,
            epoch=self.epoch,
            shuffle=True,
        ):
            yield preprocess(pair.image, self.size, self.mean, self.std), pair.caption


def _collate(batch):
    pixels = torch.from_numpy(np.stack([b[0] for b in batch]))
    return pixels, [b[1] for b in batch]


def count_shard_samples(urls: list[str]) -> int:
    """Samples (keys with an image member) in local tar shards, from the tar headers alone."""
    import tarfile

    from lexsearch.data.pairs import IMAGE_EXTENSIONS

    total = 0
    for url in urls:
        try:
            with tarfile.open(url) as tar:
                keys = set()
                for member in tar:
                    base, _, ext = member.name.rpartition(".")
                    if ext.lower() in IMAGE_EXTENSIONS:
                        keys.add(base)
                total += len(keys)
        except (OSError, tarfile.TarError) as exc:
            raise DataError(f"{url}: cannot read shard ({exc})") from exc
    return total


def steps_per_epoch(pairs, config: TrainConfig, info: D.DistInfo) -> int:
    """Global batches in one epoch of ``pairs`` (0 for remote shards of unknown size); a UsageError when the
    pairs cannot fill one batch. Cheap: the training loop calls it before any base model is built."""
    if config.batch_size % info.world_size:
        raise UsageError(f"--batch-size {config.batch_size} is not divisible by {info.world_size} ranks")
    per_rank = config.batch_size // info.world_size
    streaming = not hasattr(pairs, "__len__")
    if streaming:
        if any("://" in u for u in pairs.urls):
            n = 0  # remote shards: their size is unknown without reading them all
        else:
            n = count_shard_samples(pairs.urls) - len(pairs.exclude)
    else:
        n = len(pairs)
    steps = (n // info.world_size) // per_rank if n else 0
    if steps == 0 and not (streaming and config.max_steps > 0):
        held = " (after holding out the validation images)" if not streaming and not config.val_data else ""
        raise UsageError(
            f"{pairs.source}: {n} training pairs{held} cannot fill one batch of {config.batch_size}; "
            f"lower --batch-size (at most {n})"
            + (" or give max_steps for remote shards" if streaming else "")
        )
    return steps


# Caption folders up to this many images are decoded in full before training (~1 ms per toy image with two
# threads); beyond it only the first ones are, so the check stays within seconds on COCO-sized folders.
CHECK_IMAGES = 5000


def check_images(pairs, limit: int = CHECK_IMAGES) -> int:
    """Decode the images of a caption folder (``FolderPairs``; up to ``limit``) so that a missing or broken
    file stops the run at once with its name, not minutes later in a DataLoader worker. Returns the number
    checked; shard streams are read as they train (0)."""
    from concurrent.futures import ThreadPoolExecutor

    if not hasattr(pairs, "images"):
        return 0
    keys = pairs.images[:limit]

    def decode(key: str) -> None:
        pairs.load_image(key)  # DataError naming the file and the reason

    # Pillow releases the GIL while decoding: threads overlap the files.
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        for _ in pool.map(decode, keys):
            pass
    return len(keys)


class Batches:
    """Per-rank batches of each step: a pure function of (seed, epoch, step), so resume needs no state."""

    def __init__(
        self, pairs, config: TrainConfig, info: D.DistInfo, model_config, steps: int | None = None
    ) -> None:
        """``steps``: :func:`steps_per_epoch` of these pairs when the caller has it already."""
        self.pairs, self.config, self.info = pairs, config, info
        self.image = (model_config.image_size, model_config.image_mean, model_config.image_std)
        self.steps_per_epoch = steps_per_epoch(pairs, config, info) if steps is None else steps
        self.per_rank = config.batch_size // info.world_size
        self.tokens: torch.Tensor | None = None  # backbone tokens per image (use_backbone_tokens)
        self.streaming = not hasattr(pairs, "__len__")

    def use_backbone_tokens(self, tokens: torch.Tensor) -> None:
        """Yield rows of ``tokens`` (N_images, T, Hv: the frozen backbone's output for ``pairs.images``)
        instead of decoded pixels; the batches (which pairs, in which order) stay the same."""
        if self.streaming or tokens.shape[0] != len(self.pairs.images):
            raise ValueError("backbone tokens need a caption folder and one row per image")
        self.tokens = tokens
        self.token_rows = torch.tensor(self.pairs.caption_image, dtype=torch.long, device=tokens.device)

    def _cached(self, epoch: int, skip: int):
        batches = D.rank_batches(len(self.pairs), self.config.batch_size, self.info, self.config.seed, epoch)
        for batch in batches[skip:]:
            rows = self.token_rows[torch.tensor(batch, dtype=torch.long, device=self.tokens.device)]
            yield self.tokens[rows], [self.pairs.captions[i] for i in batch]

    def _loader(self, epoch: int, skip: int):
        if self.tokens is not None:
            return self._cached(epoch, skip), 0
        workers = self.config.num_workers
        if self.streaming:
            ds = ShardStream(self.pairs, *self.image, self.info, self.config.seed, epoch)
            return torch.utils.data.DataLoader(
                ds, batch_size=self.per_rank, drop_last=True, num_workers=workers, collate_fn=_collate
            ), skip
        batches = D.rank_batches(len(self.pairs), self.config.batch_size, self.info, self.config.seed, epoch)
        ds = PairImages(self.pairs, *self.image)
        loader = torch.utils.data.DataLoader(
            ds,
            batch_sampler=batches[skip:],
            num_workers=workers,
            collate_fn=_collate,
            persistent_workers=False,
        )
        return loader, 0

    def iterate(self, start_step: int):
        """Yield (epoch, pixels, captions) from ``start_step`` on, epoch after epoch, forever (backbone
        tokens instead of pixels after :meth:`use_backbone_tokens`)."""
        spe = max(self.steps_per_epoch, 1)
        epoch, offset = divmod(start_step, spe) if self.steps_per_epoch else (0, start_step)
        while True:
            loader, skip = self._loader(epoch, offset)
            produced = 0
            for batch in loader:
                if skip:  # shards: skipping means reading (streams cannot seek); only after a resume
                    skip -= 1
                    continue
                yield epoch, batch[0], batch[1]
                produced += 1
                if self.steps_per_epoch and offset + produced >= self.steps_per_epoch:
                    break  # every rank takes the same number of steps, whatever its shards hold
            if self.streaming and produced == 0 and not skip:
                raise DataError(
                    f"{self.pairs.source}: rank {self.info.rank} got no samples; use at least "
                    "ranks x num_workers shards"
                )
            if self.streaming and self.steps_per_epoch and offset + produced < self.steps_per_epoch:
                log.warning(
                    "rank %d ran out of shard samples in epoch %d; starting its stream again",
                    self.info.rank,
                    epoch,
                )
                offset += produced
                continue
            epoch, offset = epoch + 1, 0


@torch.no_grad()
def backbone_tokens(
    model,
    pairs,
    device: torch.device,
    batch_size: int,
    num_workers: int,
    max_gb: float,
    max_seconds: float = math.inf,
):
    """The frozen backbone's tokens of every image of a caption folder (N_images, T, Hv) on ``device``, or
    None (with a log line) for shard streams, folders whose tokens would take more than ``max_gb``, and
    those whose first batch projects more than ``max_seconds`` for all of them."""
    from lexsearch.model.encoder import autocast

    if not hasattr(pairs, "images"):
        log.info("backbone tokens are not cached for shard streams")
        return None
    vision = model.vision.config
    n_tokens = model.num_prefix_tokens + (model.config.image_size // model.patch_size) ** 2
    gb = len(pairs.images) * n_tokens * int(vision.hidden_size) * 4 / 1e9
    if gb > max_gb:
        log.info(
            "backbone tokens not cached: %d images would take %.1f GB (> %.1f)", len(pairs.images), gb, max_gb
        )
        return None
    if max_seconds <= 0:
        log.info("backbone tokens not cached: no time is left for them")
        return None
    rows = []
    t0 = time.monotonic()
    n_batches = math.ceil(len(pairs.images) / batch_size)
    for pixels in image_batches(pairs, model.config, batch_size, num_workers):
        with autocast(device):
            rows.append(model.backbone_tokens(pixels.to(device)).float())
        if len(rows) == 1 and (time.monotonic() - t0) * n_batches > max_seconds:
            log.info("backbone tokens not cached: they would take longer than the time left allows")
            return None
    log.info("backbone tokens of %d images cached (%.2f GB)", len(pairs.images), gb)
    return torch.cat(rows)


def load_data(config: TrainConfig):
    """(train pairs, validation FolderPairs) from --data and --val-data or a held-out split."""
    from lexsearch.data.pairs import FolderPairs, load_pairs, split_holdout

    pairs = load_pairs(config.data, config.images or None, config.split)
    if config.val_data:
        val = load_pairs(config.val_data)
        if not isinstance(val, FolderPairs):
            raise UsageError("--val-data must be a caption folder (captions.jsonl / captions.csv)")
        return pairs, val
    holdout = config.val_holdout
    if isinstance(pairs, FolderPairs):
        n_images = len(pairs.images)
        n = round(holdout) if holdout >= 1 else max(1, round(holdout * n_images))
        n = min(n, config.val_max_images, n_images - 1)
        if n < 1:
            raise UsageError(f"{config.data}: too few images to hold out a validation set; give --val-data")
        return split_holdout(pairs, int(n), seed=config.seed)
    n = round(holdout) if holdout >= 1 else config.val_max_images
    return split_holdout(pairs, int(min(n, config.val_max_images)), seed=config.seed)
