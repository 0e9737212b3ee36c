"""Fetch the files of models/manifest.json one at a time, verify them, and check a models folder.

MuseTalk needs a dozen files from six places, a few of each repository, laid out as the official code expects. Each
file is fetched into a staging folder inside the models folder, checked against the size and sha256 the manifest
records, and only then renamed into place: the models folder never holds a half-written or unverified file, nor a
Hugging Face cache with its symlinks. A transfer that breaks off resumes where it stopped on the next run.
"""
import http.client
import logging
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from .checksums import file_sha256
from .models import VERSIONS, load_manifest, manifest_files, standalone_models_dir

log = logging.getLogger("musetalk")

STAGING_DIR = ".download"  # inside the models folder, so the final rename stays on one filesystem and is atomic
CHUNK = 1 << 20
URL_TIMEOUT_S = 60
TRANSFER_ATTEMPTS = 4  # per file and run; each try resumes from the bytes already received
FETCH_ATTEMPTS = 2  # a second fetch heals a transfer damaged on the way; a source serving wrong bytes fails twice
USER_AGENT = "ComfyUI-MuseTalk-downloader"
OFFLINE_FIX = "or copy the file there by hand (models/README.md, 'Offline install')"


class DownloadError(RuntimeError):
    """A file could not be fetched or does not match the manifest; the message says what, where and how to fix it.

    `unreachable` names the host when it could not be reached at all, so the other files it serves are skipped
    instead of each waiting through the same retries.
    """

    def __init__(self, message, unreachable=None):
        super().__init__(message)
        self.unreachable = unreachable


@dataclass
class FileCheck:
    """One manifest file in a models folder. `state`: "ok", "missing", "bad" (wrong size or sha256, see `detail`)
    or "unverified" (present, but the manifest knows neither size nor sha256)."""

    entry: dict
    path: str
    state: str
    detail: str = ""


def verify(models_dir, version="v1.5", manifest=None):
    """[FileCheck] for every file `version` ("v1.5", "v1.0" or "all") needs under `models_dir`, in manifest order.

    Hashes every present file (a few seconds per GB). `manifest` is another manifest.json path (tests).
    """
    return [FileCheck(*_check_place(models_dir, entry, manifest)) for entry in _entries(version, manifest)]


def download(version="v1.5", to=None, log=log.info, manifest=None):
    """Fetch what `version` needs into the models folder `to` (default: standalone_models_dir()); returns its path.

    Files already present and valid are kept; a present file of the wrong size or sha256 is reported and replaced.
    Hugging Face files come through `hf_hub_download` (HF_ENDPOINT and HF_TOKEN apply), url files through plain
    HTTPS with Range resumes. Raises DownloadError naming every file that failed; a rerun resumes partial transfers.
    """
    entries = _entries(version, manifest)
    root = os.path.abspath(standalone_models_dir(to))
    staging = os.path.join(root, STAGING_DIR)
    todo = []
    for entry in entries:
        present, _, state, detail = _check_place(root, entry, manifest)
        if state in ("ok", "unverified"):
            log(f"present   {present['path']}" + (" (nothing to verify)" if state == "unverified" else ""))
        else:
            if state == "bad":
                log(f"damaged   {present['path']}: {detail}; {entry['path']} will be downloaded")
            todo.append((entry, _target(root, entry)))
    _require_space(root, [e for e, _ in todo])
    failures, unreachable = [], set()
    for entry, target in todo:
        host = _host(entry["source"])
        if host in unreachable:
            log(f"skipped   {entry['path']}")
            failures.append(f"{target}: skipped, {host} could not be reached (see above)")
            continue
        try:
            _fetch_verified(entry, target, staging, log)
        except DownloadError as error:
            log(f"failed    {entry['path']}")
            failures.append(str(error))
            if error.unreachable:
                unreachable.add(error.unreachable)
    if failures:
        raise DownloadError("\n".join(failures) + f"\nPartial downloads are kept in {staging}; "
                            "run the same command again to resume.")
    shutil.rmtree(staging, ignore_errors=True)
    log(f"MuseTalk {version}: all {len(entries)} files present and verified in {root}")
    return root


def _entries(version, manifest):
    if version != "all" and version not in VERSIONS:
        raise ValueError(f"version must be one of {VERSIONS} or 'all', got {version!r}")
    return manifest_files(version, manifest)


def _target(root, entry):
    return os.path.join(root, *entry["path"].split("/"))


def _check_place(root, entry, manifest):
    """(entry, path, state, detail) of the file in `entry`'s place under `root`: the entry's own file, or when that
    is missing a present file the manifest lists as its alternative (`alternative_to`: the sd-vae .bin that the
    official scripts fetch instead of the .safetensors; the loader takes either)."""
    target = _target(root, entry)
    if not os.path.isfile(target):
        for other in load_manifest(manifest):
            if other.get("alternative_to") == entry["path"] and os.path.isfile(_target(root, other)):
                entry, target = other, _target(root, other)
                break
    return (entry, target, *_check_file(target, entry))


