"""`python -m musetalk avatar prepare` and `avatar speak`: the frames of `lipsync`, the file of MuseTalk Save Avatar,
the avatars folder, and bad input refused before any network runs, leaving nothing behind.

A 3-frame clip (fixture frames 4, 5, 6; frame 5 has no face) with given boxes and 0.3 s of speech keeps the networks'
CPU time low.
"""
import json
import os
import wave

import numpy as np
import pytest
import torch
from PIL import Image

import musetalk.__main__ as cli
from conftest import fixture_inputs, load_pack
from musetalk import avatar as avatar_module
from musetalk import avatar_job
from musetalk.video import open_frames
from test_streaming import CountingSource

FRAMES = [4, 5, 6]
NO_FACE = 5
OUTPUT_FRAMES = 7  # 0.3 s of speech at 25 fps, pingpong over 3 sources
FACE = ["--parsing-mode", "raw", "--extra-margin", "6"]  # options that change the frames, given to prepare


def _pngs(folder):
    return np.stack([np.asarray(Image.open(os.path.join(folder, name))) for name in sorted(os.listdir(folder))])


@pytest.fixture(scope="module")
def clip(models_dir, tmp_path_factory):
    """The clip as a frames folder + boxes file + speech, its `lipsync` run and its `avatar prepare` run."""
    folder = tmp_path_factory.mktemp("clip")
    inputs = fixture_inputs()
    os.makedirs(folder / "frames")
    for i in FRAMES:
        Image.fromarray(inputs["frames_bgr"][i][..., ::-1]).save(folder / "frames" / f"{i}.png")
    boxes = [None if i == NO_FACE else inputs["bboxes"][i].tolist() for i in FRAMES]
    (folder / "boxes.json").write_text(json.dumps(boxes))
    with wave.open(str(folder / "speech.wav"), "wb") as f:
        f.setnchannels(1), f.setsampwidth(2), f.setframerate(16000)
        f.writeframes(inputs["audio_a16"][:int(0.3 * 16000)].astype("<i2").tobytes())
    video = ["--video", str(folder / "frames"), "--bboxes", str(folder / "boxes.json"), *FACE]
    speech = ["--audio", str(folder / "speech.wav"), "--cycle", "pingpong"]
    sources = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MUSETALK_MODELS", models_dir)
        patch.setenv("MUSETALK_AVATARS", str(folder / "avatars"))
        assert cli.main(["lipsync", *video, *speech, "--out", str(folder / "lipsync.mp4"),
                         "--frames-dir", str(folder / "lipsync")]) == 0
        # the frames are decoded a run of 2 at a time and never held: the analysis reads them from the scratch file
        patch.setattr(avatar_job, "WINDOW_BYTES", 2 * 384 * 384 * 3)
        patch.setattr(cli, "open_frames", lambda path, fps: sources.append(CountingSource(open_frames(path, fps)))
                      or sources[-1])
        assert cli.main(["avatar", "prepare", "--name", "clip", *video]) == 0
    return dict(folder=folder, models_dir=models_dir, avatars=str(folder / "avatars"), speech=speech,
                source=sources[0], boxes=json.dumps(boxes))


@pytest.fixture
def env(clip, monkeypatch):
    monkeypatch.setenv("MUSETALK_MODELS", clip["models_dir"])
    monkeypatch.setenv("MUSETALK_AVATARS", clip["avatars"])
    return clip


def test_prepare_reads_every_frame_once_in_runs_and_leaves_only_the_avatar(env):
    assert env["source"].calls == [(0, 2), (2, 3)] and env["source"].peak <= 2
    assert os.listdir(env["avatars"]) == ["clip.musetalk-avatar"]  # no scratch or temporary file is left


def test_speak_writes_the_frames_of_lipsync_and_prints_its_speed(env, tmp_path, capsys):
    capsys.readouterr()
    assert cli.main(["avatar", "speak", "--name", "clip", *env["speech"], "--out", str(tmp_path / "speak.mp4"),
                     "--frames-dir", str(tmp_path / "speak")]) == 0
    ours, theirs = _pngs(tmp_path / "speak"), _pngs(env["folder"] / "lipsync")
    assert ours.shape == theirs.shape == (OUTPUT_FRAMES, 384, 384, 3) and np.array_equal(ours, theirs)
    assert open_frames(str(tmp_path / "speak.mp4")).count == OUTPUT_FRAMES
    out = capsys.readouterr().out
    assert f"{OUTPUT_FRAMES} frames in" in out and "frames/s" in out and "loading the networks took" in out


