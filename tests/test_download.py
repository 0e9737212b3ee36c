"""The downloader against a loopback fake of the Hugging Face resolve endpoint and a plain file server: no network.

The fake answers HEAD/GET /{repo}/resolve/{revision}/{file} with the headers hf_hub_download relies on (X-Repo-Commit,
ETag, X-Linked-Etag/X-Linked-Size for LFS files, Content-Length, Range), and /files/{name} as a plain HTTPS-like host.
It can cut a response mid-body or serve damaged bytes, to test resumes and verification.
"""
import hashlib
import importlib.util
import json
import os
import random
import subprocess
import sys
import threading
import time
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import huggingface_hub.constants
import huggingface_hub.file_download
import huggingface_hub.utils._http
import pytest

from conftest import REPO

from musetalk import __main__ as cli
from musetalk import models
from musetalk.download import STAGING_DIR, DownloadError, download, verify

COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPO_ID = "fake-org/fake-musetalk"


def _payload(seed, size):
    return random.Random(seed).randbytes(size)


class FakeHub:
    """Loopback server holding `hf[(repo, file)] = (bytes, is_lfs)` and `urls[name] = bytes`.

    `cut[path] = n` cuts the next n GETs of `path` after half the body; `corrupt` holds paths served with one byte
    flipped (same length, wrong sha256); `requests` logs (method, path, Range header).
    """

    def __init__(self):
        self.hf, self.urls, self.cut, self.corrupt, self.requests = {}, {}, {}, set(), []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.hub = self
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def endpoint(self):
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def gets(self, path):
        return [r for r in self.requests if r[0] == "GET" and r[1] == path]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_HEAD(self):
        self._serve(body=False)

    def do_GET(self):
        self._serve(body=True)

    def _serve(self, body):
        hub = self.server.hub
        hub.requests.append((self.command, self.path, self.headers.get("Range")))
        found = self._lookup(hub)
        if found is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data, lfs, hub_headers = found
        served = bytes([data[0] ^ 0xFF]) + data[1:] if self.path in hub.corrupt else data
        start = int(self.headers["Range"].split("=")[1].split("-")[0]) if self.headers.get("Range") else 0
        self.send_response(206 if start else 200)
        if hub_headers:
            self.send_header("X-Repo-Commit", COMMIT)
            if lfs:  # LFS files: the etag and size of the linked blob, as the Hub sends them
                self.send_header("X-Linked-Etag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("X-Linked-Size", str(len(data)))
            self.send_header("ETag", f'"{hashlib.sha1(data).hexdigest()}"')
        self.send_header("Accept-Ranges", "bytes")
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        if not body:
            return
        chunk = served[start:]
        if hub.cut.get(self.path, 0) > 0:
            hub.cut[self.path] -= 1
            chunk = chunk[: len(chunk) // 2]  # HTTP/1.0: the connection closes right after, short of Content-Length
        self.wfile.write(chunk)

    def _lookup(self, hub):
        if "/resolve/" in self.path:
            repo, rest = self.path[1:].split("/resolve/", 1)
            filename = rest.split("/", 1)[1]
            if (repo, filename) in hub.hf:
                return (*hub.hf[(repo, filename)], True)
        elif self.path.startswith("/files/") and self.path[len("/files/"):] in hub.urls:
            return hub.urls[self.path[len("/files/"):]], False, False
        return None


@pytest.fixture
def hub(monkeypatch, tmp_path):
    server = FakeHub()
    monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    for name in ("HF_TOKEN", "HF_HUB_OFFLINE", "MUSETALK_MODELS"):
        monkeypatch.delenv(name, raising=False)
    yield server
    server.close()


@pytest.fixture
def manifest(hub, tmp_path):
    """A three-version-aware manifest: an LFS weight and a small json on the fake Hub, a url file, a v1.0-only file."""
    files = {"unet": _payload(1, 300_000), "config": b'{"in_channels": 8}\n', "detector": _payload(2, 200_000),
             "old": _payload(3, 50_000)}
    hub.hf[(REPO_ID, "v15/unet.pth")] = (files["unet"], True)
    hub.hf[(REPO_ID, "config.json")] = (files["config"], False)
    hub.hf[(REPO_ID, "v10/old.bin")] = (files["old"], True)
    hub.urls["detector.pth"] = files["detector"]

    def entry(path, versions, source, data):
        return {"path": path, "versions": versions, "component": "x", "source": source, "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest()}

    entries = [
        entry("unet15/unet.pth", ["v1.5"], {"hf": REPO_ID, "file": "v15/unet.pth"}, files["unet"]),
        entry("vae/config.json", ["v1.5", "v1.0"], {"hf": REPO_ID, "file": "config.json"}, files["config"]),
        entry("det/detector.pth", ["v1.5", "v1.0"], {"url": hub.endpoint + "/files/detector.pth"}, files["detector"]),
        entry("unet10/old.bin", ["v1.0"], {"hf": REPO_ID, "file": "v10/old.bin"}, files["old"]),
    ]
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"files": entries}))
    return str(path), files


