"""Pipeline stages, one per module; importing this package registers all of them."""

import importlib
import pkgutil

from cir.stages.base import Context, Stage, register_stage, registered_stages, stage_class

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base" and not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["Context", "Stage", "register_stage", "registered_stages", "stage_class"]
