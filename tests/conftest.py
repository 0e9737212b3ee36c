"""Shared test fixtures: generated checkpoints (once per session), golden fixture files, the pack loaded as ComfyUI does."""
import importlib.util
import json
import os
import sys

import numpy as np
import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)
FIXTURES = os.path.join(TESTS, "data", "fixtures")
sys.path.insert(0, REPO)
sys.path.insert(0, TESTS)

import checkpoint_generator  # noqa: E402


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    """A models folder with every small-size checkpoint of the fixture seed, in the official layout."""
    return checkpoint_generator.generate(str(tmp_path_factory.mktemp("models")))


@pytest.fixture(scope="module")
def nodes():
    """The pack's NODE_CLASS_MAPPINGS, the pack imported as ComfyUI imports it."""
    return load_pack().NODE_CLASS_MAPPINGS


@pytest.fixture(scope="module")
def standalone_models(models_dir):
    """MUSETALK_MODELS set to the generated checkpoints for a whole module, so that its module-scoped fixtures which
    run nodes see it too (a function-scoped monkeypatch is only applied after them)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MUSETALK_MODELS", models_dir)
        yield models_dir


def fixture(name):
    """(arrays, sidecar) of a golden fixture, e.g. fixture("b_vae_unet_v15")."""
    arrays = dict(np.load(os.path.join(FIXTURES, name + ".npz")))
    with open(os.path.join(FIXTURES, name + ".json")) as f:
        return arrays, json.load(f)


def fixture_inputs():
    """The shared inputs: 12 BGR frames [12,384,384,3] uint8, their boxes, keypoints and the audio."""
    data = dict(np.load(os.path.join(FIXTURES, "inputs.npz")))
    offsets = data["frame_offsets_xy"]
    data["frames_bgr"] = np.stack([data["astronaut400_bgr"][oy:oy + 384, ox:ox + 384] for ox, oy in offsets])
    return data


def load_pack(path=REPO, name="ComfyUI_MuseTalk_under_test"):
    """Import the pack the way ComfyUI does: by file location, under an arbitrary module name (once per name)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, os.path.join(path, "__init__.py"),
                                                  submodule_search_locations=[path])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def fresh_pack(name):
    """Generator for a module-scoped fixture: the pack imported under its own `name`, removed again afterwards."""
    yield load_pack(REPO, name)
    for module in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[module]
