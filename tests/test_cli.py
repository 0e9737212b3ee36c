"""`python -m musetalk lipsync`: the standalone job gives the nodes' frames and a correct, playable mp4."""
import json
import os
import shutil
import wave

import numpy as np
import torch
from PIL import Image

import musetalk.__main__ as cli
from conftest import FIXTURES, fixture_inputs, load_pack
from musetalk.video import VideoWriter, open_frames, read_audio
from test_lipsync_nodes import NO_FACE, run_nodes


def _write_frames(folder, frames_bgr):
    os.makedirs(folder)
    for i, frame in enumerate(frames_bgr):
        Image.fromarray(frame[..., ::-1]).save(os.path.join(folder, f"{i}.png"))


def test_cli_writes_the_frames_the_nodes_compute(models_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MUSETALK_MODELS", models_dir)
    inputs = fixture_inputs()
    _write_frames(tmp_path / "frames", inputs["frames_bgr"])
    boxes = [None if i == NO_FACE else box.tolist() for i, box in enumerate(inputs["bboxes"])]
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))
    status = cli.main(["lipsync", "--video", str(tmp_path / "frames"), "--audio",
                       os.path.join(FIXTURES, "input_a16.wav"), "--out", str(tmp_path / "out.mp4"),
                       "--bboxes", str(tmp_path / "boxes.json"), "--batch-size", "4",
                       "--frames-dir", str(tmp_path / "png")])
    assert status == 0
    written = sorted(os.listdir(tmp_path / "png"))
    assert len(written) == 37 and written[0] == "00000000.png"
    ours = np.stack([np.asarray(Image.open(tmp_path / "png" / name)) for name in written])
    _, _, _, _, frames, _ = run_nodes(load_pack().NODE_CLASS_MAPPINGS, "v1.5", "jaw")
    assert np.array_equal(ours, (frames * 255).round().to(torch.uint8).numpy())


