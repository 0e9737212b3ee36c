"""What bad input gets on the command line: a message on stderr naming the file and the fix, exit status 1, no
traceback, found before any network runs; and outputs that appear only when whole."""
import json
import os
import wave

import numpy as np
import pytest

import musetalk.__main__ as cli
from musetalk import models as models_module
from musetalk.video import BackgroundWriter, VideoWriter, open_frames, read_audio

RATE = 16000


def _speech(path, rate=RATE, seconds=0.5):
    samples = (0.2 * np.sin(np.arange(int(rate * seconds)) / 5) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1), f.setsampwidth(2), f.setframerate(rate)
        f.writeframes(samples.tobytes())
    return str(path)


@pytest.fixture
def job(tmp_path, models_dir, monkeypatch):
    """A 10-frame clip, 0.5 s of speech and boxes saying 'no face' (the frames pass through: a fast real run)."""
    monkeypatch.setenv("MUSETALK_MODELS", models_dir)
    clip = VideoWriter(str(tmp_path / "clip.mp4"), 25, (96, 128))
    clip.write(np.full((10, 96, 128, 3), 90, np.uint8))
    clip.close()
    (tmp_path / "none.json").write_text(json.dumps([None] * 10))
    return {"video": str(tmp_path / "clip.mp4"), "audio": _speech(tmp_path / "speech.wav"),
            "boxes": str(tmp_path / "none.json"), "dir": tmp_path}


@pytest.fixture
def no_networks(monkeypatch):
    """Any attempt to build a network fails the test: the error must come before."""
    def refuse(*_args):
        raise AssertionError("a network was loaded before the bad input was reported")

    monkeypatch.setattr(models_module.MuseTalkModels, "_get", refuse)


def run_cli(capsys, *argv):
    status = cli.main(list(argv))
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return status, captured.out, captured.err


def lipsync_args(job, out, *extra):
    return ["lipsync", "--video", job["video"], "--audio", job["audio"], "--out", str(out), "--bboxes", job["boxes"],
            *extra]


def hidden_files(folder):
    return [name for _, _, files in os.walk(folder) for name in files if name.startswith(".")]


# ------------------------------------------------------------------------------------ outputs only when whole

def interrupting(real, at, error):
    """`real`, raising `error` in the calling (main) thread on its `at`-th call, as Ctrl-C would."""
    calls = []

    def call(*args, **kwargs):
        calls.append(None)
        if len(calls) == at:
            raise error
        return real(*args, **kwargs)

    return call


@pytest.mark.parametrize("where, error", [
    ("write", KeyboardInterrupt()),  # between two batches of frames
    ("write", OSError("disk full")),
    ("audio", KeyboardInterrupt()),  # while the AAC track is written, after every frame
])
def test_interrupted_run_keeps_the_earlier_video_and_frames(job, capsys, monkeypatch, where, error):
    out, frames = job["dir"] / "out.mp4", job["dir"] / "png"
    out.write_bytes(b"an earlier result")
    frames.mkdir()
    (frames / "earlier.png").write_bytes(b"earlier frame")
    if where == "write":
        monkeypatch.setattr(BackgroundWriter, "write", interrupting(BackgroundWriter.write, 2, error))
    else:
        monkeypatch.setattr(VideoWriter, "_write_audio", interrupting(VideoWriter._write_audio, 1, error))
    status, _, err = run_cli(capsys, *lipsync_args(job, out, "--batch-size", "4", "--frames-dir", str(frames)))
    assert status == 1 and err
    assert out.read_bytes() == b"an earlier result"
    assert os.listdir(frames) == ["earlier.png"]
    assert hidden_files(job["dir"]) == []


def test_finished_run_replaces_the_earlier_video_and_frames(job, capsys):
    out, frames = job["dir"] / "out.mp4", job["dir"] / "png"
    out.write_bytes(b"an earlier result")
    frames.mkdir()
    (frames / "earlier.png").write_bytes(b"earlier frame")
    status, _, _ = run_cli(capsys, *lipsync_args(job, out, "--frames-dir", str(frames)))
    assert status == 0 and open_frames(str(out)).count == 12
    assert sorted(os.listdir(frames)) == [f"{i:08d}.png" for i in range(12)]
    assert hidden_files(job["dir"]) == []


def test_the_command_line_reports_progress_per_batch(job, capsys):
    status, out, _ = run_cli(capsys, *lipsync_args(job, job["dir"] / "out.mp4", "--batch-size", "4"))
    lines = out.splitlines()
    start = lines.index("frames: generating, decoding, pasting and writing 12 in 1 chunk(s)")
    assert status == 0 and lines[start + 1:start + 4] == ["  4/12", "  8/12", "  12/12"]
    assert "audio features (whisper)" in lines and "faces of source frames 0..9: crops, masks and VAE encoding" in lines


