"""The audio path against the official outputs (fixtures a_audio_*), the whisper loaders, the per-frame window
arithmetic at several frame rates and lengths, bad input, and the ComfyUI node."""
import math

import numpy as np
import pytest
import torch
from conftest import fixture, fixture_inputs, load_pack

from musetalk import audio as A
from musetalk.models import ModelFiles, MuseTalkModels
from musetalk.networks.whisper import load_whisper
from musetalk.runtime import ManagedModel, StandaloneRuntime
from musetalk.weights import WeightsError

CASES = {"a_audio_v15_a16": ("v1.5", "a16"), "a_audio_v15_a44": ("v1.5", "a44"),
         "a_audio_v10_a16": ("v1.0", "a16"), "a_audio_v10_a44": ("v1.0", "a44")}
ATOL = 1e-4  # fixtures/README.md: float arrays rtol/atol 1e-4, mel atol 1e-5


def clip(name):
    """(waveform [C,T] float32 = int16/32768, as ComfyUI loads a 16-bit wav; sample rate)."""
    inputs = fixture_inputs()
    samples = inputs[f"audio_{name}"]
    samples = samples[None] if samples.ndim == 1 else samples.T
    return torch.from_numpy(samples.astype(np.float32) / 32768.0), 16000 if name == "a16" else 44100


@pytest.fixture(scope="module")
def models(models_dir):
    return {v: MuseTalkModels(v, ModelFiles([models_dir]), StandaloneRuntime("cpu")) for v in ("v1.5", "v1.0")}


@pytest.fixture(scope="module")
def extracted(models):
    cache = {}

    def get(case):
        if case not in cache:
            version, name = CASES[case]
            waveform, rate = clip(name)
            cache[case] = A.extract_features(models[version], waveform[None], rate, 25)
        return cache[case]

    return get


# ------------------------------------------------------------------------------------------- official outputs