UNET_GET = f"/{REPO_ID}/resolve/main/v15/unet.pth"
DETECTOR_GET = "/files/detector.pth"


def _tree(root):
    """Relative paths of every file and link under root; fails if any of them is a symlink."""
    found = []
    for folder, dirs, names in os.walk(root):
        for name in dirs + names:
            path = os.path.join(folder, name)
            assert not os.path.islink(path), f"symlink left in the models folder: {path}"
            if name in names:
                found.append(os.path.relpath(path, root).replace(os.sep, "/"))
    return sorted(found)


def test_full_download_lays_out_verified_files_and_nothing_else(hub, manifest, tmp_path):
    manifest_path, files = manifest
    root = tmp_path / "models"
    lines = []
    assert download("v1.5", str(root), log=lines.append, manifest=manifest_path) == str(root)
    assert _tree(root) == ["det/detector.pth", "unet15/unet.pth", "vae/config.json"]  # no cache, no v1.0 file
    assert (root / "unet15" / "unet.pth").read_bytes() == files["unet"]
    assert (root / "det" / "detector.pth").read_bytes() == files["detector"]
    assert not (root / STAGING_DIR).exists()
    assert [c.state for c in verify(str(root), "v1.5", manifest_path)] == ["ok"] * 3
    assert [c.state for c in verify(str(root), "v1.0", manifest_path)] == ["ok", "ok", "missing"]
    assert any(line.startswith("verified") and "unet15/unet.pth" in line for line in lines)


def test_files_present_and_valid_are_not_fetched_again(hub, manifest, tmp_path):
    manifest_path, _ = manifest
    root = str(tmp_path / "models")
    download("v1.5", root, log=lambda _: None, manifest=manifest_path)
    hub.requests.clear()
    lines = []
    download("v1.5", root, log=lines.append, manifest=manifest_path)
    assert hub.requests == []
    assert sum(line.startswith("present") for line in lines) == 3


def test_hf_transfer_cut_mid_body_is_resumed_with_range(hub, manifest, tmp_path, monkeypatch):
    manifest_path, files = manifest
    # huggingface_hub writes in chunks of this size (10 MB): smaller than the test file, so the cut leaves bytes on disk
    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 16384, raising=False)
    monkeypatch.setattr(huggingface_hub.file_download, "DOWNLOAD_CHUNK_SIZE", 16384, raising=False)  # < 0.23
    hub.cut[UNET_GET] = 1
    root = tmp_path / "models"
    download("v1.5", str(root), log=lambda _: None, manifest=manifest_path)
    ranges = [r for _, _, r in hub.gets(UNET_GET)]
    assert ranges[0] is None and len(ranges) == 2
    assert 0 < int(ranges[1].split("=")[1].rstrip("-")) <= len(files["unet"]) // 2
    assert (root / "unet15" / "unet.pth").read_bytes() == files["unet"]


