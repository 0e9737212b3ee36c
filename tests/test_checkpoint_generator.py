"""Our generator must write exactly the files the golden fixtures were made with."""
import filecmp
import os
import subprocess
import sys

import pytest

from conftest import REPO

SHARED_GENERATOR = os.path.join(os.path.dirname(REPO), "shared", "tools", "make_checkpoints.py")


@pytest.mark.skipif(not os.path.isfile(SHARED_GENERATOR), reason="../shared/tools is not beside this checkout")
def test_files_equal_the_reference_generator(models_dir, tmp_path):
    subprocess.run([sys.executable, SHARED_GENERATOR, "--out", str(tmp_path)], check=True, capture_output=True)
    reference = tmp_path / "models"
    compared = 0
    for folder, _, names in os.walk(reference):
        for name in names:
            relative = os.path.relpath(os.path.join(folder, name), reference)
            assert filecmp.cmp(os.path.join(folder, name), os.path.join(models_dir, relative), shallow=False), relative
            compared += 1
    assert compared == 14
