"""Files in the wrong place, told apart by the manifest's sizes and sha256: the v1.0 UNet in the v1.5 folder is
refused with the fix, each file is hashed at most once, and `check` takes the .bin VAE that loading takes."""
import hashlib
import json
import os

import pytest

from conftest import REPO
from musetalk import checksums, models
from musetalk.download import verify
from musetalk.models import ModelFiles, MuseTalkModels
from musetalk.runtime import StandaloneRuntime
from musetalk.weights import WeightsError


def _sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.fixture(scope="module")
def generated_manifest(models_dir, tmp_path_factory):
    """The pack's manifest with the sizes and sha256 of the generated checkpoints (the official files are not here)."""
    with open(os.path.join(REPO, "models", "manifest.json")) as f:
        manifest = json.load(f)
    for entry in manifest["files"]:
        path = os.path.join(models_dir, entry["path"])
        if os.path.isfile(path):
            entry["size"], entry["sha256"] = os.path.getsize(path), _sha256(path)
    path = tmp_path_factory.mktemp("manifest") / "manifest.json"
    path.write_text(json.dumps(manifest))
    return str(path)


def linked_models(models_dir, root, replace=None):
    """A models folder of links to the generated files; `replace` maps a place to the file linked there instead."""
    replace = replace or {}
    for folder, _, files in os.walk(models_dir):
        for name in files:
            relpath = os.path.relpath(os.path.join(folder, name), models_dir)
            target = root / relpath
            target.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(os.path.join(models_dir, replace.get(relpath, relpath)), target)
    return str(root)


@pytest.fixture
def counted_hashing(monkeypatch, generated_manifest):
    monkeypatch.setattr(models, "MANIFEST_PATH", generated_manifest)
    monkeypatch.setattr(checksums, "_digests", {})
    hashed = []
    real = checksums.hashlib.sha256

    def counting():
        hashed.append(None)
        return real()

    monkeypatch.setattr(checksums.hashlib, "sha256", counting)
    return hashed


def test_v10_unet_in_the_v15_place_is_refused_with_the_fix(models_dir, tmp_path, counted_hashing):
    v15_unet, v10_unet = os.path.join("musetalkV15", "unet.pth"), os.path.join("musetalk", "pytorch_model.bin")
    root = linked_models(models_dir, tmp_path / "models", {v15_unet: v10_unet})
    bundle = MuseTalkModels("v1.5", ModelFiles([root]), StandaloneRuntime("cpu"))
    with pytest.raises(WeightsError) as error:
        bundle.unet()
    message = str(error.value)
    assert message.startswith(os.path.join(root, v15_unet) + ": is the MuseTalk v1.0 unet file "
                                                             "musetalk/pytorch_model.bin")
    assert "expected: MuseTalk v1.5 unet: musetalkV15/musetalk.json and musetalkV15/unet.pth" in message
    assert "python -m musetalk download --version v1.5" in message
    assert "move it to musetalk/pytorch_model.bin and select version v1.0" in message


def test_right_files_load_and_each_is_hashed_once(models_dir, counted_hashing):
    # the generated configs of both UNets have one size, so telling them apart takes a sha256; the UNet files
    # differ in size, which is enough
    bundle = MuseTalkModels("v1.5", ModelFiles([models_dir]), StandaloneRuntime("cpu"))
    bundle.unet()
    assert len(counted_hashing) == 1
    bundle.release("unet")
    bundle.unet()
    MuseTalkModels("v1.5", ModelFiles([models_dir]), StandaloneRuntime("cpu")).unet()
    assert len(counted_hashing) == 1


def test_files_the_manifest_cannot_mistake_are_not_hashed(models_dir, monkeypatch):
    # against the real manifest no generated file has the size of an official one: one stat each, no hashing
    monkeypatch.setattr(checksums, "_digests", {})
    monkeypatch.setattr(checksums, "file_sha256", lambda path: pytest.fail(f"{path} was hashed"))
    MuseTalkModels("v1.5", ModelFiles([models_dir]), StandaloneRuntime("cpu")).unet()


def test_check_accepts_the_bin_vae_that_loading_accepts(models_dir, generated_manifest, tmp_path):
    # the generated VAE folder holds the .bin the official scripts fetch, not the .safetensors
    assert os.path.isfile(os.path.join(models_dir, "sd-vae", "diffusion_pytorch_model.bin"))
    assert not os.path.exists(os.path.join(models_dir, "sd-vae", "diffusion_pytorch_model.safetensors"))
    checks = {c.entry["component"] + ":" + os.path.basename(c.path): c.state
              for c in verify(models_dir, "v1.5", manifest=generated_manifest)}
    assert checks["vae:diffusion_pytorch_model.bin"] == "ok" and set(checks.values()) == {"ok"}
    assert "vae:diffusion_pytorch_model.safetensors" not in checks