def test_url_transfer_cut_repeatedly_keeps_the_part_file_and_the_next_run_resumes(hub, manifest, tmp_path):
    manifest_path, files = manifest
    hub.cut[DETECTOR_GET] = 100  # every try breaks off: this run must give up, keeping what it got
    root = tmp_path / "models"
    with pytest.raises(DownloadError) as error:
        download("v1.5", str(root), log=lambda _: None, manifest=manifest_path)
    assert "detector.pth" in str(error.value) and "run the same command again" in str(error.value)
    assert not (root / "det" / "detector.pth").exists()
    part = root / STAGING_DIR / "url" / "det" / "detector.pth.part"
    kept = part.stat().st_size
    assert 0 < kept < len(files["detector"])
    gets = hub.gets(DETECTOR_GET)
    assert gets[0][2] is None and gets[1][2] == f"bytes={len(files['detector']) // 2}-"  # resumed within the run

    hub.cut[DETECTOR_GET] = 0
    hub.requests.clear()
    download("v1.5", str(root), log=lambda _: None, manifest=manifest_path)
    assert [r for _, _, r in hub.gets(DETECTOR_GET)] == [f"bytes={kept}-"]
    assert (root / "det" / "detector.pth").read_bytes() == files["detector"]
    assert not (root / STAGING_DIR).exists()


def test_a_damaged_file_is_reported_and_replaced(hub, manifest, tmp_path):
    manifest_path, files = manifest
    root = tmp_path / "models"
    download("v1.5", str(root), log=lambda _: None, manifest=manifest_path)
    unet = root / "unet15" / "unet.pth"
    unet.write_bytes(b"\0" * len(files["unet"]))  # right size, wrong bytes: only the sha256 can tell
    (root / "det" / "detector.pth").write_bytes(b"truncated")
    assert {c.path: c.state for c in verify(str(root), "v1.5", manifest_path)}[str(unet)] == "bad"
    lines = []
    download("v1.5", str(root), log=lines.append, manifest=manifest_path)
    assert any(line.startswith("damaged") and "sha256" in line for line in lines)
    assert any(line.startswith("damaged") and "9 bytes, expected" in line for line in lines)
    assert unet.read_bytes() == files["unet"]
    assert [c.state for c in verify(str(root), "v1.5", manifest_path)] == ["ok"] * 3


def test_a_source_serving_wrong_bytes_fails_naming_file_and_expected_hash(hub, manifest, tmp_path):
    manifest_path, files = manifest
    hub.corrupt.add(UNET_GET)
    root = tmp_path / "models"
    with pytest.raises(DownloadError) as error:
        download("v1.5", str(root), log=lambda _: None, manifest=manifest_path)
    message = str(error.value)
    assert str(root / "unet15" / "unet.pth") in message
    assert hashlib.sha256(files["unet"]).hexdigest() in message
    assert len(hub.gets(UNET_GET)) == 2  # fetched once more before giving up
    assert not (root / "unet15" / "unet.pth").exists()  # a file that fails verification never reaches the layout
    assert (root / "vae" / "config.json").exists()  # the other files still arrive


def test_missing_source_file_and_unreachable_host_give_clear_errors(hub, manifest, tmp_path, monkeypatch):
    manifest_path, _ = manifest
    del hub.hf[(REPO_ID, "config.json")]
    with pytest.raises(DownloadError) as error:
        download("v1.5", str(tmp_path / "a"), log=lambda _: None, manifest=manifest_path)
    assert "config.json not found on" in str(error.value) and "fix:" in str(error.value)

    # huggingface_hub backs off for ~20 s before it gives up on a host; the wait itself is not under test
    fast_time = types.SimpleNamespace(**{n: getattr(time, n) for n in dir(time) if not n.startswith("_")})
    fast_time.sleep = lambda seconds: None
    monkeypatch.setattr(huggingface_hub.utils._http, "time", fast_time, raising=False)
    hub.close()  # nothing listens any more: a network that is down
    lines = []
    with pytest.raises(DownloadError) as error:
        download("v1.5", str(tmp_path / "b"), log=lines.append, manifest=manifest_path)
    message = str(error.value)
    assert "cannot reach" in message and "HF_ENDPOINT" in message and "unet15/unet.pth" in message
    assert os.path.join("vae", "config.json") + ": skipped" in message  # an unreachable host: not retried per file
    assert "skipped   vae/config.json" in lines