def _check_file(path, entry):
    """(state, detail) of `path` against the entry's size and sha256, as in FileCheck."""
    if not os.path.isfile(path):
        return "missing", ""
    size, sha256 = entry.get("size"), entry.get("sha256")
    actual_size = os.path.getsize(path)
    if size is not None and actual_size != size:
        return "bad", f"{actual_size} bytes, expected {size}"
    if sha256 is None:
        return ("ok", "") if size is not None else ("unverified", "no published size or sha256")
    actual = file_sha256(path)
    if actual != sha256:
        return "bad", f"sha256 {actual}, expected {sha256}"
    return "ok", ""


def _require_space(root, entries):
    need = sum(e.get("size") or 0 for e in entries)
    if not need:
        return
    os.makedirs(root, exist_ok=True)
    free = shutil.disk_usage(root).free
    if free < need:
        raise DownloadError(f"{root}: not enough disk space: {_gb(need)} needed, {_gb(free)} free\n"
                            "  fix: free some space, or download to another disk with --to DIR "
                            "(then point ComfyUI at it in extra_model_paths.yaml, see models/README.md)")


def _fetch_verified(entry, target, staging, log):
    """Fetch into staging, check, then rename over `target`; a damaged transfer is fetched once more."""
    source = entry["source"]
    origin = _origin(source)
    log(f"download  {entry['path']} ({_gb(entry['size']) if entry.get('size') else 'size unknown'}) from {origin}")
    for attempt in range(FETCH_ATTEMPTS):
        if "hf" in source:
            staged = _fetch_hf(source, os.path.join(staging, "hf"), target, log)
        else:
            part = os.path.join(staging, "url", *entry["path"].split("/")) + ".part"
            staged = _fetch_url(source["url"], part, entry.get("size"), target, log)
        state, detail = _check_file(staged, entry)
        if state != "bad":
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.replace(staged, target)
            log(f"verified  {entry['path']}" if state == "ok" else f"saved     {entry['path']} (nothing to verify)")
            return
        os.remove(staged)
        log(f"damaged   download of {entry['path']}: {detail}" + ("; fetching it again" if attempt == 0 else ""))
    raise DownloadError(
        f"{target}: the file served by {origin} does not match the manifest ({detail})\n"
        f"  expected: {entry.get('size')} bytes, sha256 {entry.get('sha256')}\n"
        "  fix: the source may have changed, or a proxy altered the transfer: try again later; if it persists, "
        "fetch the file by hand, compare its sha256 and report the difference")


def _origin(source):
    if "hf" in source:
        revision = f"@{source['revision'][:8]}" if source.get("revision") else ""
        return f"huggingface {source['hf']}{revision}/{source['file']}"
    return source["url"]


def _host(source):
    if "hf" in source:
        return _hf_endpoint() or "https://huggingface.co"
    return urllib.parse.urlsplit(source["url"]).netloc


def _fetch_hf(source, cache_dir, target, log):
    """One file through huggingface_hub into a private cache; returns the path of its real bytes (no symlink).

    A transfer that breaks off is resumed from the cache's partial file, here as with plain urls, because older
    huggingface_hub versions give up on the first broken connection.
    """
    import huggingface_hub
    from huggingface_hub import hf_hub_download

    if _truthy(os.environ.get("HF_HUB_OFFLINE")):  # checked here: huggingface_hub reads it only at import
        raise DownloadError(f"{target}: from {_origin(source)}: Hugging Face offline mode is on (HF_HUB_OFFLINE)\n"
                            f"  fix: unset HF_HUB_OFFLINE, {OFFLINE_FIX}", unreachable=_host(source))

    options = {"repo_id": source["hf"], "filename": source["file"], "revision": source.get("revision"),
               "cache_dir": cache_dir, "endpoint": _hf_endpoint(), "token": os.environ.get("HF_TOKEN") or None}
    if _version_tuple(huggingface_hub.__version__) < (0, 23):
        options["resume_download"] = True  # resuming became the default (and the flag deprecated) in 0.23
    for attempt in range(TRANSFER_ATTEMPTS):
        try:
            cached = hf_hub_download(**options)
            return os.path.realpath(cached)  # the cache links names to blobs; the blob is moved, the cache deleted
        except Exception as error:  # its exception types differ between huggingface_hub versions (requests, httpx)
            failure, resumable = _hf_error(error, source, target)
            if not resumable or attempt == TRANSFER_ATTEMPTS - 1:
                raise failure from error
            log(f"interrupted ({type(error).__name__}); resuming")


def _hf_endpoint():
    # passed explicitly because huggingface_hub reads HF_ENDPOINT only once, when it is first imported
    endpoint = os.environ.get("HF_ENDPOINT", "").strip().rstrip("/")
    return endpoint or None


