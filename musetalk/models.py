"""Which files a MuseTalk version needs, where they are, and the bundle of networks built from them.

Networks are read from disk the first time a stage needs them, so a workflow that only detects faces never reads the
3.4 GB UNet, and ComfyUI can start and validate graphs without any weight present.
"""
import json
import os
from dataclasses import dataclass, field

from .checksums import other_files_it_is
from .runtime import Runtime
from .weights import DOWNLOAD_HINT, WeightsError

VERSIONS = ("v1.5", "v1.0")
COMPONENTS = ("unet", "vae", "whisper", "dwpose", "face_parsing", "s3fd")
PACK_MODELS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models")
MANIFEST_PATH = os.path.join(PACK_MODELS_DIR, "manifest.json")
VAE_FOLDERS = ("sd-vae", "sd-vae-ft-mse")  # the HEAD and the original v1.0 folder names of the same weights


def load_manifest(path=None):
    """Entries of the manifest at `path` (default: the pack's models/manifest.json)."""
    with open(path or MANIFEST_PATH) as f:
        return json.load(f)["files"]


def manifest_files(version, path=None):
    """Manifest entries `version` needs ("all" for every version). Entries that may only stand in for another
    (`alternative_to`, e.g. the .bin of the VAE) are not needed and are left out."""
    return [e for e in load_manifest(path)
            if (version == "all" or version in e["versions"]) and "alternative_to" not in e]


def standalone_models_dir(explicit=None):
    """--models DIR, else $MUSETALK_MODELS, else ComfyUI/models/musetalk when the pack is installed in ComfyUI (where
    its nodes look), else the pack's own models/ folder."""
    return explicit or os.environ.get("MUSETALK_MODELS") or comfyui_models_dir() or PACK_MODELS_DIR


def comfyui_models_dir(pack_dir=None):
    """ComfyUI/models/musetalk when the pack sits in ComfyUI/custom_nodes/<pack>, else None."""
    comfy_models = comfyui_folder("models", pack_dir)
    return comfy_models and os.path.join(comfy_models, "musetalk")


def comfyui_folder(name, pack_dir=None):
    """ComfyUI's folder `name` ("models", "output") when the pack (`pack_dir`, default this one) sits in
    ComfyUI/custom_nodes/<pack> and that folder exists, else None: the command line's defaults are then where the
    nodes look."""
    custom_nodes = os.path.dirname(pack_dir or os.path.dirname(PACK_MODELS_DIR))
    folder = os.path.join(os.path.dirname(custom_nodes), name)
    if os.path.basename(custom_nodes) == "custom_nodes" and os.path.isdir(folder):
        return folder
    return None


@dataclass
class ModelFiles:
    """Resolves manifest paths against one or more models folders (ComfyUI may register several).

    `vae_file` optionally names a single-file VAE (e.g. from ComfyUI's models/vae) that replaces the sd-vae folder.
    """

    roots: list
    vae_file: str = None

    def find(self, relpath):
        for root in self.roots:
            path = os.path.join(root, relpath)
            if os.path.exists(path):
                return path
        return None

    def require(self, version, component):
        """Paths of `component`'s files for `version`, in manifest order; raises WeightsError naming the fix."""
        if component == "vae":
            return [self._vae_path(version)]
        entries = [e for e in manifest_files(version) if e["component"] == component]
        paths = [self.find(e["path"]) for e in entries]
        missing = [e["path"] for e, p in zip(entries, paths) if p is None]
        if missing:
            raise WeightsError(os.path.join(self.roots[0], missing[0]), "file not found",
                               f"MuseTalk {version} {component}: {', '.join(missing)} under one of {self.roots}",
                               self._fix(version) + self._other_version_hint(version, component))
        return paths

    def missing(self, version):
        """The components of `version` with a file missing (empty when everything is in place)."""
        missing = []
        for component in COMPONENTS:
            try:
                self.require(version, component)
            except WeightsError:
                missing.append(component)
        return missing

    def refuse_other_files(self, version, component, paths):
        """Raise WeightsError when a file at `paths` (files, or folders of files) is, by its size and sha256 in the
        manifest, the file of another version or network, e.g. the v1.0 UNet copied over the v1.5 one. Files the
        manifest does not know pass; only a file whose size is another manifest file's is hashed (checksums.py)."""
        entries = load_manifest()
        allowed = [e for e in entries if version in e["versions"] and e["component"] == component]
        for path in _files_in(paths):
            others = other_files_it_is(path, entries, allowed)
            if not others:
                continue
            other = others[0]
            wanted = " and ".join(e["path"] for e in allowed) or f"the {component} files"
            fix = f"run `{DOWNLOAD_HINT.format(version=version)}`, which replaces it with the right file"
            belongs = [v for v in other["versions"] if v != version]
            if belongs and other["component"] == component:
                fix += f"; to use this file, move it to {other['path']} and select version {belongs[0]}"
            raise WeightsError(path, f"is the MuseTalk {' and '.join(other['versions'])} {other['component']} file "
                                     f"{other['path']} (its size and sha256 in models/manifest.json)",
                               f"MuseTalk {version} {component}: {wanted}", fix)

    def _vae_path(self, version):
        if self.vae_file:
            return self.vae_file
        for folder in VAE_FOLDERS:
            path = self.find(folder)
            if path and os.path.isfile(os.path.join(path, "config.json")):
                return path
        raise WeightsError(os.path.join(self.roots[0], VAE_FOLDERS[0]), "folder not found",
                           "the sd-vae-ft-mse autoencoder as a diffusers folder (sd-vae/ or sd-vae-ft-mse/) "
                           "or a single vae-ft-mse-840000-ema-pruned.safetensors file", self._fix(version))

    def _fix(self, version):
        return f"run `{DOWNLOAD_HINT.format(version=version)}` (add `--to DIR` for another models folder)"

    def _other_version_hint(self, version, component):
        other = next(v for v in VERSIONS if v != version)
        entries = [e for e in manifest_files(other) if e["component"] == component and version not in e["versions"]]
        found = [e["path"] for e in entries if self.find(e["path"])]
        if found:
            return f"; found {', '.join(found)}, which belongs to {other}: select version {other} to use it"
        return ""


