"""Prepared avatars: the file round trip, lip sync from a loaded avatar, and no VAE encoding for a new audio.

A 3-frame clip (fixture frames 4, 5, 6; frame 5 has no face) with given boxes and random audio tokens keeps the
networks' CPU time low; the chain is the one of test_lipsync_nodes.py.
"""
import importlib
import json
import os
import sys
import types

import numpy as np
import pytest
import torch

from conftest import fixture_inputs, load_pack

FRAMES = [4, 5, 6]
NO_FACE = 1  # fixture frame 5, the one without a face
OUTPUT_FRAMES = 5  # pingpong over 3 sources: 0, 1, 2, 2, 1


@pytest.fixture(scope="module")
def pack():
    module = load_pack()
    engine = {name: importlib.import_module(f"{module.__name__}.musetalk.{name}") for name in ("audio", "avatar")}
    return module.NODE_CLASS_MAPPINGS, engine


@pytest.fixture(scope="module")
def chain(pack, models_dir, tmp_path_factory):
    """The normal chain on the clip; the pack's model and avatar folders point at temporary ones for the module."""
    nodes, engine = pack
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MUSETALK_MODELS", models_dir)
        patch.setenv("MUSETALK_AVATARS", str(tmp_path_factory.mktemp("avatars")))
        inputs = fixture_inputs()
        images = torch.from_numpy(inputs["frames_bgr"][FRAMES, ..., ::-1].copy()).float() / 255
        boxes = [None if i == 5 else inputs["bboxes"][i].tolist() for i in FRAMES]
        (model,) = nodes["LoadMuseTalkModels"]().load("v1.5", "fp32")
        faces, crops, _ = nodes["FaceDetectAndParse"]().detect(model, images, 0, 10, "jaw", 90, 90,
                                                                  json.dumps(boxes))
        features = audio_features(engine, seed=0)
        latent, frames = lip_sync(nodes, model, faces, crops, images, features)
        yield dict(model=model, images=images, faces=faces, crops=crops, features=features, latent=latent,
                   frames=frames, folder=os.environ["MUSETALK_AVATARS"])


def audio_features(engine, seed):
    # ten encoder frames of their own per video frame: random tokens, as if every window were independent
    hidden = torch.randn(OUTPUT_FRAMES * 10, 5, 384, generator=torch.Generator().manual_seed(seed))
    index = torch.arange(OUTPUT_FRAMES * 10).reshape(OUTPUT_FRAMES, 10)
    times = torch.arange(OUTPUT_FRAMES, dtype=torch.float64) / 25
    return engine["audio"].WhisperFeatures(hidden, index, 25.0, times, torch.zeros(OUTPUT_FRAMES), "v1.5", 16000,
                                           OUTPUT_FRAMES / 25)


def lip_sync(nodes, model, faces, crops, images, features):
    (latent,) = nodes["LatentLipInpaint"]().inpaint(model, faces, crops, features, 4, "pingpong")
    frames, _ = nodes["BlendAndDecode"]().blend(model, latent, faces, images, 4)
    return latent, frames


@pytest.fixture(scope="module")
def saved(pack, chain):
    nodes, _ = pack
    c = chain
    out = nodes["MuseTalkSaveAvatar"]().save(c["model"], c["faces"], c["crops"], c["images"], 25.0, "clip")
    return out, os.path.join(c["folder"], "clip.musetalk-avatar")


@pytest.fixture()
def encoder_calls(chain, monkeypatch):
    """Counts VAE encoder calls from here on."""
    vae = chain["model"].vae().module
    calls = []
    original = vae.encode

    def counting(*args, **kwargs):
        calls.append(len(args[0]))
        return original(*args, **kwargs)

    monkeypatch.setattr(vae, "encode", counting)
    return calls


