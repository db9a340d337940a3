"""Let a torchvision whose compiled extension cannot load (a CUDA build next to a CPU torch) import anyway.

`.ci/setup` copies this file into the environment's site-packages together with a one-line `.pth` file, and only
when `import torchvision` fails there with "operator torchvision::nms does not exist". That error comes from
`torchvision/_meta_registrations.py`, which registers fake kernels for `torchvision::nms` and `torchvision::qnms`
without checking that the extension defined them. This hook defines the two schemas (with a plain-torch CPU
kernel) right before that module runs, and only if the ops are still missing. Transforms, datasets and models
then work (and `torch.ops.torchvision.nms`); `torchvision.ops.*` and `torchvision.io` decoding stay unavailable,
which rpb-lab does not use (images are read with PIL, as the dataset classes do).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys

_TARGET = "torchvision._meta_registrations"
_libs: list = []  # keeps the torch.library.Library objects alive


def _nms_cpu(dets, scores, iou_threshold: float):
    import torch

    order = scores.argsort(descending=True)
    x1, y1, x2, y2 = dets.unbind(1)
    areas = (x2 - x1) * (y2 - y1)
    suppressed = torch.zeros(dets.shape[0], dtype=torch.bool)
    keep = []
    for i in order.tolist():
        if suppressed[i]:
            continue
        keep.append(i)
        w = (torch.minimum(x2[i], x2) - torch.maximum(x1[i], x1)).clamp(min=0)
        h = (torch.minimum(y2[i], y2) - torch.maximum(y1[i], y1)).clamp(min=0)
        inter = w * h
        iou = inter / (areas[i] + areas - inter)
        suppressed |= iou > iou_threshold
    return torch.tensor(keep, dtype=torch.int64, device=dets.device)


def _define_missing_ops() -> None:
    import torch

    if hasattr(torch.ops.torchvision, "nms"):
        try:
            torch.ops.torchvision.nms.default  # noqa: B018 - raises when the schema is missing
            return
        except (AttributeError, RuntimeError):
            pass
    lib = torch.library.Library("torchvision", "FRAGMENT")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.impl("nms", _nms_cpu, "CPU")
    lib.impl("qnms", _nms_cpu, "CPU")
    _libs.append(lib)


class _Loader(importlib.abc.Loader):
    def __init__(self, inner):
        self._inner = inner

    def create_module(self, spec):
        return self._inner.create_module(spec)

    def exec_module(self, module):
        _define_missing_ops()
        self._inner.exec_module(module)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != _TARGET:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader)
        return spec


if not any(isinstance(f, _Finder) for f in sys.meta_path):
    sys.meta_path.insert(0, _Finder())
