"""SAM2 prompt points proposed from the rendered initial frame (paper Sec. 3.2).

The generated video starts from our own render of the initial state, so the render knows which
pixel is whose: its occlusion-aware group coverage (`RenderOutput.group_masks`, the one-hot group
ids composited front to back) says where the human and the object are *visible*. Prompts are
spread over those visible pixels by farthest-point sampling, which covers the whole silhouette
(head, hands, feet) instead of clustering at its centre.

Points are (x, y) in pixel units with pixel centres at +0.5, the rasterizer's convention, in the
resolution of the render (= the resized video frames).
"""

from __future__ import annotations

from collections.abc import Mapping

import cv2
import numpy as np
from jaxtyping import Bool, Float, Int

Prompt = tuple[Float[np.ndarray, "K 2"], Int[np.ndarray, " K"]]
"""(points xy, labels): label 1 marks the object, 0 marks 'not this object'."""


def farthest_point_prompts(
    mask: Bool[np.ndarray, "H W"],
    num_points: int,
    *,
    erode_px: float = 3.0,
) -> Float[np.ndarray, "K 2"]:
    """Up to `num_points` (x, y) pixel centres of `mask`, spread out by farthest-point sampling.

    The first point is the mask pixel deepest inside the mask (maximum of the distance transform),
    the most reliable single click; each further point is the candidate farthest from those chosen.
    Candidates are the pixels more than `erode_px` from the boundary (so clicks avoid edges, where
    the generated video and the render disagree most), or the whole mask when that leaves none.
    Fewer points come back only when the mask has fewer pixels. Deterministic."""
    mask = np.asarray(mask, bool)
    if mask.ndim != 2:
        raise ValueError(f"farthest_point_prompts: mask must be (H, W), got shape {mask.shape}")
    if num_points < 1:
        raise ValueError(f"farthest_point_prompts: num_points must be >= 1, got {num_points}")
    if not mask.any():
        raise ValueError("farthest_point_prompts: the mask is empty, there is nothing to prompt")
    # Zero padding makes the image border count as boundary: a region cut by the frame edge is
    # not trusted up to the edge either.
    padded = np.pad(mask, 1).astype(np.uint8)
    depth = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    candidates = depth > erode_px
    if not candidates.any():
        candidates = mask
    rows, cols = np.nonzero(candidates)
    coords = np.stack([cols, rows], axis=1).astype(np.float64)
    first = int(np.argmax(depth[rows, cols]))
    chosen = [first]
    nearest_sq = np.sum((coords - coords[first]) ** 2, axis=1)
    while len(chosen) < num_points:
        nxt = int(np.argmax(nearest_sq))
        if nearest_sq[nxt] <= 0.0:  # every candidate already chosen
            break
        chosen.append(nxt)
        nearest_sq = np.minimum(nearest_sq, np.sum((coords - coords[nxt]) ** 2, axis=1))
    return (coords[chosen] + 0.5).astype(np.float32)


def visible_group_masks(
    group_masks: Float[np.ndarray, "H W G"],
    groups: Mapping[str, int],
    *,
    threshold: float = 0.5,
) -> dict[str, Bool[np.ndarray, "H W"]]:
    """Per name, the pixels where that group is visible: its coverage is >= `threshold` and no
    other group covers the pixel more (so a pixel belongs to at most one name)."""
    coverage = np.asarray(group_masks, np.float32)
    if coverage.ndim != 3:
        raise ValueError(f"group_masks must be (H, W, G), got shape {coverage.shape}")
    num_groups = coverage.shape[-1]
    dominant = np.argmax(coverage, axis=-1)
    visible = {}
    for name, group in groups.items():
        if not 0 <= group < num_groups:
            raise ValueError(f"{name}: group id {group} is not in the render's {num_groups} groups")
        visible[name] = (coverage[..., group] >= threshold) & (dominant == group)
    return visible


def prompts_from_groups(
    group_masks: Float[np.ndarray, "H W G"],
    groups: Mapping[str, int],
    *,
    num_points: int = 5,
    num_negative: int = 0,
    threshold: float = 0.5,
    erode_px: float = 3.0,
) -> dict[str, Prompt]:
    """SAM2 prompts for each named group from the render's occlusion-aware group coverage.

    Positive points: farthest-point samples of the group's visible pixels. With `num_negative` > 0,
    each name also gets that many negative points on every other named group's visible pixels,
    which helps SAM2 keep touching human and object apart."""
    visible = visible_group_masks(group_masks, groups, threshold=threshold)
    for name, mask in visible.items():
        if not mask.any():
            raise ValueError(
                f"{name} (group {groups[name]}) is visible on no pixel of the rendered initial frame at "
                f"coverage >= {threshold}: it is out of view or hidden behind something; move the camera "
                f"or the {name}, or lower the threshold"
            )
    positives = {
        name: farthest_point_prompts(mask, num_points, erode_px=erode_px) for name, mask in visible.items()
    }
    prompts: dict[str, Prompt] = {}
    for name, pos in positives.items():
        points, labels = [pos], [np.ones(len(pos), np.int32)]
        if num_negative > 0:
            for other, mask in visible.items():
                if other != name:
                    neg = farthest_point_prompts(mask, num_negative, erode_px=erode_px)
                    points.append(neg)
                    labels.append(np.zeros(len(neg), np.int32))
        prompts[name] = (np.concatenate(points).astype(np.float32), np.concatenate(labels))
    return prompts


def prompts_from_render(
    group_masks: Float[np.ndarray, "H W G"],
    *,
    human_group: int,
    object_group: int | None = None,
    num_points: int = 5,
    num_negative: int = 0,
    threshold: float = 0.5,
    erode_px: float = 3.0,
) -> dict[str, Prompt]:
    """Prompts named "human" and (when the scene has a dynamic object) "object"; see `prompts_from_groups`."""
    groups = {"human": human_group}
    if object_group is not None:
        groups["object"] = object_group
    return prompts_from_groups(
        group_masks,
        groups,
        num_points=num_points,
        num_negative=num_negative,
        threshold=threshold,
        erode_px=erode_px,
    )