def test_the_cli_avatar_is_the_one_save_avatar_writes_and_loads_in_the_nodes(env):
    pack = load_pack()
    nodes = pack.NODE_CLASS_MAPPINGS
    (model,) = nodes["LoadMuseTalkModels"]().load("v1.5", "fp32")
    inputs = fixture_inputs()
    images = torch.from_numpy(inputs["frames_bgr"][FRAMES, ..., ::-1].copy()).float() / 255
    faces, crops, _ = nodes["FaceDetectAndParse"]().detect(model, images, 0, 6, "raw", 90, 90, env["boxes"])
    nodes["MuseTalkSaveAvatar"]().save(model, faces, crops, images, 25.0, "by-node")
    ours = torch.load(os.path.join(env["avatars"], "clip.musetalk-avatar"), weights_only=True)
    theirs = torch.load(os.path.join(env["avatars"], "by-node.musetalk-avatar"), weights_only=True)
    assert ours.keys() == theirs.keys()
    for key in ours:
        if key == "faces":
            masks = ours[key].pop("masks"), theirs[key].pop("masks")
            assert all(a is b is None or torch.equal(a, b) for a, b in zip(*masks)) and masks[0][1] is None
        same = torch.equal(ours[key], theirs[key]) if isinstance(ours[key], torch.Tensor) else ours[key] == theirs[key]
        assert same, key

    loaded_faces, _, loaded_images, fps = nodes["MuseTalkLoadAvatar"]().load(model, "clip")
    assert fps == 25.0 and loaded_faces.paste_boxes == faces.paste_boxes and torch.equal(loaded_images, images)
    (v10,) = nodes["LoadMuseTalkModels"]().load("v1.0", "fp32")
    with pytest.raises(Exception, match=r"prepared for MuseTalk v1\.5, but the model is MuseTalk v1\.0"):
        nodes["MuseTalkLoadAvatar"]().load(v10, "clip")
    os.remove(os.path.join(env["avatars"], "by-node.musetalk-avatar"))


def test_avatars_folder_is_musetalk_avatars_else_comfyuis_output_else_the_packs(tmp_path, monkeypatch):
    pack = tmp_path / "ComfyUI" / "custom_nodes" / "ComfyUI-MuseTalk"
    pack.mkdir(parents=True)
    monkeypatch.delenv("MUSETALK_AVATARS", raising=False)
    assert avatar_module.standalone_avatar_dir(str(pack)) == avatar_module.PACK_AVATAR_DIR  # no ComfyUI/output
    (tmp_path / "ComfyUI" / "output").mkdir()
    comfy = str(tmp_path / "ComfyUI" / "output" / "musetalk" / "avatars")
    assert avatar_module.standalone_avatar_dir(str(pack)) == comfy
    elsewhere = str(tmp_path / "elsewhere" / "ComfyUI-MuseTalk")
    assert avatar_module.standalone_avatar_dir(elsewhere) == avatar_module.PACK_AVATAR_DIR
    monkeypatch.setenv("MUSETALK_AVATARS", str(tmp_path / "mine"))
    assert avatar_module.standalone_avatar_dir(str(pack)) == str(tmp_path / "mine")


@pytest.fixture
def no_networks(monkeypatch):
    """Fails the test if a command gets as far as building its networks."""
    def refuse(*args, **kwargs):
        raise AssertionError("the networks were set up before the bad input was found")

    monkeypatch.setattr(cli, "MuseTalkModels", refuse)


def _fails(argv, capsys, message):
    capsys.readouterr()
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    return err


def test_bad_names_and_missing_avatars_are_refused_before_any_network(env, tmp_path, capsys, no_networks):
    folder = env["avatars"]
    before = sorted(os.listdir(folder))
    _fails(["avatar", "prepare", "--name", "../clip", "--video", str(env["folder"] / "frames")], capsys,
           "plain name")
    _fails(["avatar", "prepare", "--name", "new", "--video", str(tmp_path / "missing.mp4")], capsys,
           "missing.mp4: no such file or folder")
    out = ["--out", str(tmp_path / "o.mp4"), "--frames-dir", str(tmp_path / "png")]
    err = _fails(["avatar", "speak", "--name", "absent", *env["speech"], *out], capsys,
                 f"there is no avatar 'absent' in {folder} (it holds clip)")
    assert "avatar prepare --video VIDEO --name absent" in err
    _fails(["avatar", "speak", "--name", "a/b", *env["speech"], *out], capsys, "plain name")
    _fails(["avatar", "speak", "--name", "clip", *env["speech"], "--out", str(tmp_path / "o.gif")], capsys,
           "o.gif: .gif files cannot hold H.264 video")
    torch.save({"format": "something-else"}, os.path.join(folder, "foreign.musetalk-avatar"))
    _fails(["avatar", "speak", "--name", "foreign", *env["speech"], *out], capsys, "is not a MuseTalk avatar file")
    os.remove(os.path.join(folder, "foreign.musetalk-avatar"))
    assert sorted(os.listdir(folder)) == before and os.listdir(tmp_path) == []


def test_unknown_avatar_in_an_empty_or_missing_folder(tmp_path, monkeypatch, capsys, no_networks):
    monkeypatch.setenv("MUSETALK_AVATARS", str(tmp_path / "none"))
    _fails(["avatar", "speak", "--name", "anna", "--audio", "x.wav", "--out", str(tmp_path / "o.mp4")], capsys,
           f"there is no avatar 'anna' in {tmp_path / 'none'} (it holds no avatar)")
    assert os.listdir(tmp_path) == []


def test_interrupted_prepare_keeps_the_earlier_avatar_and_leaves_nothing(env, tmp_path, monkeypatch, capsys):
    import musetalk.pipeline as pipeline

    monkeypatch.setenv("MUSETALK_AVATARS", str(tmp_path))
    (tmp_path / "anna.musetalk-avatar").write_bytes(b"an earlier avatar")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "detect_and_parse", interrupted)
    _fails(["avatar", "prepare", "--name", "anna", "--video", str(env["folder"] / "frames"), "--bboxes",
            str(env["folder"] / "boxes.json")], capsys, "interrupted")
    assert os.listdir(tmp_path) == ["anna.musetalk-avatar"]
    assert (tmp_path / "anna.musetalk-avatar").read_bytes() == b"an earlier avatar"
