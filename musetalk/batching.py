"""Batches that fit on the device: a batch size bounded by its free memory, halved when a batch does not fit.

The batch size a user gives is an upper bound. On a CUDA device it is lowered to what the free memory holds, from
the activation size per item of each stage (`ITEM_BYTES`, fp32 figures, halved for fp16/bf16); when a batch still
raises torch.cuda.OutOfMemoryError (another program took memory, the estimate was short) the batch size is halved and
the same items are run again, down to one item, and the smaller size is kept for the rest of the stage. Results do not
depend on the batch size beyond float rounding, so a smaller batch only costs speed.
"""
import logging

import torch

log = logging.getLogger("musetalk")

# Peak activation bytes per item in fp32 at MuseTalk's sizes (256x256 crops, 32x32 latents); the decoder's figure is
# measured (bench/README.md), the others are estimates rounded up, since an OOM retry costs more than a smaller
# batch. Weights are not included: they are on the device before the stage runs.
ITEM_BYTES = {"unet": 96 * 2 ** 20, "encode": 320 * 2 ** 20, "decode": 224 * 2 ** 20}
FREE_MEMORY_SHARE = 0.8  # of the free memory: the allocator's fragmentation and the cuDNN workspaces need the rest


def fitting_batch_size(model, batch_size, stage):
    """`batch_size` lowered to what the free memory of `model`'s CUDA device holds for `stage` (a key of ITEM_BYTES);
    unchanged on other devices. At least 1."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if model.device.type != "cuda":
        return batch_size
    free, _ = torch.cuda.mem_get_info(model.device)
    per_item = ITEM_BYTES[stage] * torch.finfo(model.dtype).bits // 32
    return max(1, min(batch_size, int(free * FREE_MEMORY_SHARE) // per_item))


def in_batches(run, total, batch_size, what="batch"):
    """Yield (start, end, run(start, end)) for consecutive batches over items 0..total-1, of at most `batch_size`
    items each. A batch that raises torch.cuda.OutOfMemoryError is run again at half the size (the error is raised
    only for a single item); later batches keep the smaller size. `what` names the stage in the log."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    start = 0
    while start < total:
        end = min(start + batch_size, total)
        try:
            result = run(start, end)
        except torch.cuda.OutOfMemoryError:
            if end - start == 1:
                raise
            batch_size = (end - start) // 2
            log.warning("MuseTalk: %s of %d items does not fit in the device memory; trying %d", what, end - start,
                        batch_size)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            continue
        yield start, end, result
        start = end