@pytest.mark.parametrize("case", CASES)
def test_log_mel_matches_official(case):
    version, name = CASES[case]
    golden, _ = fixture(case)
    samples, rate = A.check_waveform(*clip(name))
    audio = A.resample_to_16k(samples, rate, version)
    assert len(audio) == 24000
    if version == "v1.5":
        mel = A.log_mel_v15(audio)
    else:
        mel, lengths = A.log_mel_v10(audio)
        assert lengths == [150]
        mel = mel[:, :, :150][0]
    np.testing.assert_allclose(mel.numpy(), golden["mel"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("case", CASES)
def test_frame_index_matches_official(case):
    version, _ = CASES[case]
    golden, sidecar = fixture(case)
    index = A.frame_index_v15(24000, 75, 25.0) if version == "v1.5" else A.frame_index_v10(75, 25.0)
    np.testing.assert_array_equal(index.numpy(), golden["chunk_frame_index"])
    assert len(index) == sidecar["n_chunks"]


@pytest.mark.parametrize("case", CASES)
def test_features_match_official(case, extracted):
    golden, sidecar = fixture(case)
    result = extracted(case)
    features = result.features
    assert features.dtype == torch.float32 and features.device.type == "cpu"
    assert result.frame_count == sidecar["n_chunks"] and features.shape == (sidecar["n_chunks"], 50, 384)

    # hidden states: every stored encoder frame appears in some window; scatter ours back and compare
    index = golden["chunk_frame_index"]
    windows = features.reshape(-1, 10, 5, 384).numpy()
    hidden = np.full(golden["hidden_states"].shape, np.nan, np.float32)
    hidden[index[index >= 0]] = windows[index >= 0]
    np.testing.assert_allclose(hidden, golden["hidden_states"], rtol=0, atol=ATOL)
    assert np.all(windows[index < 0] == 0)

    selected = golden["chunks_selected_index"]
    np.testing.assert_allclose(features[selected].numpy(), golden["chunks_selected"], rtol=ATOL, atol=ATOL)
    # sums of 19200 values: per-value errors of ATOL add up like a random walk
    np.testing.assert_allclose(features.double().sum((1, 2)).numpy(), golden["chunk_sum"],
                               rtol=ATOL, atol=ATOL * math.sqrt(50 * 384))
    np.testing.assert_allclose(features.double().norm(dim=(1, 2)).numpy(), golden["chunk_l2"], rtol=ATOL)


def test_feature_metadata(extracted):
    v15, v10 = extracted("a_audio_v15_a44"), extracted("a_audio_v10_a44")
    assert (v15.version, v10.version) == ("v1.5", "v1.0")
    for result in (v15, v10):
        assert result.fps == 25.0 and result.sample_rate == 16000 and result.duration == pytest.approx(1.5)
        np.testing.assert_allclose(result.frame_times.numpy(), np.arange(result.frame_count) / 25.0)
        assert result.loudness.shape == (result.frame_count,) and torch.isfinite(result.loudness).all()
    assert v10.loudness[-1] == A.SILENCE_DBFS  # v1.0's last frame lies past the end of the 1.5 s audio
    assert v15.loudness.max() > -40


def test_reduced_precision_runs_and_returns_float32(models_dir, extracted):
    # bf16 stands in for the GPU's fp16 on this CPU-only runner: same cast path, LayerNorm statistics kept in fp32
    models = MuseTalkModels("v1.5", ModelFiles([models_dir]), StandaloneRuntime("cpu"), precision="bf16")
    assert models.whisper().dtype == torch.bfloat16
    result = A.extract_features(models, clip("a16")[0], 16000, 25)
    reference = extracted("a_audio_v15_a16").features
    assert result.features.dtype == torch.float32
    assert (result.features - reference).norm() / reference.norm() < 2e-2  # bf16 keeps 8 mantissa bits


# ------------------------------------------------------------------------------------------- whisper loaders

def test_hf_folder_and_tiny_pt_give_the_same_encoder(models_dir):
    hf = load_whisper(f"{models_dir}/whisper", "whisper", "fix").state_dict()
    openai = load_whisper(f"{models_dir}/whisper/tiny.pt", "whisper", "fix").state_dict()
    assert hf.keys() == openai.keys()
    assert all(hf[k].dtype == torch.float32 and torch.equal(hf[k], openai[k]) for k in hf)


def test_models_bundle_builds_whisper_for_both_versions(models):
    for version in ("v1.5", "v1.0"):
        whisper = models[version].whisper()
        assert isinstance(whisper, ManagedModel) and whisper.role == "audio" and whisper.dtype == torch.float32


def _expect_weights_error(path, *needles, load=None):
    """Loading `load` (default `path`) fails with a message naming `path`, whisper-tiny, the fix and `needles`."""
    with pytest.raises(WeightsError) as error:
        load_whisper(str(load or path), "the MuseTalk v1.0 whisper checkpoint", "re-download it")
    message = str(error.value)
    for needle in (str(path), "whisper-tiny", "tiny.pt", "re-download it") + needles:
        assert needle in message
    return message


def test_truncated_file_is_a_weights_error(models_dir, tmp_path):
    data = open(f"{models_dir}/whisper/tiny.pt", "rb").read()
    path = tmp_path / "tiny.pt"
    path.write_bytes(data[:len(data) // 3])
    _expect_weights_error(path, "cannot be read")


def test_missing_key_is_a_weights_error(models_dir, tmp_path):
    checkpoint = torch.load(f"{models_dir}/whisper/tiny.pt", weights_only=True)
    del checkpoint["model_state_dict"]["encoder.blocks.2.attn.query.bias"]
    path = tmp_path / "tiny.pt"
    torch.save(checkpoint, path)
    _expect_weights_error(path, "1 missing: blocks.2.attn.query.bias")


def test_hf_file_where_tiny_pt_is_expected(models_dir):
    _expect_weights_error(f"{models_dir}/whisper/pytorch_model.bin", "Hugging Face", "select the whisper folder")


def test_other_whisper_size_is_a_weights_error(models_dir, tmp_path):
    import json
    import shutil

    config = json.load(open(f"{models_dir}/whisper/config.json"))
    config["d_model"] = 512  # whisper-base
    (tmp_path / "config.json").write_text(json.dumps(config))
    shutil.copy(f"{models_dir}/whisper/pytorch_model.bin", tmp_path)
    _expect_weights_error(tmp_path / "config.json", "d_model", load=tmp_path)


# ------------------------------------------------------------------------------------------- window arithmetic

def official_v15_windows(n_samples, fps):
    """get_whisper_chunk's slicing replayed on frame numbers (-1 = zero padding), with fps kept as a float.
    Returns (windows, whether the official clip-length assert holds); the windows continue with zeros where not."""
    multiplier = 50 / fps
    actual = math.floor(n_samples / 16000 * 50)
    pad = math.ceil(multiplier)
    padded = [-1] * min(pad * 2, actual) + list(range(actual)) + [-1] * min(pad * 3 * 2, actual)
    starts = [math.floor(f * multiplier) for f in range(math.floor(n_samples / 16000 * fps))]
    official_ok = all(len(padded[a:a + 10]) == 10 for a in starts)
    padded += [-1] * 10
    return np.array([padded[a:a + 10] for a in starts]), official_ok


def official_v10_windows(n_features, fps):
    """feature2chunks + get_sliced_feature replayed on frame numbers."""
    windows, i = [], 0
    while True:
        start = int(i * (50. / fps))
        centre = int(i * 50 / fps)
        windows.append([min(max(idx, 0), n_features - 1) for idx in range(centre - 4, centre + 6)])
        i += 1
        if start > n_features:
            return np.array(windows)


@pytest.mark.parametrize("fps", [24, 25, 29.97, 30, 60])
@pytest.mark.parametrize("seconds", [1.5, 7.3, 95.25])
def test_windows_follow_the_official_arithmetic(fps, seconds):
    n = round(seconds * 16000)
    actual = math.floor(n / 16000 * 50)
    ours = A.frame_index_v15(n, actual, float(fps)).numpy()
    official, official_ok = official_v15_windows(n, fps)
    np.testing.assert_array_equal(ours, official)
    # at 50 fps and above the official right padding (6 * ceil(50/fps)) is too short: it exits on the last frames
    assert official_ok == (fps < 50)
    assert len(ours) == math.floor(seconds * fps)  # float fps: 29.97 is not truncated to 29
    assert list(ours[0]).count(-1) == 2 * math.ceil(50 / fps)  # the fps-dependent left padding (quirk 6)
    np.testing.assert_array_equal(A.frame_index_v10(actual, float(fps)).numpy(), official_v10_windows(actual, fps))


def test_frame_counts():
    assert len(A.frame_index_v10(400, 25.0)) == 202  # 8 s: floor(N/2) + 2
    assert len(A.frame_index_v15(60 * 16000, 3000, 29.97)) == 1798  # the official int(fps) gives 1740


class _Runtime(StandaloneRuntime):
    def __init__(self):
        super().__init__("cpu")
        self.batches = []


class _MelProbe(torch.nn.Module):
    """Stands in for whisper: every output frame carries its piece's mean mel value at that frame."""

    def __init__(self, runtime):
        super().__init__()
        self.runtime = runtime
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, mel, final_norm):
        self.runtime.batches.append(len(mel))
        return mel[:, :, ::2].mean(1)[:, :, None, None].expand(-1, -1, 5, 384).contiguous()


class _ProbeModels:
    def __init__(self, version):
        self.version = version
        self.runtime = _Runtime()
        self._whisper = ManagedModel(_MelProbe(self.runtime), "audio", torch.device("cpu"), torch.float32)

    def whisper(self):
        return self._whisper


@pytest.mark.parametrize("version", ["v1.5", "v1.0"])
def test_long_audio_is_encoded_in_30_s_pieces(version, monkeypatch):
    monkeypatch.setattr(A, "PIECES_PER_BATCH", 2)
    seconds, loud_from = 65.0, 31.0  # 3 pieces: two encoder batches
    t = np.arange(int(seconds * 16000)) / 16000
    audio = (np.where(t >= loud_from, 0.5, 0.001) * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    models = _ProbeModels(version)
    result = A.extract_features(models, torch.from_numpy(audio)[None], 16000, 25)
    assert models.runtime.batches == [2, 1]
    n_features = seconds * 50
    assert result.frame_count == (seconds * 25 if version == "v1.5" else n_features // 2 + 2)
    centre = result.features[:, 4 * 5, 0]  # window slot 4 = encoder frame 2f, the frame's own time
    boundary = int(loud_from * 25)
    assert centre[boundary - 5:boundary - 1].max() < centre[boundary + 1:boundary + 5].min()
    assert result.loudness[boundary - 2] < -40 < result.loudness[boundary + 2]


# ------------------------------------------------------------------------------------------- inputs

def test_resampling_channel_layouts_and_rates():
    for version in ("v1.5", "v1.0"):
        for rate in (8000, 22050, 48000, 192000):
            audio = A.resample_to_16k(np.zeros((2, rate // 2), np.float32) + 0.25, rate, version)
            assert audio.dtype == np.float32 and len(audio) == 8000
        surround = np.zeros((6, 4800), np.float32)
        surround[3] = 0.5  # LFE only: ffmpeg's downmix drops it, librosa averages it in
        mono = A.resample_to_16k(surround, 48000, version)
        assert abs(mono[200:1400].mean()) == (0 if version == "v1.0" else pytest.approx(0.5 / 6, abs=1e-3))


def test_sixteen_bit_sources_take_ffmpeg_s16_path():
    samples, rate = A.check_waveform(*clip("a44"))
    floats = samples + np.float32(1e-7)  # no longer on the int16 grid: the float path, a few LSB apart
    s16, f32 = A.resample_to_16k(samples, rate, "v1.0"), A.resample_to_16k(floats, rate, "v1.0")
    assert np.all(np.round(s16 * 32768) == s16 * 32768) and 0 < np.abs(s16 - f32).max() * 32768 <= 8


def test_silence_is_valid_and_quiet():
    samples, rate = A.check_waveform(torch.zeros(1, 1, 16000), 16000)
    assert samples.shape == (1, 16000)
    loudness = A.frame_loudness(np.zeros(16000, np.float32), 25, 25.0)
    assert (loudness == A.SILENCE_DBFS).all()
    full_scale = A.frame_loudness(np.ones(16000, np.float32), 25, 25.0)
    assert torch.allclose(full_scale, torch.zeros(25), atol=1e-6)


def test_int16_input_is_scaled_exactly():
    samples, _ = A.check_waveform(np.array([[-32768, 0, 16384]], np.int16), 16000)
    np.testing.assert_array_equal(samples, [[-1.0, 0.0, 0.5]])


@pytest.mark.parametrize("waveform, rate, needle", [
    (torch.zeros(1, 2, 0), 16000, "empty"),
    (torch.zeros(2, 1, 16000), 16000, "batch of 2 clips"),
    (torch.zeros(16000, 2), 16000, "transpose"),
    (torch.zeros(1, 1, 16000), 7999, "sample rate 7999"),
    (torch.zeros(1, 1, 16000), 200000, "between 8000 and 192000"),
    (torch.zeros(1, 1, 16000), 22050.5, "whole number"),
])
def test_bad_waveforms(waveform, rate, needle):
    with pytest.raises(ValueError, match=needle):
        A.check_waveform(waveform, rate)


def test_nan_is_located():
    waveform = torch.zeros(1, 2, 48000)
    waveform[0, 1, 24000] = float("nan")
    waveform[0, 1, 30000] = float("inf")
    with pytest.raises(ValueError, match=r"2 samples .* channel 1 at sample 24000 \(0.500 s\)"):
        A.check_waveform(waveform, 48000)


@pytest.mark.parametrize("fps", [0, -25, 240.5, float("nan"), float("inf")])
def test_bad_fps(fps):
    with pytest.raises(ValueError, match="fps"):
        A.check_fps(fps)


def test_audio_shorter_than_a_frame():
    with pytest.raises(ValueError, match="shorter than one video frame"):
        A.extract_features(_ProbeModels("v1.5"), torch.zeros(1, 1, 500), 16000, 25)


# ------------------------------------------------------------------------------------------- node

def test_node_through_the_pack(models_dir, extracted):
    pack = load_pack()
    node = pack.NODE_CLASS_MAPPINGS["AudioToWhisperFeatures"]
    assert pack.NODE_DISPLAY_NAME_MAPPINGS["AudioToWhisperFeatures"] == "MuseTalk Audio To Whisper Features"
    required = node.INPUT_TYPES()["required"]
    assert [required[k][0] for k in ("model", "audio", "fps")] == ["MUSETALK_MODEL", "AUDIO", "FLOAT"]
    assert {k: required["fps"][1][k] for k in ("default", "min", "max", "step")} == {
        "default": 25.0, "min": 1.0, "max": 240.0, "step": 0.001}
    assert node.RETURN_TYPES == ("MUSETALK_WHISPER_FEATURES", "INT")

    models = pack.musetalk.models.MuseTalkModels("v1.5", pack.musetalk.models.ModelFiles([models_dir]),
                                                 pack.musetalk.runtime.StandaloneRuntime("cpu"))
    waveform, rate = clip("a44")
    audio = {"waveform": waveform[None], "sample_rate": rate}
    features, frame_count = getattr(node(), node.FUNCTION)(models, audio, 25.0)
    assert frame_count == features.frame_count == 37
    assert torch.equal(features.features, extracted("a_audio_v15_a44").features)


def _elements_written(function):
    """Elements of every tensor the torch operations inside `function()` produce (what they copy or compute)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in (out if isinstance(out, (tuple, list)) else [out]):
                if isinstance(t, torch.Tensor) and not func.__name__.startswith(("view", "_unsafe_view", "slice",
                                                                                 "alias", "select", "reshape")):
                    Count.total += t.numel()
            return out

    with Count():
        function()
    return Count.total


@pytest.mark.parametrize("version", ["v1.5", "v1.0"])
def test_building_a_batch_of_tokens_costs_the_batch_not_the_clip(version):
    """A batch's tokens copy its own windows only: the same work for a 10 s clip and a 10 minute one."""
    from musetalk.audio import WhisperFeatures, frame_index_v10, frame_index_v15

    costs = []
    for seconds in (10, 600):
        hidden = torch.randn(seconds * 50, 5, 384)
        index = frame_index_v15(seconds * 16000, len(hidden), 25.0) if version == "v1.5" \
            else frame_index_v10(len(hidden), 25.0)
        features = WhisperFeatures(hidden, index, 25.0, torch.zeros(len(index)), torch.zeros(len(index)), version,
                                   16000, float(seconds))
        windows = features.windows(list(range(len(index))))
        tokens = windows[8:16]
        assert torch.equal(tokens, features.window(8, 16)) and tokens.shape == (8, 50, 384)
        costs.append((_elements_written(lambda: features.window(100, 108)),
                      _elements_written(lambda: windows[100:108])))
    assert costs[0] == costs[1] and max(costs[0]) < 4 * 8 * 50 * 384


def test_windows_read_zeros_outside_the_audio():
    from musetalk.audio import gather_windows

    hidden = torch.arange(4 * 5 * 384, dtype=torch.float32).reshape(4, 5, 384) + 1
    index = torch.tensor([[-1] * 4 + [0, 1, 2, 3, -1, -1]])
    tokens = gather_windows(hidden, index).reshape(1, 10, 5, 384)
    assert (tokens[0, :4] == 0).all() and (tokens[0, 8:] == 0).all()
    assert torch.equal(tokens[0, 4:8], hidden)
