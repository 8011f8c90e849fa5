"""Define torchvision's nms/qnms op schemas before torchvision loads.

Installed into the vLLM CPU environment by ``scripts/setup_vllm_env.sh`` together with a ``.pth``
file that calls :func:`install` at interpreter start. The registry's torchvision build is linked
against CUDA and cannot load its compiled ops next to the CPU-only torch; its Python code then
fails on ``torchvision::nms`` being unknown. Defining the two schemas first lets it import. The hook
costs nothing until something imports torchvision.
"""

import contextlib
import importlib.abc
import sys

_LIBRARIES = []  # a torch.library.Library drops its definitions when garbage-collected
_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor",
)


class _DefineSchemasFirst(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "torchvision":
            return None
        sys.meta_path.remove(self)
        import torch

        lib = torch.library.Library("torchvision", "FRAGMENT")
        for schema in _SCHEMAS:
            with contextlib.suppress(RuntimeError):  # defined by a torchvision that works here
                lib.define(schema)
        _LIBRARIES.append(lib)
        return None  # the regular finders import torchvision itself


def install() -> None:
    """Put the hook first on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, _DefineSchemasFirst) for f in sys.meta_path):
        sys.meta_path.insert(0, _DefineSchemasFirst())