def test_save_passes_its_inputs_through_and_writes_the_file(pack, chain, saved):
    nodes, _ = pack
    out, path = saved
    assert out["result"] == (chain["faces"], chain["crops"], chain["images"], 25.0) and out["ui"]["text"] == [path]
    assert os.path.isfile(path) and [f for f in os.listdir(chain["folder"]) if f.startswith(".")] == []
    assert "clip" in nodes["MuseTalkLoadAvatar"].INPUT_TYPES()["required"]["avatar"][0]
    data = torch.load(path, weights_only=True)
    assert data["format"] == "musetalk-avatar" and data["format_version"] == 1 and data["musetalk_version"] == "v1.5"
    assert data["frames"].dtype == torch.uint8 and data["crops"].dtype == torch.uint8


def test_round_trip_equals_the_original(pack, chain, saved):
    _, engine = pack
    loaded = engine["avatar"].load_avatar(saved[1])
    faces, got = chain["faces"], loaded.faces
    assert got.face_boxes == faces.face_boxes and got.paste_boxes == faces.paste_boxes
    assert got.frame_size == faces.frame_size and got.settings == faces.settings and got.version == faces.version
    assert got.bbox_shift_range == faces.bbox_shift_range and got.blend[NO_FACE] is None
    for ours, theirs in zip(got.blend, faces.blend):
        if theirs is not None:
            assert np.array_equal(ours[0], theirs[0]) and ours[1] == theirs[1] and ours[0].dtype == np.uint8
    assert torch.equal(loaded.crops, (chain["crops"] * 255).round().to(torch.uint8))
    assert torch.equal(loaded.frames, (chain["images"] * 255).round().to(torch.uint8))
    (_, encoded), = faces.memo.values()
    assert torch.equal(loaded.sources.latents, encoded.latents) and loaded.sources.rows == [0, None, 1]
    assert loaded.fps == 25.0 and loaded.encoder == ("v1.5", "float32", "sd-vae") and loaded.faces.memo == {}


def test_loaded_avatar_lip_syncs_like_the_chain_without_encoding(pack, chain, saved, encoder_calls):
    nodes, _ = pack
    faces, crops, images, fps = nodes["MuseTalkLoadAvatar"]().load(chain["model"], "clip")
    assert fps == 25.0 and torch.equal(images, (chain["images"] * 255).round() / 255)
    latent, frames = lip_sync(nodes, chain["model"], faces, crops, images, chain["features"])
    assert encoder_calls == []
    assert torch.equal(latent["samples"], chain["latent"]["samples"]) and torch.equal(frames, chain["frames"])
    assert torch.equal(frames[NO_FACE], images[NO_FACE])


def test_new_audio_reuses_the_source_latents(pack, chain, encoder_calls):
    nodes, engine = pack
    c = chain
    latent, frames = lip_sync(nodes, c["model"], c["faces"], c["crops"], c["images"], audio_features(engine, seed=1))
    assert encoder_calls == []
    assert not torch.equal(latent["samples"], c["latent"]["samples"]) and frames.shape == c["frames"].shape
    # other crops with the same faces are encoded again (2 face frames: masked and full crop in one call)
    nodes["LatentLipInpaint"]().inpaint(c["model"], c["faces"], c["crops"].flip(2), c["features"], 4, "pingpong")
    assert encoder_calls == [4]


def test_other_precision_or_vae_encodes_the_crops_again(pack, chain, saved):
    nodes, engine = pack
    (bf16,) = nodes["LoadMuseTalkModels"]().load("v1.5", "bf16")
    assert engine["avatar"].load_avatar(saved[1], bf16).faces.memo == {}
    assert len(engine["avatar"].load_avatar(saved[1], chain["model"]).faces.memo) == 1
    good = torch.load(saved[1], weights_only=True)
    other = os.path.join(chain["folder"], "other-vae.musetalk-avatar")
    torch.save({**good, "vae": "some-other-vae.safetensors"}, other)
    assert engine["avatar"].load_avatar(other, chain["model"]).faces.memo == {}


