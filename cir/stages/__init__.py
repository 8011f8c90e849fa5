"""Pipeline stages, one per module; each registers itself when imported."""

from cir.stages.base import Context, Stage, register_stage, registered_stages, stage_class

__all__ = ["Context", "Stage", "register_stage", "registered_stages", "stage_class"]
