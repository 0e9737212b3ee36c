"""sha256 of model files, computed once per file and process, and which manifest files a file is.

The digest of a file is remembered in this process by (real path, size, modification time): a file rewritten in
place changes its time or size and is hashed again, while a workflow that loads the same file twice (ComfyUI
re-running a graph) hashes it once. Nothing is written to disk, so a read-only models folder works the same way.
"""
import hashlib
import os

CHUNK = 1 << 20
_digests = {}  # (real path, size, mtime_ns) -> sha256 hex digest


def file_sha256(path):
    """Hex sha256 of the file at `path` (a few seconds per GB the first time; remembered afterwards)."""
    stat = os.stat(path)
    key = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns)
    if key not in _digests:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(CHUNK):
                digest.update(block)
        _digests[key] = digest.hexdigest()
    return _digests[key]


def other_files_it_is(path, entries, allowed):
    """The manifest entries outside `allowed` that the file at `path` is byte for byte (same size and sha256).

    [] when it is none of them, or when it is also one of `allowed` (v1.0 and v1.5 share the same UNet config
    bytes). When no other entry has the file's size nothing is hashed: the usual case, the right file or a file the
    manifest does not know (a fine-tune, a converted copy), costs one stat.
    """
    size = os.path.getsize(path)

    def same_size(entry):
        return entry.get("size") == size and entry.get("sha256")

    others = [e for e in entries if same_size(e) and not any(e is a for a in allowed)]
    if not others:
        return []
    sha256 = file_sha256(path)
    if any(same_size(a) and a["sha256"] == sha256 for a in allowed):
        return []
    return [e for e in others if e["sha256"] == sha256]
