"""Models that cannot be captured whole at fixed shapes: which submodules compile as regions and
which Python stays on the host (plan.py), and the model with its regions attached (attached.py)."""
from .attached import AttachedModule, attach, validate_attached
from .plan import HostRegion, RegionPlan, plan_from_dict, plan_regions, plan_to_dict, regions_page, render_regions

__all__ = ["AttachedModule", "HostRegion", "RegionPlan", "attach", "plan_from_dict", "plan_regions", "plan_to_dict",
           "regions_page", "render_regions", "validate_attached"]
