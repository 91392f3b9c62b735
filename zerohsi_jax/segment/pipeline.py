"""Reference video -> per-frame human/object masks, prompted by the render of the initial state.

This is the paper's Sec. 3.2 processing step as one call: read and resize the generated video to
the render, check it against the camera, propose prompts from the render's visible groups, run
SAM2 (cached next to the video) and, on request, write pictures to look at.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from jaxtyping import Bool, Float, UInt8

from ..io.pictures import mask_overlay, mask_overlay_frames, side_by_side
from ..io.video import load_video_for_camera, write_image, write_video
from ..splat.camera import Camera
from .prompts import Prompt, prompts_from_groups, visible_group_masks
from .sam2_video import default_mask_cache_path, segment_video


@dataclass(frozen=True)
class ReferenceSegmentation:
    frames: UInt8[np.ndarray, "T H W 3"]
    """The kept frames at the render resolution."""
    fps: float
    """Frame rate of the kept frames."""
    camera: Camera
    """The camera at the render resolution (intrinsics scaled)."""
    masks: dict[str, Bool[np.ndarray, "T H W"]]
    prompts: dict[str, Prompt]
    cache_path: Path | None


def segment_reference_video(
    video_path: str | os.PathLike,
    camera: Camera,
    group_masks: Float[np.ndarray, "H W G"],
    groups: Mapping[str, int],
    *,
    checkpoint: str | os.PathLike | None,
    model_config: str | None = None,
    device: str = "auto",
    stride: int = 3,
    max_frames: int | None = None,
    num_points: int = 5,
    num_negative: int = 0,
    threshold: float = 0.5,
    use_cache: bool = True,
    pictures_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> ReferenceSegmentation:
    """Segment the named groups (e.g. {"human": 1, "object": 2}) through a generated video.

    `group_masks` is `render(..., num_groups=G).group_masks` of the initial state, seen by `camera`;
    its size is the render resolution the video is resized to. With `pictures_dir`, writes
    prompts.png (frame 0 | frame 0 with the render's visible regions and the prompts) and
    masks.mp4 (every frame with its masks)."""
    group_masks = np.asarray(group_masks, np.float32)
    height, width = group_masks.shape[:2]
    frames, fps, fitted = load_video_for_camera(
        video_path,
        camera,
        stride=stride,
        max_frames=max_frames,
        render_size=(width, height),
        progress=progress,
    )
    prompts = prompts_from_groups(
        group_masks, groups, num_points=num_points, num_negative=num_negative, threshold=threshold
    )
    cache_path = default_mask_cache_path(video_path) if use_cache else None
    masks = segment_video(
        frames,
        prompts,
        checkpoint=checkpoint,
        model_config=model_config,
        device=device,
        cache_path=cache_path,
        use_cache=use_cache,
        progress=progress,
    )
    if pictures_dir is not None:
        pictures_dir = Path(pictures_dir)
        visible = visible_group_masks(group_masks, groups, threshold=threshold)
        write_image(
            pictures_dir / "prompts.png",
            side_by_side(frames[0], mask_overlay(frames[0], visible, points=prompts), gap=4),
        )
        write_video(pictures_dir / "masks.mp4", mask_overlay_frames(frames, masks, points=prompts), fps)
    return ReferenceSegmentation(frames, fps, fitted, masks, prompts, cache_path)