@pytest.mark.parametrize("name", ["", "  ", "../clip", "a/b", "a\\b", "..", ".hidden", "c:clip", "x" * 121])
def test_bad_names_are_refused(pack, chain, name):
    nodes, _ = pack
    problem = nodes["MuseTalkSaveAvatar"].VALIDATE_INPUTS(name)
    assert isinstance(problem, str) and "plain name" in problem
    with pytest.raises(ValueError, match="plain name"):
        nodes["MuseTalkSaveAvatar"]().save(chain["model"], chain["faces"], chain["crops"], chain["images"], 25.0, name)
    assert nodes["MuseTalkLoadAvatar"].VALIDATE_INPUTS(name) == problem


def test_names_and_listing(pack, saved):
    nodes, engine = pack
    assert nodes["MuseTalkSaveAvatar"].VALIDATE_INPUTS("anna studio_2") is True
    assert engine["avatar"].avatar_file_name("clip.musetalk-avatar") == "clip.musetalk-avatar"
    assert nodes["MuseTalkLoadAvatar"].VALIDATE_INPUTS("clip") is True
    assert nodes["MuseTalkLoadAvatar"].IS_CHANGED(avatar="clip", model=None) != ""
    missing = nodes["MuseTalkLoadAvatar"].VALIDATE_INPUTS("absent")
    assert "no avatar named 'absent'" in missing and "MuseTalk Save Avatar" in missing


def test_inside_comfyui_avatars_go_to_the_output_folder(pack, tmp_path, monkeypatch):
    comfy_runtime = importlib.import_module(pack[1]["avatar"].__name__.split(".")[0] + ".nodes.comfy_runtime")
    monkeypatch.setitem(sys.modules, "folder_paths", types.SimpleNamespace(get_output_directory=lambda: str(tmp_path)))
    assert comfy_runtime.avatar_path("anna") == os.path.join(str(tmp_path), "musetalk", "avatars",
                                                             "anna.musetalk-avatar")


def _write(path, data):
    torch.save(data, path)
    return os.path.basename(path)[:-len(".musetalk-avatar")]


def test_broken_and_foreign_files_give_clear_errors(pack, chain, saved):
    nodes, engine = pack
    load = nodes["MuseTalkLoadAvatar"]().load
    folder, model = chain["folder"], chain["model"]
    error = engine["avatar"].AvatarError
    with open(saved[1], "rb") as f:
        data = f.read()
    with open(os.path.join(folder, "cut.musetalk-avatar"), "wb") as f:
        f.write(data[:len(data) // 2])
    with pytest.raises(error, match=r"cut\.musetalk-avatar: cannot be read .*damaged(.|\n)*fix: delete it"):
        load(model, "cut")
    good = torch.load(saved[1], weights_only=True)
    cases = {"foreign": ({"format": "something-else"}, "is not a MuseTalk avatar file"),
             "future": ({**good, "format_version": 2}, "uses avatar format 2; this version of the pack reads format 1"),
             "bad": ({**good, "latents": good["latents"][:1]}, "inconsistent data")}
    for name, (content, message) in cases.items():
        with pytest.raises(error, match=message):
            load(model, _write(os.path.join(folder, name + ".musetalk-avatar"), content))
    with pytest.raises(error, match="file not found(.|\n)*MuseTalk Save Avatar"):
        load(model, "absent")
    (v10,) = nodes["LoadMuseTalkModels"]().load("v1.0", "fp32")
    with pytest.raises(error, match=r"prepared for MuseTalk v1\.5, but the model is MuseTalk v1\.0(.|\n)*select v1\.5"):
        load(v10, "clip")


def test_interrupted_save_keeps_the_earlier_avatar_and_leaves_nothing(pack, chain, saved, monkeypatch, tmp_path):
    nodes, engine = pack
    avatar = engine["avatar"]
    loaded = avatar.load_avatar(saved[1])
    path = tmp_path / "anna.musetalk-avatar"
    path.write_bytes(b"an earlier avatar")
    real_save = torch.save

    def interrupted(data, f, *args, **kwargs):
        real_save({"part": data["crops"]}, f)  # some bytes are out, then Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(avatar.torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        avatar.save_avatar(loaded, str(path))
    assert path.read_bytes() == b"an earlier avatar" and os.listdir(tmp_path) == ["anna.musetalk-avatar"]