def _files_in(paths):
    for path in paths:
        if os.path.isdir(path):
            yield from sorted(os.path.join(path, n) for n in os.listdir(path) if os.path.isfile(os.path.join(path, n)))
        else:
            yield path


@dataclass
class MuseTalkModels:
    """Everything one MuseTalk version needs; each network is built on first use and then kept."""

    version: str
    files: ModelFiles
    runtime: Runtime
    precision: str = "auto"
    _built: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if self.version not in VERSIONS:
            raise ValueError(f"version must be one of {VERSIONS}, got {self.version!r}")

    def _get(self, component, role, build):
        if component not in self._built:
            paths = self.files.require(self.version, component)
            self.files.refuse_other_files(self.version, component, paths)
            expected = f"the MuseTalk {self.version} {component} checkpoint"
            fix = (f"re-download it with `{DOWNLOAD_HINT.format(version=self.version)}` "
                   f"(a damaged or other-version file must be deleted first)")
            module = build(paths, expected, fix)
            self._built[component] = self.runtime.manage(module, role, self.precision)
        return self._built[component]

    def release(self, *components):
        """Drop the built networks of `components` (names of COMPONENTS, e.g. "s3fd", "dwpose", "face_parsing"),
        so their memory can go once no caller holds them; a later getter call loads them again."""
        unknown = [c for c in components if c not in COMPONENTS]
        if unknown:
            raise ValueError(f"unknown component(s) {unknown}; the components are {COMPONENTS}")
        for component in components:
            self._built.pop(component, None)

    def unet(self):
        from .networks.unet import load_unet

        return self._get("unet", "unet", lambda p, e, f: load_unet(p[0], p[1], e, f))

    def vae(self):
        from .networks.vae import load_vae

        return self._get("vae", "vae", lambda p, e, f: load_vae(p[0], e, f))

    def whisper(self):
        from .networks.whisper import load_whisper

        # v1.5 uses the HF folder (config.json + weights), v1.0 the openai-format tiny.pt
        return self._get("whisper", "audio", lambda p, e, f: load_whisper(os.path.dirname(p[0]) if len(p) > 1 else p[0], e, f))

    def dwpose(self):
        from .networks.rtmpose import load_rtmpose

        return self._get("dwpose", "face", lambda p, e, f: load_rtmpose(p[0], e, f))

    def face_parser(self):
        from .networks.bisenet import load_bisenet

        return self._get("face_parsing", "face", lambda p, e, f: load_bisenet(p[0], e, f))

    def face_detector(self):
        from .networks.s3fd import load_s3fd

        return self._get("s3fd", "face", lambda p, e, f: load_s3fd(p[0], e, f))
