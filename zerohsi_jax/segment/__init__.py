"""Human/object segmentation of the reference video: SAM2 prompted from the rendered initial frame.

Importing this package does not import Torch; only running SAM2 does."""

from .pipeline import ReferenceSegmentation, segment_reference_video
from .prompts import (
    Prompt,
    farthest_point_prompts,
    prompts_from_groups,
    prompts_from_render,
    visible_group_masks,
)
from .sam2_video import (
    CHECKPOINTS_PAGE,
    DEFAULT_MODEL_CONFIG,
    SAM2CheckpointError,
    check_checkpoint,
    checkpoint_name_for_config,
    default_mask_cache_path,
    load_cached_masks,
    load_sam2_predictor,
    mask_cache_key,
    resolve_device,
    run_sam2,
    sam2_config_for_checkpoint,
    save_masks,
    segment_video,
)

__all__ = [
    "CHECKPOINTS_PAGE",
    "DEFAULT_MODEL_CONFIG",
    "Prompt",
    "ReferenceSegmentation",
    "SAM2CheckpointError",
    "check_checkpoint",
    "checkpoint_name_for_config",
    "default_mask_cache_path",
    "farthest_point_prompts",
    "load_cached_masks",
    "load_sam2_predictor",
    "mask_cache_key",
    "prompts_from_groups",
    "prompts_from_render",
    "resolve_device",
    "run_sam2",
    "sam2_config_for_checkpoint",
    "save_masks",
    "segment_reference_video",
    "segment_video",
    "visible_group_masks",
]