def test_offline_mode_fetches_no_hub_file_but_still_plain_urls(hub, manifest, tmp_path, monkeypatch):
    manifest_path, _ = manifest
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    root = tmp_path / "models"
    with pytest.raises(DownloadError) as error:
        download("v1.5", str(root), log=lambda _: None, manifest=manifest_path)
    assert "offline mode is on (HF_HUB_OFFLINE)" in str(error.value)
    assert not any("/resolve/" in path for _, path, _ in hub.requests)
    assert (root / "det" / "detector.pth").exists()


def test_cli_exit_codes(hub, manifest, tmp_path, monkeypatch, capsys):
    manifest_path, _ = manifest
    monkeypatch.setattr(models, "MANIFEST_PATH", manifest_path)
    root = str(tmp_path / "models")
    assert cli.main(["check", "--models", root]) == 1
    assert "missing" in capsys.readouterr().out
    assert cli.main(["download", "--to", root]) == 0
    assert cli.main(["check", "--models", root]) == 0
    os.remove(os.path.join(root, "det", "detector.pth"))
    hub.urls.clear()
    assert cli.main(["download", "--to", root]) == 1
    err = capsys.readouterr().err
    assert "error: " in err and "HTTP 404" in err and "Traceback" not in err


def test_python_dash_m_musetalk_runs_from_the_repo_root(tmp_path):
    env = {**os.environ, "MUSETALK_MODELS": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "musetalk", "check", "--version", "v1.0"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "whisper/tiny.pt" in result.stdout and "python -m musetalk download --version v1.0" in result.stderr


def _load_install_script(monkeypatch, pack_dir):
    spec = importlib.util.spec_from_file_location("musetalk_install_under_test", os.path.join(REPO, "install.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "PACK_DIR", str(pack_dir))
    return module


def test_install_script_downloads_only_when_asked(monkeypatch, tmp_path):
    install = _load_install_script(monkeypatch, tmp_path)
    calls = []
    monkeypatch.setattr(install.subprocess, "call", lambda command, cwd: calls.append((command, cwd)) or 0)
    monkeypatch.delenv("MUSETALK_DOWNLOAD", raising=False)
    assert install.main() == 0 and calls == []
    monkeypatch.setenv("MUSETALK_DOWNLOAD", "v2")
    assert install.main() == 1 and calls == []
    monkeypatch.setenv("MUSETALK_DOWNLOAD", "v1.0")
    assert install.main() == 0
    assert calls == [([sys.executable, "-m", "musetalk", "download", "--version", "v1.0"], str(tmp_path))]


def test_default_models_folder_is_comfyuis_when_the_pack_is_installed_there(monkeypatch, tmp_path):
    pack = tmp_path / "ComfyUI" / "custom_nodes" / "ComfyUI-MuseTalk"
    pack.mkdir(parents=True)
    assert models.comfyui_models_dir(str(pack)) is None  # no ComfyUI/models folder: not a ComfyUI install
    (tmp_path / "ComfyUI" / "models").mkdir()
    assert models.comfyui_models_dir(str(pack)) == str(tmp_path / "ComfyUI" / "models" / "musetalk")
    assert models.comfyui_models_dir(str(tmp_path / "elsewhere" / "ComfyUI-MuseTalk")) is None
    monkeypatch.setattr(models, "PACK_MODELS_DIR", str(pack / "models"))
    monkeypatch.delenv("MUSETALK_MODELS", raising=False)
    assert models.standalone_models_dir() == str(tmp_path / "ComfyUI" / "models" / "musetalk")
    monkeypatch.setenv("MUSETALK_MODELS", str(tmp_path / "mine"))
    assert models.standalone_models_dir() == str(tmp_path / "mine")
    assert models.standalone_models_dir(str(tmp_path / "given")) == str(tmp_path / "given")