def test_video_writer_discard_keeps_the_earlier_file(tmp_path):
    out = tmp_path / "out.mp4"
    out.write_bytes(b"earlier")
    writer = VideoWriter(str(out), 25, (16, 16))
    writer.write(np.zeros((3, 16, 16, 3), np.uint8))
    writer.discard()
    assert out.read_bytes() == b"earlier" and os.listdir(tmp_path) == ["out.mp4"]


# ------------------------------------------------------------------------------- outputs checked before any work

@pytest.mark.parametrize("name, expected", [
    ("out.gif", ".gif files cannot hold H.264 video with AAC audio"),
    ("out.webm", ".webm files cannot hold H.264 video with AAC audio"),
    ("out.txt", ".txt files cannot hold H.264 video"),
    ("out", "has no file extension"),
    ("missing/out.mp4", "does not exist"),
    ("clip-folder", "is a folder, not a video file"),
])
def test_unusable_output_is_refused_before_any_network(job, capsys, no_networks, name, expected):
    (job["dir"] / "clip-folder").mkdir()
    out = job["dir"] / name
    status, _, err = run_cli(capsys, *lipsync_args(job, out))
    assert status == 1 and str(out) in err and expected in err and "fix:" in err
    assert "FFmpeg" not in err and "Errno" not in err


