"""Batches that fit: halving on out-of-memory, the free-memory bound, and the stages using them."""
import pytest
import torch

from musetalk import batching, inpaint
from musetalk.runtime import ManagedModel


class FitsUpTo:
    """A stand-in network that raises CUDA's out-of-memory error for batches above `limit` items."""

    def __init__(self, limit):
        self.limit, self.sizes = limit, []

    def __call__(self, start, end):
        self.sizes.append(end - start)
        if end - start > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (test)")
        return list(range(start, end))


def test_a_batch_that_does_not_fit_is_halved_and_run_again():
    network = FitsUpTo(3)
    results = list(batching.in_batches(network, 21, 16))
    # 16 fails, 8 fails, 4 fails, 2 fits; the rest of the stage keeps 2
    assert network.sizes[:4] == [16, 8, 4, 2] and set(network.sizes[4:]) <= {2, 1}
    assert [item for _, _, items in results for item in items] == list(range(21))
    assert all(end - start <= 2 for start, end, _ in results)


def test_a_single_item_that_does_not_fit_raises():
    with pytest.raises(torch.cuda.OutOfMemoryError):
        list(batching.in_batches(FitsUpTo(0), 5, 4))


def test_other_errors_are_not_retried():
    def broken(start, end):
        raise ValueError("not memory")

    with pytest.raises(ValueError, match="not memory"):
        list(batching.in_batches(broken, 5, 4))


def test_batch_size_bounded_by_free_memory_on_cuda_only(monkeypatch):
    free = 10 * batching.ITEM_BYTES["decode"]
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (free, 4 * free))
    on_gpu = ManagedModel(torch.nn.Linear(1, 1), "vae", torch.device("cuda"), torch.float32)
    assert batching.fitting_batch_size(on_gpu, 64, "decode") == int(10 * batching.FREE_MEMORY_SHARE)
    assert batching.fitting_batch_size(on_gpu, 4, "decode") == 4  # the user's batch size stays an upper bound
    half = ManagedModel(torch.nn.Linear(1, 1), "vae", torch.device("cuda"), torch.float16)
    assert batching.fitting_batch_size(half, 64, "decode") == int(20 * batching.FREE_MEMORY_SHARE)
    on_cpu = ManagedModel(torch.nn.Linear(1, 1), "vae", torch.device("cpu"), torch.float32)
    assert batching.fitting_batch_size(on_cpu, 64, "decode") == 64
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (0, free))
    assert batching.fitting_batch_size(on_gpu, 64, "decode") == 1


class TinyUNet(torch.nn.Module):
    """Adds the mean of the audio context to the first four latent channels; out of memory above 2 items."""

    def forward(self, sample, timestep, context):
        if len(sample) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (test)")
        return sample[:, :4] + context.mean(dim=(1, 2))[:, None, None, None]


class TinyModels:
    def __init__(self, runtime, unet):
        self.runtime, self._unet = runtime, unet

    def unet(self):
        return self._unet


def test_the_unet_stage_survives_out_of_memory_with_the_same_results():
    from musetalk.runtime import StandaloneRuntime

    runtime = StandaloneRuntime("cpu")
    models = TinyModels(runtime, ManagedModel(TinyUNet(), "unet", torch.device("cpu"), torch.float32))
    latents = torch.randn(3, 8, 32, 32)
    features = torch.randn(7, 50, 384)
    index = [0, 1, 2, 2, 1, 0, 0]
    predicted = inpaint.inpaint_latents(models, latents, features, index, batch_size=8)
    context = inpaint.audio_context(features, "cpu", torch.float32)
    expected = latents[index][:, :4] + context.mean(dim=(1, 2))[:, None, None, None]
    torch.testing.assert_close(predicted, expected)


class TinyVAE(torch.nn.Module):
    """Decodes each latent to a flat grey face of its mean; out of memory above `limit` items."""

    def __init__(self, limit):
        super().__init__()
        self.limit, self.sizes = limit, []

    def decode(self, latents):
        self.sizes.append(len(latents))
        if len(latents) > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (test)")
        return latents.mean(dim=(1, 2, 3))[:, None, None, None].tanh().expand(-1, 3, 256, 256)


class FacesEverywhere:
    """A face track whose every frame has a face (the paste itself is replaced in the test)."""

    def __init__(self, count):
        self.paste_boxes = [(0, 0, 256, 256)] * count


def render(vae_limit, monkeypatch):
    from musetalk import compose, lipsync
    from musetalk.runtime import StandaloneRuntime

    def paste_whole_face(faces, frames, sources, active, generated, levels=None):
        frames[active] = generated
        return frames

    monkeypatch.setattr(compose, "paste_mouths", paste_whole_face)
    vae = ManagedModel(TinyVAE(vae_limit), "vae", torch.device("cpu"), torch.float32)
    models = TinyModels(StandaloneRuntime("cpu"), None)
    models.vae = lambda: vae
    samples = torch.randn(19, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    index = torch.tensor([0, 1, 2, 2, 1, 0, 0, 1, 2] * 2 + [0])
    frames = list(lipsync.render_frames(models, FacesEverywhere(3), samples, index,
                                        lambda sources: torch.zeros(len(sources), 256, 256, 3, dtype=torch.uint8),
                                        batch_size=8))
    return torch.cat(frames), vae.module.sizes


def test_the_decode_survives_out_of_memory_with_the_same_frames(monkeypatch):
    expected, _ = render(19, monkeypatch)
    frames, sizes = render(2, monkeypatch)
    assert sizes[:3] == [8, 4, 2] and max(sizes[3:]) <= 2  # the size that fitted is kept for the later batches
    assert torch.equal(frames, expected) and len(frames) == 19
