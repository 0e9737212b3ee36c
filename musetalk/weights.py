"""Reading checkpoint files safely and strictly.

Every failure becomes a `WeightsError` that names the file, what was expected there and how to fix it, because a
MuseTalk install mixes files from six sources and a wrong or truncated file is the most common support question.
"""
import json
import os
import pickle
import types

import torch

DOWNLOAD_HINT = "python -m musetalk download --version {version}"


class WeightsError(RuntimeError):
    """A checkpoint is missing, unreadable or does not match the network it is meant for."""

    def __init__(self, path, problem, expected, fix):
        self.path, self.problem, self.expected, self.fix = path, problem, expected, fix
        super().__init__(f"{path}: {problem}\n  expected: {expected}\n  fix: {fix}")


def read_state_dict(path, expected, fix, unwrap=()):
    """Load a tensor dict from a safetensors or torch pickle file without executing any pickled code.

    `unwrap` lists container keys (e.g. "state_dict") whose value is the real state dict when present.
    """
    if not os.path.isfile(path):
        raise WeightsError(path, "file not found", expected, fix)
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path, device="cpu")
        else:
            state = _torch_load(path)
    except Exception as error:  # torch and safetensors raise many types for a damaged file
        raise WeightsError(path, f"cannot be read ({type(error).__name__}: {error}); the file is damaged, "
                                 "truncated or not a checkpoint", expected, fix) from error
    for key in unwrap:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()) or not state:
        raise WeightsError(path, "holds no tensor dictionary", expected, fix)
    return state


def read_json(path, expected, fix):
    """A model's JSON config; an unreadable or malformed file becomes a WeightsError."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as error:
        raise WeightsError(path, f"cannot be read as JSON ({error})", expected, fix) from error


def _torch_load(path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=_is_zip(path))
    except pickle.UnpicklingError:
        # Training checkpoints (mmengine's DWPose file) carry metadata objects the weights-only loader refuses;
        # read them with an unpickler that rebuilds tensors and turns everything else into inert placeholders.
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_TENSORS_ONLY, mmap=_is_zip(path))


class _Inert:
    """Stands in for any non-tensor object of a checkpoint; constructing or filling it runs no code."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


_TENSOR_GLOBALS = {("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor"),
                   ("torch._utils", "_rebuild_parameter"), ("collections", "OrderedDict"), ("torch", "Size")}


class _TensorsOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _TENSOR_GLOBALS or (module == "torch" and name.endswith("Storage")):
            return super().find_class(module, name)
        return _Inert


_TENSORS_ONLY = types.SimpleNamespace(Unpickler=_TensorsOnlyUnpickler, load=None, __name__="tensors_only")


def _is_zip(path):
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"  # torch >= 1.6 format; the legacy format cannot be memory-mapped


def strip_prefix(state, prefix):
    """Drop a wrapper prefix (DataParallel's `module.`, HF's `model.`) when every key carries it."""
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


def check_state_dict(state, reference, path, expected, fix):
    """Raise WeightsError unless `state` has exactly the keys and shapes of `reference` (a state dict or shapes)."""
    missing = [k for k in reference if k not in state]
    unexpected = [k for k in state if k not in reference]
    wrong = [f"{k} {tuple(state[k].shape)} (needs {tuple(reference[k].shape)})"
             for k in reference if k in state and tuple(state[k].shape) != tuple(reference[k].shape)]
    if not (missing or unexpected or wrong):
        return
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if items:
            more = f" and {len(items) - 3} more" if len(items) > 3 else ""
            parts.append(f"{len(items)} {label}: {', '.join(items[:3])}{more}")
    raise WeightsError(path, "does not match the network (" + "; ".join(parts) + ")", expected, fix)


def load_strict(module, state, path, expected, fix, assign=False):
    """Put `state` into `module` after checking keys and shapes; returns the module in eval mode.

    `assign=True` adopts the tensors instead of copying them (for modules built on the meta device)."""
    check_state_dict(state, module.state_dict(), path, expected, fix)
    module.load_state_dict(state, strict=True, assign=assign)
    return module.eval().requires_grad_(False)