def test_cli_mp4_has_the_audio_length_rate_and_track(models_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MUSETALK_MODELS", models_dir)
    rate, seconds, fps = 16000, 2.0, 25
    clip = VideoWriter(str(tmp_path / "clip.mp4"), fps, (96, 128))
    clip.write(np.full((30, 96, 128, 3), 90, np.uint8))  # 1.2 s of video: the cycle covers the 2 s of speech
    clip.close()
    speech = (0.2 * np.sin(np.arange(int(rate * seconds)) / 5)).astype(np.float32)[None]
    with wave.open(str(tmp_path / "speech.wav"), "wb") as f:
        f.setnchannels(1), f.setsampwidth(2), f.setframerate(rate)
        f.writeframes((speech[0] * 32767).astype("<i2").tobytes())
    (tmp_path / "none.json").write_text(json.dumps([None] * 30))  # no face: frames pass through
    assert cli.main(["lipsync", "--video", str(tmp_path / "clip.mp4"), "--audio", str(tmp_path / "speech.wav"),
                     "--out", str(tmp_path / "out.mp4"), "--bboxes", str(tmp_path / "none.json")]) == 0
    result = open_frames(str(tmp_path / "out.mp4"))
    assert result.fps == fps and result.count == int(seconds * fps) and result.size == (96, 128)
    audio, audio_rate = read_audio(str(tmp_path / "out.mp4"))
    assert audio_rate == rate and abs(audio.shape[1] / rate - seconds) < 0.1  # AAC adds its encoder delay


def test_source_frames_past_the_speech_are_never_analysed(models_dir, tmp_path, monkeypatch):
    """12 frames of video under 0.2 s of speech: only the 5 frames the output shows are detected and encoded."""
    import musetalk.pipeline as pipeline

    monkeypatch.setenv("MUSETALK_MODELS", models_dir)
    inputs = fixture_inputs()
    _write_frames(tmp_path / "frames", inputs["frames_bgr"])
    rate = 16000
    with wave.open(str(tmp_path / "short.wav"), "wb") as f:
        f.setnchannels(1), f.setsampwidth(2), f.setframerate(rate)
        f.writeframes(inputs["audio_a16"][:int(0.2 * rate)].astype("<i2").tobytes())
    (tmp_path / "boxes.json").write_text(json.dumps([b.tolist() if b[0] >= 0 else None for b in inputs["bboxes"]]))
    analysed = []
    real = pipeline.detect_and_parse
    monkeypatch.setattr(pipeline, "detect_and_parse", lambda models, frames, *a: analysed.append(len(frames))
                        or real(models, frames, *a))
    assert cli.main(["lipsync", "--video", str(tmp_path / "frames"), "--audio", str(tmp_path / "short.wav"),
                     "--out", str(tmp_path / "out.mp4"), "--bboxes", str(tmp_path / "boxes.json")]) == 0
    assert analysed == [5] and open_frames(str(tmp_path / "out.mp4")).count == 5


def test_cli_fetches_missing_weights_first(models_dir, tmp_path, monkeypatch):
    root = tmp_path / "models"
    calls = []

    def fake_download(version, to, log):
        calls.append((version, to))
        shutil.copytree(models_dir, to, dirs_exist_ok=True, symlinks=True)

    monkeypatch.setattr(cli, "download", fake_download)
    root.mkdir()  # an explicit --models folder must exist (a typo must not start a download)
    files = cli.ModelFiles([str(root)])
    assert files.missing("v1.5") == ["unet", "vae", "whisper", "dwpose", "face_parsing", "s3fd"]
    import musetalk.pipeline as pipeline

    monkeypatch.setattr(pipeline, "lipsync",
                        lambda models, *args, **kwargs: calls.append(models.files.missing("v1.5")) or 1)
    _write_frames(tmp_path / "frames", fixture_inputs()["frames_bgr"][:1])
    status = cli.main(["lipsync", "--video", str(tmp_path / "frames"), "--audio", os.path.join(FIXTURES, "input_a16.wav"),
                       "--out", str(tmp_path / "o.mp4"), "--models", str(root)])
    assert status == 0 and calls == [("v1.5", str(root)), []]  # downloaded, then the job ran on complete weights


def test_cli_reports_bad_input_without_a_traceback(models_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MUSETALK_MODELS", models_dir)
    assert cli.main(["lipsync", "--video", os.path.join(FIXTURES, "input_a16.wav"), "--audio",
                     os.path.join(FIXTURES, "input_a16.wav"), "--out", str(tmp_path / "o.mp4")]) == 1
    err = capsys.readouterr().err
    assert "input_a16.wav: has no video stream" in err and "Traceback" not in err


def test_cli_reports_bad_boxes_naming_the_file_and_entry(models_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MUSETALK_MODELS", models_dir)
    _write_frames(tmp_path / "frames", fixture_inputs()["frames_bgr"][:2])
    (tmp_path / "boxes.json").write_text("[[1, 2, 3], null]")
    assert cli.main(["lipsync", "--video", str(tmp_path / "frames"), "--audio", os.path.join(FIXTURES, "input_a16.wav"),
                     "--out", str(tmp_path / "o.mp4"), "--bboxes", str(tmp_path / "boxes.json")]) == 1
    err = capsys.readouterr().err
    assert f"--bboxes {tmp_path / 'boxes.json'} entry 0 (frame 0) is [1, 2, 3]: it must be four numbers" in err
    assert "Traceback" not in err and not (tmp_path / "o.mp4").exists()


def _commands(parser, prefix=""):
    """(name, parser) of every command and subcommand ("avatar prepare"), walking nested subparsers."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, command in action.choices.items():
                yield prefix + name, command
                yield from _commands(command, prefix + name + " ")


def test_every_option_of_every_command_has_help_that_shows_its_default():
    import argparse

    commands = dict(_commands(cli.build_parser()))
    assert {"lipsync", "avatar", "avatar prepare", "avatar speak", "download", "check"} <= set(commands)
    for name, command in commands.items():
        text = " ".join(command.format_help().split())
        for action in command._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"{name} {action.option_strings} has no help"
            if action.default is not None:
                assert f"(default: {action.default})" in text, f"{name} {action.option_strings}: default not shown"
            elif not action.required:
                assert "default" in action.help, f"{name} {action.option_strings}: says nothing of its default"
    bboxes = " ".join(commands["lipsync"].format_help().split())
    assert "or a single [x1,y1,x2,y2] used for every frame" in bboxes
    # avatar prepare takes the video and face options of lipsync, avatar speak its speech options (not --version)
    options = {name: {o for a in command._actions for o in a.option_strings} for name, command in commands.items()}
    speech = {"--audio", "--out", "--cycle", "--silence", "--silence-threshold-db", "--audio-offset-ms", "--frames-dir"}
    video = options["lipsync"] - speech - {"--version", "--models", "--batch-size", "--precision", "--device", "-h",
                                           "--help"}
    assert "--bbox-shift" in video and "--fps" in video
    assert options["avatar prepare"] == options["lipsync"] - speech | {"--name"}
    assert options["avatar speak"] == options["lipsync"] - video - {"--version"} | {"--name"}
