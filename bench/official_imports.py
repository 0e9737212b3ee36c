"""Import fixes for the official environment of `bench.bench_official`; `official_run.py` installs them first.

* mmcv-lite has no compiled ops, so `mmcv.ops` fails to import; RTMPose-l (DWPose) uses none of them, and mmpose and
  mmdet only import names from it at module level. Every `mmcv.ops` module is a stub: any name taken from one is a
  class whose construction or call fails loudly.
* The torchvision 0.28 wheel on this machine is a CUDA build: its compiled ops cannot load against the CPU torch 2.13,
  and its import then fails on registering fake kernels for `torchvision::nms` / `qnms`, ops that no longer exist.
  Their schemas are declared (with no kernel: a call fails) just before torchvision is first imported, so the rest of
  torchvision (transforms, used by the official VAE and face parser) imports and runs as released.
"""
import importlib.abc
import importlib.machinery
import sys
import types

STUBBED = "mmcv.ops"
TORCHVISION_OPS = ("nms", "qnms")


def _unavailable(module, name):
    def fail(*args, **kwargs):
        raise RuntimeError(f"{module}.{name} is stubbed in this environment (see bench/official_imports.py)")

    return type(name, (), {"__init__": fail, "__call__": fail})


class _StubModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _unavailable(self.__name__, name)


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    declared = None

    def find_spec(self, fullname, path, target=None):
        if fullname == STUBBED or fullname.startswith(STUBBED + "."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        if fullname == "torchvision" and self.declared is None:
            import torch

            self.declared = torch.library.Library("torchvision", "DEF")  # kept alive: dropping it undefines
            for op in TORCHVISION_OPS:
                self.declared.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        return None  # the real torchvision is found by the normal finders

    def create_module(self, spec):
        return _StubModule(spec.name)

    def exec_module(self, module):
        module.__path__ = []


def install():
    """Put the fixes in front of the import system; call before anything imports mmcv, mmpose or torchvision."""
    sys.meta_path.insert(0, _Finder())
