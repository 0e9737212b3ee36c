"""LoadMuseTalkModels outside ComfyUI: the standalone models folder, early file checks, no reads at import."""
import pytest

from conftest import load_pack


@pytest.fixture()
def loader():
    return load_pack().NODE_CLASS_MAPPINGS["LoadMuseTalkModels"]


def test_inputs_describe_version_and_precision(loader):
    required = loader.INPUT_TYPES()["required"]
    assert required["version"][0] == ["v1.5", "v1.0"] and required["version"][1]["default"] == "v1.5"
    assert required["precision"][0] == ["auto", "fp32", "fp16", "bf16"]


@pytest.mark.parametrize("version", ["v1.5", "v1.0"])
def test_bundle_is_returned_without_reading_weights(loader, models_dir, monkeypatch, version):
    monkeypatch.setenv("MUSETALK_MODELS", models_dir)
    (bundle,) = loader().load(version, "auto")
    assert bundle.version == version and bundle._built == {}


def test_missing_files_fail_with_the_download_command(loader, tmp_path, monkeypatch):
    monkeypatch.setenv("MUSETALK_MODELS", str(tmp_path))
    with pytest.raises(Exception, match=r"python -m musetalk download --version v1\.0"):
        loader().load("v1.0", "auto")
