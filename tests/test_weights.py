"""Strict, safe checkpoint loading and the errors users see for wrong, damaged or misplaced files."""
import os
import shutil

import numpy as np
import pytest
import torch

from musetalk.models import ModelFiles, MuseTalkModels
from musetalk.networks.bisenet import load_bisenet
from musetalk.runtime import StandaloneRuntime
from musetalk.weights import WeightsError, read_state_dict


def _load(path):
    return load_bisenet(str(path), "the BiSeNet face parser", "download it again")


def test_generated_file_loads_strictly(models_dir):
    net = _load(os.path.join(models_dir, "face-parse-bisent", "79999_iter.pth"))
    assert not net.training and not any(p.requires_grad for p in net.parameters())


def test_truncated_file_names_file_and_fix(models_dir, tmp_path):
    source = os.path.join(models_dir, "face-parse-bisent", "79999_iter.pth")
    damaged = tmp_path / "79999_iter.pth"
    damaged.write_bytes(open(source, "rb").read()[:100000])
    with pytest.raises(WeightsError) as error:
        _load(damaged)
    text = str(error.value)
    assert str(damaged) in text and "damaged, truncated" in text and "download it again" in text


def test_missing_and_reshaped_keys_are_listed(models_dir, tmp_path):
    state = torch.load(os.path.join(models_dir, "face-parse-bisent", "79999_iter.pth"), weights_only=True)
    del state["ffm.conv1.weight"]
    state["conv_out.conv_out.weight"] = torch.zeros(18, 256, 1, 1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(WeightsError) as error:
        _load(tmp_path / "bad.pth")
    text = str(error.value)
    assert "1 missing: ffm.conv1.weight" in text and "conv_out.conv_out.weight (18, 256, 1, 1)" in text
    assert "expected: the BiSeNet face parser" in text


def test_another_networks_file_is_rejected(models_dir):
    with pytest.raises(WeightsError, match="does not match the network"):
        _load(os.path.join(models_dir, "s3fd", "s3fd-619a316812.pth"))


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # would create the marker file if unpickled normally


def test_pickled_code_is_never_executed(tmp_path):
    marker = tmp_path / "executed"
    torch.save({"weight": torch.zeros(1), "payload": _Payload(str(marker))}, tmp_path / "evil.pth")
    with pytest.raises(WeightsError, match="holds no tensor dictionary"):
        read_state_dict(str(tmp_path / "evil.pth"), "x", "y")
    assert not marker.exists()


def test_training_checkpoint_metadata_is_skipped(tmp_path):
    """mmengine-style files: weights under state_dict, arbitrary objects under meta."""
    state = {"layer.weight": torch.ones(2, 3)}
    marker = tmp_path / "executed"
    torch.save({"state_dict": state, "meta": {"array": np.ones(3), "hook": _Payload(str(marker))}}, tmp_path / "m.pth")
    loaded = read_state_dict(str(tmp_path / "m.pth"), "x", "y", unwrap=("state_dict",))
    assert list(loaded) == ["layer.weight"] and torch.equal(loaded["layer.weight"], state["layer.weight"])
    assert not marker.exists()


def test_safetensors_and_prefixed_state_dicts(models_dir, tmp_path):
    from safetensors.torch import save_file

    state = torch.load(os.path.join(models_dir, "face-parse-bisent", "79999_iter.pth"), weights_only=True)
    save_file({"module." + k: v.contiguous() for k, v in state.items()}, str(tmp_path / "parser.safetensors"))
    net = _load(tmp_path / "parser.safetensors")
    assert torch.equal(net.state_dict()["ffm.conv1.weight"], state["ffm.conv1.weight"])


def test_missing_version_points_at_download_and_the_other_version(models_dir, tmp_path):
    root = tmp_path / "models"
    shutil.copytree(os.path.join(models_dir, "musetalk"), root / "musetalk")
    files = ModelFiles([str(root)])
    with pytest.raises(WeightsError) as error:
        files.require("v1.5", "unet")
    text = str(error.value)
    assert "musetalkV15/unet.pth" in text and "python -m musetalk download --version v1.5" in text
    assert "musetalk/pytorch_model.bin, which belongs to v1.0: select version v1.0" in text


def test_vae_found_under_the_v10_folder_name(models_dir, tmp_path):
    root = tmp_path / "models"
    shutil.copytree(os.path.join(models_dir, "sd-vae"), root / "sd-vae-ft-mse")
    assert ModelFiles([str(root)]).require("v1.0", "vae") == [str(root / "sd-vae-ft-mse")]


def test_first_root_with_the_file_wins(models_dir, tmp_path):
    files = ModelFiles([str(tmp_path), models_dir])
    assert files.require("v1.0", "whisper") == [os.path.join(models_dir, "whisper", "tiny.pt")]


def test_networks_load_lazily_and_once(models_dir):
    models = MuseTalkModels("v1.5", ModelFiles([models_dir]), StandaloneRuntime("cpu"))
    assert models._built == {}
    assert models.face_parser() is models.face_parser()
    assert list(models._built) == ["face_parsing"]