def _version_tuple(text):
    parts = []
    for piece in text.split(".")[:2]:
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def _hf_error(error, source, target):
    """(DownloadError saying which usual cause applies: offline, access, missing file, network; whether a retry
    could resume the transfer)."""
    from huggingface_hub import utils as hub

    chain = _error_chain(error)
    statuses = {getattr(getattr(e, "response", None), "status_code", None) for e in chain}
    endpoint = _hf_endpoint() or "https://huggingface.co"
    where = f"{target}: from {_origin(source)}"
    if any(isinstance(e, hub.OfflineModeIsEnabled) for e in chain):
        problem, fix = "Hugging Face offline mode is on (HF_HUB_OFFLINE)", f"unset HF_HUB_OFFLINE, {OFFLINE_FIX}"
    elif any(isinstance(e, hub.RevisionNotFoundError) for e in chain):
        problem, fix = (f"revision {source.get('revision')} not found on {endpoint}",
                        f"the manifest may be outdated: update the pack, {OFFLINE_FIX}")
    elif any(isinstance(e, hub.RepositoryNotFoundError) for e in chain) or statuses & {401, 403}:
        problem, fix = (f"{endpoint} refused access to {source['hf']}",
                        "set HF_TOKEN to a token allowed to read it, and check HF_ENDPOINT if you use a mirror")
    elif 404 in statuses:
        problem, fix = (f"{source['file']} not found on {endpoint}",
                        f"the manifest may be outdated: update the pack, {OFFLINE_FIX}")
    else:
        cause = chain[-1]
        problem = f"cannot reach {endpoint} or the transfer failed ({type(cause).__name__}: {cause})"
        fix = ("check the network or proxy (HTTPS_PROXY) and run again to resume; where huggingface.co is blocked set "
               f"HF_ENDPOINT to a mirror; {OFFLINE_FIX}")
        # the metadata request failing (rather than the transfer) means the endpoint itself is out of reach
        if any(isinstance(e, hub.LocalEntryNotFoundError) for e in chain):
            return DownloadError(f"{where}: {problem}\n  fix: {fix}", unreachable=endpoint), False
        return DownloadError(f"{where}: {problem}\n  fix: {fix}"), True
    return DownloadError(f"{where}: {problem}\n  fix: {fix}"), False


def _error_chain(error):
    chain = [error]
    while len(chain) < 10 and (chain[-1].__cause__ or chain[-1].__context__) is not None:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
    return chain


def _truthy(value):
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _fetch_url(url, part, size, target, log):
    """Download `url` into the `.part` file, resuming with Range from what it already holds; returns `part`."""
    os.makedirs(os.path.dirname(part), exist_ok=True)
    for _ in range(TRANSFER_ATTEMPTS):
        have = os.path.getsize(part) if os.path.exists(part) else 0
        if size is not None and have >= size:
            if have == size:
                return part
            os.remove(part)  # longer than the file can be: not a prefix of it
            have = 0
        headers = {"User-Agent": USER_AGENT}
        if have:
            headers["Range"] = f"bytes={have}-"
            log(f"resuming  {os.path.basename(target)} at {_gb(have)}")
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=URL_TIMEOUT_S) as reply:
                resumed = bool(have) and reply.status == 206  # a plain 200 means the server ignored Range
                total = _reply_total(reply, have if resumed else 0)
                with open(part, "ab" if resumed else "wb") as out:
                    while block := reply.read(CHUNK):
                        out.write(block)
            if total is None or os.path.getsize(part) == total:
                return part
        except urllib.error.HTTPError as error:
            if error.code == 416 and have:  # the server knows no such range: start over
                os.remove(part)
                continue
            raise DownloadError(f"{target}: {url} answered HTTP {error.code} {error.reason}\n"
                                f"  fix: the address may have moved: update the pack, {OFFLINE_FIX}") from error
        except (OSError, http.client.HTTPException) as error:  # URLError, resets and timeouts are OSErrors
            received = os.path.getsize(part) if os.path.exists(part) else 0
            if received <= have:
                reason = getattr(error, "reason", error)
                raise DownloadError(f"{target}: cannot reach {url} ({reason})\n  fix: check the network or proxy "
                                    f"(HTTPS_PROXY) and run again, {OFFLINE_FIX}",
                                    unreachable=urllib.parse.urlsplit(url).netloc) from error
            log(f"interrupted after {_gb(received)} ({type(error).__name__})")
    received = os.path.getsize(part) if os.path.exists(part) else 0
    raise DownloadError(f"{target}: the transfer from {url} broke off {TRANSFER_ATTEMPTS} times; {_gb(received)} kept in "
                        f"{part}\n  fix: run the same command again to resume")


def _reply_total(reply, offset):
    """Full length of the file from Content-Range (resumed) or offset + Content-Length, else None."""
    content_range = reply.headers.get("Content-Range")
    if content_range and "/" in content_range and not content_range.endswith("*"):
        return int(content_range.rsplit("/", 1)[1])
    length = reply.headers.get("Content-Length")
    return offset + int(length) if length is not None else None


def _gb(n):
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"