def test_output_folder_that_cannot_be_written_is_refused_before_any_network(job, capsys, no_networks, tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    if os.access(folder, os.W_OK):  # root ignores permissions; /proc takes no new files from anyone
        folder = "/proc"
    out = os.path.join(folder, "out.mp4")
    status, _, err = run_cli(capsys, *lipsync_args(job, out))
    assert status == 1 and f"{out}: cannot write to the folder {folder}" in err and "fix:" in err


def test_frames_dir_that_is_a_file_is_refused_before_any_network(job, capsys, no_networks):
    (job["dir"] / "frames.txt").write_text("not a folder")
    status, _, err = run_cli(capsys, *lipsync_args(job, job["dir"] / "out.mp4", "--frames-dir",
                                                   str(job["dir"] / "frames.txt")))
    assert status == 1 and "frames.txt: exists and is not a folder" in err


@pytest.mark.parametrize("spelling", ["same", "relative", "symlink"])
def test_out_equal_to_the_video_is_refused(job, capsys, no_networks, monkeypatch, spelling):
    video = job["video"]
    before = open(video, "rb").read()
    out = video
    if spelling == "relative":
        monkeypatch.chdir(job["dir"])
        out = os.path.join(".", "sub", "..", "clip.mp4")
        os.mkdir("sub")
    elif spelling == "symlink":
        out = str(job["dir"] / "link.mp4")
        os.symlink(video, out)
    status, _, err = run_cli(capsys, *lipsync_args(job, out))
    assert status == 1 and "is the input" in err and "writing there would destroy the input" in err
    assert open(video, "rb").read() == before


def test_out_equal_to_the_audio_is_refused(job, capsys, no_networks):
    status, _, err = run_cli(capsys, "lipsync", "--video", job["video"], "--audio", job["video"], "--out",
                             job["video"])
    assert status == 1 and "is the input" in err


def test_audio_the_aac_encoder_cannot_take_is_resampled_for_it(job, capsys):
    speech = _speech(job["dir"] / "speech192k.wav", rate=192000, seconds=0.48)
    out = job["dir"] / "out.mp4"
    status, _, err = run_cli(capsys, "lipsync", "--video", job["video"], "--audio", speech, "--out", str(out),
                             "--bboxes", job["boxes"])
    assert status == 0, err
    audio, rate = read_audio(str(out))
    assert rate == 96000 and abs(audio.shape[1] / rate - 0.48) < 0.05
    assert open_frames(str(out)).count == 12


def test_aac_rates():
    from musetalk.video import aac_rate

    assert [aac_rate(r) for r in (16000, 44100, 192000, 50000, 4000)] == [16000, 44100, 96000, 48000, 7350]


# ------------------------------------------------------------------------------------------- unusable inputs

def _truncated_fast_start_mp4(path):
    import av

    container = av.open(str(path), "w", options={"movflags": "faststart"})  # the index first: it opens fine
    stream = container.add_stream("libx264", rate=25)
    stream.width, stream.height, stream.pix_fmt = 128, 96, "yuv420p"
    noise = np.random.RandomState(0).randint(0, 255, (40, 96, 128, 3)).astype(np.uint8)
    for frame in noise:
        for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


@pytest.mark.parametrize("kind", ["truncated", "text"])
def test_damaged_video_names_the_file(job, capsys, kind):
    bad = job["dir"] / "bad.mp4"
    if kind == "truncated":
        _truncated_fast_start_mp4(bad)
    else:
        bad.write_text("this is a text file renamed to .mp4\n" * 20)
    status, _, err = run_cli(capsys, "lipsync", "--video", str(bad), "--audio", job["audio"], "--out",
                             str(job["dir"] / "out.mp4"))
    assert status == 1 and f"{bad}: " in err and "damaged, truncated or not a video" in err and "fix:" in err
    assert "Errno" not in err and not (job["dir"] / "out.mp4").exists() and hidden_files(job["dir"]) == []


def test_text_file_as_audio_names_the_file(job, capsys):
    bad = job["dir"] / "speech.mp3"
    bad.write_text("not audio\n" * 20)
    status, _, err = run_cli(capsys, "lipsync", "--video", job["video"], "--audio", str(bad), "--out",
                             str(job["dir"] / "out.mp4"))
    assert status == 1 and f"{bad}: cannot be read as audio" in err and "fix:" in err


def test_missing_bboxes_file_says_it_is_the_bboxes_file(job, capsys, no_networks):
    missing = str(job["dir"] / "boxes-typo.json")
    status, _, err = run_cli(capsys, "lipsync", "--video", job["video"], "--audio", job["audio"], "--out",
                             str(job["dir"] / "out.mp4"), "--bboxes", missing)
    assert status == 1 and f"--bboxes {missing}: the boxes file cannot be read" in err and "fix:" in err


@pytest.mark.parametrize("content, expected", [
    ("[[1, 2, 3]" + ", null" * 9 + "]", "entry 0 (frame 0) is [1, 2, 3]: it must be four numbers"),
    ("[[1, 2, 30, 40]]", "has 1 entries but the images have 10 frames"),
    ("{not json", "is not valid JSON"),
])
def test_bad_bboxes_file_names_the_file_and_the_entry(job, capsys, no_networks, content, expected):
    boxes = job["dir"] / "boxes.json"
    boxes.write_text(content)
    status, _, err = run_cli(capsys, "lipsync", "--video", job["video"], "--audio", job["audio"], "--out",
                             str(job["dir"] / "out.mp4"), "--bboxes", str(boxes))
    assert status == 1 and f"--bboxes {boxes}" in err and expected in err


@pytest.mark.parametrize("device, expected", [
    ("cuda", "device 'cuda': "),
    ("cuda:3", "device 'cuda:3': "),
    ("mps", "device 'mps': Apple's Metal (mps) is not available"),
    ("gpu", "device 'gpu' is not a device name"),
    ("cuda:x", "device 'cuda:x' is not a device name"),
])
def test_unavailable_device_is_a_clear_error(job, capsys, no_networks, monkeypatch, device, expected):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    status, _, err = run_cli(capsys, *lipsync_args(job, job["dir"] / "out.mp4", "--device", device))
    assert status == 1 and expected in err and "fix:" in err


def test_missing_cuda_gpu_index_is_a_clear_error(job, capsys, no_networks, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    status, _, err = run_cli(capsys, *lipsync_args(job, job["dir"] / "out.mp4", "--device", "cuda:1"))
    assert status == 1 and "there is no GPU 1, this machine has 1 (cuda:0..cuda:0)" in err


def test_unusable_input_is_reported_before_missing_weights_are_downloaded(job, capsys, monkeypatch, tmp_path):
    fetched = []
    monkeypatch.setattr(cli, "download", lambda *args: fetched.append(args))
    (tmp_path / "empty-models").mkdir()
    status, _, err = run_cli(capsys, "lipsync", "--video", str(tmp_path / "typo.mp4"), "--audio", job["audio"],
                             "--out", str(tmp_path / "out.mp4"), "--models", str(tmp_path / "empty-models"))
    assert status == 1 and "typo.mp4: no such file or folder" in err and fetched == []


def test_explicit_models_folder_that_does_not_exist_is_an_error_not_a_download(job, capsys, monkeypatch):
    fetched = []
    monkeypatch.setattr(cli, "download", lambda *args: fetched.append(args))
    typo = str(job["dir"] / "modles")
    status, _, err = run_cli(capsys, *lipsync_args(job, job["dir"] / "out.mp4", "--models", typo))
    assert status == 1 and f"--models {typo}: no such folder" in err and fetched == [] and not os.path.exists(typo)
