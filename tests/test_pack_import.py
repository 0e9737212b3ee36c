"""Importing the pack as ComfyUI does: reads no weights, uses its own modules, exposes well-formed V1 nodes."""
import ast
import glob
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, TESTS, fresh_pack

# node ids agreed in the design; every other id must carry the pack's prefix (ComfyUI's core ids win over a pack's)
DESIGN_CARD_IDS = {"LoadMuseTalkModels", "AudioToWhisperFeatures", "FaceDetectAndParse", "LatentLipInpaint",
                   "BlendAndDecode"}
NEVER_IMPORTED = ("mmcv", "mmpose", "mmdet", "mmengine", "onnxruntime")
NOT_AT_IMPORT = ("transformers", "safetensors", "comfy.model_management")
# never imported by any of our files: pinned versions of these conflict with what ComfyUI environments hold
NEVER_DEPENDED_ON = ("diffusers",)
# run by the official MuseTalk environment's python (bench/README.md), never by ours
OFFICIAL_ENVIRONMENT = ("bench/official_run.py", "bench/official_imports.py")
WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt", ".onnx")

# Runs in a fresh interpreter: ComfyUI has torch (and numpy) imported long before it loads custom nodes, and its own
# top-level `nodes` module; a stray top-level `musetalk` package (another pack, a pip install) may exist too.
IMPORT_PROBE = r"""
import json, os, sys, types
import numpy, pytest, torch  # pytest: conftest (which provides load_pack) needs it, the pack does not

pack_dir, tests_dir, fake_comfy = sys.argv[1:4]
sys.path.insert(0, fake_comfy)  # folder_paths as ComfyUI provides it
import folder_paths
folder_paths.reset(os.path.dirname(os.path.dirname(pack_dir)))
for name in ("nodes", "musetalk"):
    impostor = types.ModuleType(name)
    impostor.__path__ = []
    impostor.NODE_CLASS_MAPPINGS = {}
    sys.modules[name] = impostor

opened = []
sys.addaudithook(lambda event, args: opened.append(str(args[0])) if event == "open" else None)
sys.path.insert(0, tests_dir)
from conftest import load_pack
module_name = pack_dir.replace(".", "_x_")  # ComfyUI's own naming of a custom node module
pack = load_pack(pack_dir, module_name)

loader = pack.NODE_CLASS_MAPPINGS["LoadMuseTalkModels"]
print(json.dumps({
    "opened": opened,
    "modules": sorted(sys.modules),
    "impostors_untouched": all(sys.modules[n].NODE_CLASS_MAPPINGS == {} for n in ("nodes", "musetalk")),
    "engine_module": sys.modules[loader.__module__].MuseTalkModels.__module__,
    "module_name": module_name,
    "musetalk_folders": folder_paths.get_folder_paths("musetalk"),
    "models_dir": folder_paths.models_dir,
}))
"""


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    custom_nodes = tmp_path_factory.mktemp("ComfyUI") / "custom_nodes"
    custom_nodes.mkdir()
    pack_dir = custom_nodes / "ComfyUI-MuseTalk"
    pack_dir.symlink_to(REPO, target_is_directory=True)
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_PROBE, str(pack_dir), TESTS, os.path.join(TESTS, "fake_comfy")],
        capture_output=True, text=True, timeout=120, cwd=str(custom_nodes))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_import_reads_no_weight_file(probe):
    assert [path for path in probe["opened"] if path.endswith(WEIGHT_SUFFIXES)] == []
    assert [m for m in NOT_AT_IMPORT if m in probe["modules"]] == []


def test_no_file_of_ours_imports_diffusers():
    found = []
    for path in glob.glob(os.path.join(REPO, "**", "*.py"), recursive=True):
        relpath = os.path.relpath(path, REPO).replace(os.sep, "/")
        if relpath in OFFICIAL_ENVIRONMENT:
            continue
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            found += [f"{relpath}: {n}" for n in names if n.split(".")[0] in NEVER_DEPENDED_ON]
    assert found == []


def test_import_pulls_in_no_mm_stack_or_onnxruntime(probe):
    loaded = [m for m in probe["modules"] if m.split(".")[0] in NEVER_IMPORTED]
    assert loaded == []


def test_pack_uses_its_own_modules_next_to_comfyui_nodes_and_a_stray_musetalk(probe):
    assert probe["impostors_untouched"]
    assert probe["engine_module"] == probe["module_name"] + ".musetalk.models"


def test_import_registers_the_musetalk_model_folder(probe):
    assert probe["musetalk_folders"] == [os.path.join(probe["models_dir"], "musetalk")]


@pytest.fixture(scope="module")
def pack():
    yield from fresh_pack("ComfyUI_MuseTalk_import_test")


def test_node_ids_and_display_names(pack):
    ids = set(pack.NODE_CLASS_MAPPINGS)
    assert DESIGN_CARD_IDS <= ids
    assert [i for i in ids if i not in DESIGN_CARD_IDS and not i.startswith("MuseTalk")] == []
    assert set(pack.NODE_DISPLAY_NAME_MAPPINGS) == ids
    assert [n for n in pack.NODE_DISPLAY_NAME_MAPPINGS.values() if not n.startswith("MuseTalk")] == []


def test_every_node_is_a_well_formed_v1_class(pack):
    for node_id, cls in pack.NODE_CLASS_MAPPINGS.items():
        inputs = cls.INPUT_TYPES()  # must work with no ComfyUI around (no folder_paths here)
        assert isinstance(inputs, dict) and set(inputs) <= {"required", "optional", "hidden"}, node_id
        for name, spec in {**inputs.get("required", {}), **inputs.get("optional", {})}.items():
            assert isinstance(spec, tuple) and isinstance(spec[0], (str, list)), (node_id, name)
        assert isinstance(cls.RETURN_TYPES, tuple), node_id
        assert callable(getattr(cls, cls.FUNCTION)), node_id
        assert cls.CATEGORY.startswith("MuseTalk"), node_id
        if hasattr(cls, "RETURN_NAMES"):
            assert len(cls.RETURN_NAMES) == len(cls.RETURN_TYPES), node_id
