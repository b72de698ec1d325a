"""A training step's batch and its gradient: what the training loop and its workers share.

Every random choice is a pure function of (seed, step): the images of step s are dataset items
s*B .. s*B+B-1 of a per-epoch permutation (shapes are generated on the fly, so every step sees
new images), the flips and the anchor/RoI sampling use generators seeded with [seed, ..., step].
Resuming therefore replays exactly the run that was interrupted, and two runs with one seed are
equal, however many processes compute them (`parallel.py`).

Naming:
    step        0-based optimizer step; B = cfg.batch_size images per step
    shard       with cfg.grad_shards = S, shard j holds images j*B/S .. (j+1)*B/S - 1 of the step
"""

import math

import numpy as np

from .shapes import ShapesDataset


def default_dataset(cfg, num_images=None, seed=None):
    """Shapes images at the config's size, drawn with the config's generator settings
    (`cfg.shapes`; shape sizes scale with the image: 16..64 px at 128 for gentle, 16..80 hard,
    32..80 large).
    Default: cfg.train_steps * cfg.batch_size images of seed cfg.seed (the training set)."""
    n = cfg.train_steps * cfg.batch_size if num_images is None else num_images
    return ShapesDataset(n, seed=cfg.seed if seed is None else seed, image_size=cfg.image_size,
                         **ShapesDataset.named_settings(cfg.shapes, cfg.image_size))


def hflip(image, target):
    """Mirror an image and its target left-right."""
    w = image.shape[1]
    boxes = target["boxes"].copy()
    boxes[:, [0, 2]] = w - target["boxes"][:, [2, 0]]
    return (np.ascontiguousarray(image[:, ::-1]),
            {"boxes": boxes, "labels": target["labels"],
             "masks": np.ascontiguousarray(target["masks"][:, :, ::-1])})


def batch_indices(step, batch_size, n, seed):
    """Dataset indices of a step's batch: consecutive items of a per-epoch permutation."""
    out = []
    for j in range(batch_size):
        i = step * batch_size + j
        epoch, pos = divmod(i, n)
        out.append(int(np.random.default_rng([seed, 4, epoch]).permutation(n)[pos]) if n > 1 else 0)
    return out


def get_batch(dataset, step, cfg, shard=None):
    """(images, targets) of one step, with random horizontal flips; only shard `shard`'s
    images (the j-th of cfg.grad_shards equal slices of the batch) if given."""
    images, targets = [], []
    indices = batch_indices(step, cfg.batch_size, len(dataset), cfg.seed)
    flips = np.random.default_rng([cfg.seed, 3, step]).random(cfg.batch_size) < 0.5
    per = cfg.batch_size // cfg.grad_shards
    chosen = range(len(indices)) if shard is None else range(shard * per, (shard + 1) * per)
    for j in chosen:
        image, target = dataset[indices[j]]
        if cfg.hflip and flips[j]:
            image, target = hflip(image, target)
        images.append(image)
        targets.append(target)
    return images, targets


def forward_backward(model, images, targets, seed):
    """Forward and (if every loss is finite) backward of one batch, sampling with a generator
    seeded by `seed`; the gradient lands in the model's (zeroed) grads. Returns the losses."""
    model.rng = np.random.default_rng(seed)
    model.zero_grad()
    losses = {k: float(v) for k, v in model.forward(images, targets).items()}
    if all(math.isfinite(v) for v in losses.values()):
        model.backward()
    else:
        model.clear_caches()
    return losses


def shard_forward_backward(model, dataset, step, shard, cfg):
    """`forward_backward` of shard `shard` of step `step`'s batch; returns its losses. With one
    shard this is the whole batch, sampled with the generator of [seed, 2, step]."""
    images, targets = get_batch(dataset, step, cfg, shard=shard)
    seed = [cfg.seed, 2, step] if cfg.grad_shards == 1 else [cfg.seed, 2, step, shard]
    return forward_backward(model, images, targets, seed)
