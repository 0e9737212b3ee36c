"""Installing the pack changes nothing a ComfyUI environment has: requirements.txt and install.py add what is missing
and never upgrade, downgrade or duplicate an installed package (README, "Why no OpenCV in requirements.txt").

The environment tests build virtual environments from PyPI and take minutes; they run where MUSETALK_INSTALL_TESTS=1
(.ci/run sets it), each with the CPU torch of .ci/constraints.txt; they share pip's cache:

    MUSETALK_INSTALL_TESTS=1 python -m pytest -q tests/test_install.py
"""
import importlib.util
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO

def normalised(name):
    return re.sub(r"[-_.]+", "-", name).lower()


OPENCV = {"opencv-python", "opencv-python-headless", "opencv-contrib-python", "opencv-contrib-python-headless"}


def load_install_script():
    spec = importlib.util.spec_from_file_location("musetalk_install_script", os.path.join(REPO, "install.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_install_script_adds_no_opencv_where_one_is_installed():
    install = load_install_script()
    assert importlib.util.find_spec("cv2") is not None  # the tests need OpenCV, so this environment has one
    assert install.opencv_install_command() is None


def test_install_script_adds_headless_opencv_for_the_installed_numpy(monkeypatch):
    install = load_install_script()
    monkeypatch.setattr(install, "installed_version", lambda name: np.__version__ if name == "numpy" else None)
    monkeypatch.setattr(install.importlib.util, "find_spec", lambda name: None)
    assert install.opencv_install_command() == [sys.executable, "-m", "pip", "install", "opencv-python-headless>=4.8",
                                                f"numpy=={np.__version__}"]


def test_install_script_adds_no_opencv_where_cv2_came_without_pip_metadata(monkeypatch):
    install = load_install_script()  # e.g. conda's OpenCV
    monkeypatch.setattr(install, "installed_version", lambda name: None)
    assert install.opencv_install_command() is None


WITHOUT_OPENCV = r"""
import sys
sys.modules["cv2"] = None  # as if no OpenCV were installed: `import cv2` raises ImportError
sys.path.insert(0, sys.argv[1])
from conftest import load_pack
pack = load_pack(sys.argv[2], "ComfyUI_MuseTalk_without_opencv")
assert "LoadMuseTalkModels" in pack.NODE_CLASS_MAPPINGS
import numpy as np
face_boxes = sys.modules["ComfyUI_MuseTalk_without_opencv.musetalk.face_boxes"]
try:
    face_boxes.network_crop(np.zeros((64, 64, 3), np.uint8), (0, 0, 32, 32))
except ImportError as error:
    print(error)
"""


def test_pack_imports_without_opencv_and_its_first_use_names_the_fix():
    result = subprocess.run([sys.executable, "-c", WITHOUT_OPENCV, os.path.join(REPO, "tests"), REPO],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "MuseTalk needs OpenCV (the cv2 module)" in result.stdout
    assert "python -m pip install opencv-python-headless" in result.stdout


def test_only_the_opencv_module_imports_cv2():
    """Every other module goes through opencv.load_cv2, so a missing OpenCV always gives the error naming the fix."""
    importing = []
    for folder in ("musetalk", "nodes"):
        for directory, _, files in os.walk(os.path.join(REPO, folder)):
            for name in files:
                path = os.path.join(directory, name)
                if name.endswith(".py") and path != os.path.join(REPO, "musetalk", "opencv.py"):
                    with open(path) as f:
                        if re.search(r"^\s*(import cv2|from cv2 import)", f.read(), re.M):
                            importing.append(os.path.relpath(path, REPO))
    assert importing == []


# --------------------------------------------------------------------------------------------- built environments

# what each environment holds before the pack comes (torch from .ci/constraints.txt comes with every one)
ENVIRONMENTS = {
    # ComfyUI 0.3.64 as the issue found it: its requirements at the versions of its release, transformers 4.57 and
    # huggingface_hub 0.36, opencv-python 4.10 from ComfyUI-VideoHelperSuite
    "comfyui_0.3.64": ["numpy==2.3.*", "av==15.*", "pillow==11.3.*", "safetensors==0.6.*", "transformers==4.57.*",
                       "huggingface_hub==0.36.*", "opencv-python==4.10.*"],
    # ComfyUI's oldest allowed versions of what the pack needs too (its requirements.txt lower bounds)
    "comfyui_lower_bounds": ["numpy==1.26.*", "av==14.2.*", "pillow==10.0.*", "safetensors==0.4.2",
                             "transformers==4.37.2", "huggingface_hub==0.20.*", "opencv-python==4.8.*"],
    # a newer stack: transformers 5 with huggingface_hub >= 1
    "transformers_5": ["numpy", "av", "pillow", "safetensors", "transformers==5.*", "huggingface_hub>=1",
                       "opencv-python"],
    # a headless OpenCV where the others have opencv-python
    "opencv_headless": ["numpy", "av", "pillow", "safetensors", "transformers==4.57.*", "huggingface_hub==0.36.*",
                        "opencv-python-headless==4.10.*"],
    # nothing but torch: everything the pack needs must come
    "fresh": [],
}

needs_builds = pytest.mark.skipif(os.environ.get("MUSETALK_INSTALL_TESTS") != "1",
                                  reason="set MUSETALK_INSTALL_TESTS=1 to build environments from PyPI (minutes)")


class Environment:
    def __init__(self, folder, pip_env):
        self.folder = folder
        self.python = os.path.join(folder, "bin", "python")
        self.pip_env = pip_env

    def run(self, *args, check=True):
        result = subprocess.run([self.python, *args], capture_output=True, text=True, env=self.pip_env,
                                timeout=1800, cwd=REPO)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                                 f"{result.stderr[-3000:]}")
        return result

    def pip(self, *args, check=True):
        return self.run("-m", "pip", "--disable-pip-version-check", *args, check=check)

    def installed(self):
        """{normalised name: version} of every distribution in the environment."""
        listing = json.loads(self.pip("list", "--format", "json").stdout)
        return {normalised(entry["name"]): entry["version"] for entry in listing}


@pytest.fixture(scope="module")
def builder(tmp_path_factory):
    """Makes environments: a venv holding torch (copied from one template) plus the given requirements."""
    root = tmp_path_factory.mktemp("install_envs")
    pip_env = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}  # pip's cache is shared
    constraints = os.path.join(REPO, ".ci", "constraints.txt")
    template = root / "template"
    subprocess.run([sys.executable, "-m", "venv", str(template)], check=True, timeout=300)
    base = Environment(str(template), pip_env)
    base.pip("install", "-q", "-c", constraints, "torch")

    def build(name, requirements):
        # a venv finds its packages relative to its interpreter, so a copy of the template is a working venv;
        # hard links make the copy (and torch's 1 GB) free
        folder = root / name
        subprocess.run(["cp", "-al", str(template), str(folder)], check=True, timeout=300)
        environment = Environment(str(folder), pip_env)
        if requirements:
            environment.pip("install", "-q", "-c", constraints, *requirements)
        return environment

    return build


def opencv_of(installed):
    return {name: version for name, version in installed.items() if name in OPENCV}


@needs_builds
@pytest.mark.parametrize("name", ["comfyui_0.3.64", "comfyui_lower_bounds", "transformers_5", "opencv_headless"])
def test_requirements_change_nothing_installed(builder, name, tmp_path):
    environment = builder(name, ENVIRONMENTS[name])
    before = environment.installed()
    assert len(opencv_of(before)) == 1
    report = tmp_path / "report.json"
    # as a user runs it: no constraints of ours, pip's default strategy
    environment.pip("install", "--dry-run", "-q", "--report", str(report), "-r", "requirements.txt")
    would_install = {normalised(item["metadata"]["name"]): item["metadata"]["version"]
                     for item in json.loads(report.read_text())["install"]}
    assert {n: (before[n], v) for n, v in would_install.items() if n in before} == {}, "would change these"
    assert set(would_install) & OPENCV == set()

    environment.pip("install", "-q", "-r", "requirements.txt")
    environment.run("install.py")
    after = environment.installed()
    assert {n: v for n, v in after.items() if n in before} == before
    assert set(after) - set(before) <= set(would_install)
    environment.pip("check")
    environment.run("-c", "import cv2, av, soxr, safetensors, huggingface_hub, numpy, PIL")
    if "transformers" in before:  # what ComfyUI imports at start still imports
        environment.run("-c", "import transformers.models.clip")


@needs_builds
def test_fresh_environment_gets_everything_the_pack_needs(builder):
    environment = builder("fresh", ENVIRONMENTS["fresh"])
    environment.pip("install", "-q", "-r", "requirements.txt")
    environment.run("install.py")
    assert list(opencv_of(environment.installed())) == ["opencv-python-headless"]
    environment.pip("check")
    environment.run("-c", "import cv2, av, soxr, safetensors, huggingface_hub, numpy, PIL")
    environment.run("install.py")  # run again (an update): OpenCV is there now, nothing is added
    assert list(opencv_of(environment.installed())) == ["opencv-python-headless"]


def test_requirements_name_no_opencv_and_match_pyproject():
    with open(os.path.join(REPO, "requirements.txt")) as f:
        lines = [line.split("#")[0].strip() for line in f]
    requirements = [line for line in lines if line]
    assert not [r for r in requirements if normalised(r).startswith("opencv")]
    with open(os.path.join(REPO, "pyproject.toml")) as f:
        pyproject = f.read()
    for requirement in requirements:
        assert f'"{requirement}"' in pyproject, f"{requirement} is missing from pyproject.toml's dependencies"
    assert "opencv" not in pyproject.split("[project]")[1].split("[project.urls]")[0]
