"""ComfyUI values checked where they enter a node (nodes/inputs.py): wrong layouts, types and ranges are named by
their node input before anything runs; ComfyUI wiring advice is added by the nodes, never by the engine."""
import ast
import importlib
import os
import re

import numpy as np
import pytest
import torch

import musetalk.__main__ as cli
from conftest import FIXTURES, load_pack

FRAMES = torch.full((2, 64, 48, 3), 0.5)


@pytest.fixture(scope="module")
def inputs():
    return importlib.import_module(load_pack().__name__ + ".nodes.inputs")


def detect(nodes, images):
    # no model: the check must come before anything touches it
    return nodes["FaceDetectAndParse"]().detect(None, images, 0, 10, "jaw", 90, 90)


@pytest.mark.parametrize("images, message", [
    (FRAMES[0], r"FaceDetectAndParse input 'images': an image \[H,W,C\] = \[64, 48, 3\] without the batch axis"
                r"(.|\n)*unsqueeze\(0\)"),
    (FRAMES.permute(0, 3, 1, 2), r"FaceDetectAndParse input 'images': shape \[2, 3, 64, 48\] is channels-first "
                                 r"\[B,C,H,W\](.|\n)*permute\(0, 2, 3, 1\)"),
    (FRAMES.numpy(), r"FaceDetectAndParse input 'images': a numpy array(.|\n)*torch.from_numpy"),
    (FRAMES * 255, r"FaceDetectAndParse input 'images': values from 127.5 to 127.5; an IMAGE holds values in 0..1 "
                   r"\(0..255 values\? use image / 255\)"),
    ((FRAMES * 255).to(torch.uint8), r"FaceDetectAndParse input 'images': torch.uint8 values; an IMAGE holds floats"),
    (torch.full((2, 64, 48, 2), 0.5), r"shape \[2, 64, 48, 2\] is not an IMAGE \[B,H,W,C\] with C = 1, 3 or 4"),
    (torch.zeros(0, 64, 48, 3), r"the IMAGE is empty"),
    (torch.full((1, 8, 8, 3), float("nan")), r"values from nan to nan"),
    ([[0.5]], r"a list, not an IMAGE"),
])
def test_bad_images_are_named_by_their_node_input(nodes, images, message):
    with pytest.raises(ValueError, match=message):
        detect(nodes, images)


def test_good_images_pass_every_layout(inputs):
    for images in (FRAMES, FRAMES[..., :1], torch.cat([FRAMES, FRAMES[..., :1]], -1), FRAMES[None]):
        assert inputs.image(images, "Node", "images") is images


@pytest.mark.parametrize("node, call", [
    ("LatentLipInpaint", lambda n, bad: n["LatentLipInpaint"]().inpaint(None, [None] * 2, bad, None, 4, "pingpong")),
    ("BlendAndDecode", lambda n, bad: n["BlendAndDecode"]().blend(None, {}, [None] * 2, bad, 4)),
    ("MuseTalkSaveAvatar", lambda n, bad: n["MuseTalkSaveAvatar"]().save(None, [None] * 2, bad, FRAMES, 25.0, "a")),
])
def test_every_node_taking_images_checks_them(nodes, node, call):
    with pytest.raises(ValueError, match=f"{node} input '(crops|images)': an image \\[H,W,C\\]"):
        call(nodes, FRAMES[0])


def extract(nodes, audio, fps=25.0):
    return nodes["AudioToWhisperFeatures"]().extract(None, audio, fps)


WAVE = torch.zeros(1, 1, 16000)


@pytest.mark.parametrize("audio, message", [
    ({"waveform": WAVE}, r"AudioToWhisperFeatures input 'audio': the AUDIO dict has no 'sample_rate' "
                         r"\(keys: \['waveform'\]\)"),
    ({"sample_rate": 16000}, r"the AUDIO dict has no 'waveform'"),
    ({}, r"has no 'waveform' and no 'sample_rate'"),
    ({"waveform": WAVE[0], "sample_rate": 16000}, r"the waveform has shape \[1, 16000\], not \[B,C,T\] \(one clip "
                                                  r"\[C,T\]: add the batch axis with waveform.unsqueeze\(0\)\)"),
    ({"waveform": WAVE.numpy(), "sample_rate": 16000}, r"waveform: a numpy array"),
    ({"waveform": WAVE, "sample_rate": "16k"}, r"sample_rate is '16k', not a number of Hz"),
    (WAVE, r"a Tensor, not an AUDIO dict"),
])
def test_bad_audio_is_named_by_its_node_input(nodes, audio, message):
    with pytest.raises(ValueError, match=message):
        extract(nodes, audio)


def test_blend_checks_its_optional_audio(nodes, monkeypatch):
    blend = importlib.import_module(load_pack().__name__ + ".nodes.lipsync")
    with pytest.raises(ValueError, match="BlendAndDecode input 'audio': the AUDIO dict has no 'sample_rate'"):
        blend._fit({"waveform": WAVE}, 25, 25.0)


def test_nodes_add_comfyui_wiring_advice_the_engine_leaves_out(nodes, models_dir, tmp_path, monkeypatch, capsys):
    with pytest.raises(ValueError, match=r"fps: 0.0 is not a video frame rate(.|\n)*in ComfyUI: wire fps from Get "
                                         r"Video Components' fps output"):
        extract(nodes, {"waveform": WAVE, "sample_rate": 16000}, fps=0.0)
    # the same mistake on the command line: the engine's words, without ComfyUI's
    monkeypatch.setenv("MUSETALK_MODELS", models_dir)
    image = tmp_path / "face.png"
    from PIL import Image

    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(image)
    status = cli.main(["lipsync", "--video", str(image), "--audio", os.path.join(FIXTURES, "input_a16.wav"),
                       "--out", str(tmp_path / "out.mp4"), "--fps", "0"])
    err = capsys.readouterr().err
    assert status == 1 and "fps: 0.0 is not a video frame rate" in err
    assert "Get Video Components" not in err and "GetVideoComponents" not in err and "in ComfyUI" not in err


def test_engine_messages_name_no_node():
    """Every string of the engine outside docstrings: error texts, fixes and their constants."""
    engine = os.path.join(os.path.dirname(FIXTURES), "..", "..", "musetalk")
    names = re.compile(r"GetVideoComponents|Get Video Components|FaceDetectAndParse|LatentLipInpaint|BlendAndDecode|"
                       r"AudioToWhisperFeatures|MuseTalk (Load|Save) (Models|Avatar)|connect the")
    for folder, _, files in os.walk(engine):
        for name in (n for n in files if n.endswith(".py")):
            with open(os.path.join(folder, name)) as f:
                tree = ast.parse(f.read())
            docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                          if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and node.body
                          and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
            for node in ast.walk(tree):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                    assert not names.search(node.value), f"{name}:{node.lineno}: node advice: {node.value!r}"
