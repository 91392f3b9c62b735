"""Pictures for looking at results: reference | render | overlay panels and mask overlays.

Everything returns uint8 RGB arrays; `write_image` / `write_video` put them on disk."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import cv2
import numpy as np
from jaxtyping import Bool, UInt8

from .video import to_uint8

# Distinct, colour-blind-friendly-ish colours (Okabe-Ito order), used in turn for mask names.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 159, 0),
    (86, 180, 233),
    (0, 158, 115),
    (240, 228, 66),
    (0, 114, 178),
    (213, 94, 0),
    (204, 121, 167),
)
POSITIVE_POINT_COLOR = (0, 255, 0)
NEGATIVE_POINT_COLOR = (255, 0, 0)


def side_by_side(*panels: np.ndarray, gap: int = 0) -> UInt8[np.ndarray, "H W 3"]:
    """Panels of one height next to each other (e.g. reference | render | overlay), `gap` white
    columns apart."""
    if not panels:
        raise ValueError("side_by_side needs at least one panel")
    images = [to_uint8(p) for p in panels]
    heights = {im.shape[0] for im in images}
    if len(heights) > 1:
        raise ValueError(f"side_by_side: panels have different heights {[im.shape[0] for im in images]}")
    if gap > 0:
        spacer = np.full((images[0].shape[0], gap, 3), 255, np.uint8)
        images = [x for im in images for x in (im, spacer)][:-1]
    return np.concatenate(images, axis=1)


def overlay(
    image: np.ndarray,
    mask_or_render: np.ndarray,
    alpha: float = 0.5,
    color: tuple[int, int, int] = (255, 64, 64),
) -> UInt8[np.ndarray, "H W 3"]:
    """Blend a render (H, W, 3) over `image` with weight `alpha`, or tint a mask (H, W), bool or
    coverage in [0, 1], with `color` at weight `alpha` x coverage."""
    base = to_uint8(image).astype(np.float32)
    top = np.asarray(mask_or_render)
    if top.shape[:2] != base.shape[:2]:
        raise ValueError(f"overlay: image is {base.shape[:2]}, mask/render is {top.shape[:2]}")
    if top.ndim == 2 or (top.ndim == 3 and top.shape[-1] == 1):
        coverage = top.reshape(top.shape[:2]).astype(np.float32)
        if top.dtype == np.uint8:
            coverage /= 255.0
        weight = alpha * np.clip(coverage, 0.0, 1.0)[..., None]
        out = base * (1 - weight) + np.asarray(color, np.float32) * weight
    else:
        out = base * (1 - alpha) + to_uint8(top).astype(np.float32) * alpha
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def mask_overlay(
    frame: np.ndarray,
    masks: Mapping[str, Bool[np.ndarray, "H W"]],
    colors: Mapping[str, tuple[int, int, int]] | None = None,
    *,
    alpha: float = 0.5,
    contours: bool = True,
    points: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
    legend: bool = True,
) -> UInt8[np.ndarray, "H W 3"]:
    """`frame` with each named mask tinted in its colour and outlined; `points` (name -> (xy, labels))
    are drawn as rings coloured by their mask, filled green (positive) or red (negative)."""
    colors = dict(colors or {})
    for index, name in enumerate(masks if points is None else {**masks, **points}):
        colors.setdefault(name, PALETTE[index % len(PALETTE)])
    out = to_uint8(frame).copy()
    for name, mask in masks.items():
        mask = np.asarray(mask, bool)
        if mask.shape != out.shape[:2]:
            raise ValueError(f"mask_overlay: mask {name!r} is {mask.shape}, the frame is {out.shape[:2]}")
        out = overlay(out, mask, alpha, colors[name])
        if contours:
            found, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(out, found, -1, colors[name], 1, lineType=cv2.LINE_AA)
    radius = max(2, round(min(out.shape[:2]) / 100))
    for name, (xy, labels) in (points or {}).items():
        xy, labels = np.asarray(xy, float).reshape(-1, 2), np.asarray(labels).reshape(-1)
        for (x, y), label in zip(xy, labels, strict=True):
            centre = (int(x), int(y))  # the pixel that holds the (pixel-centre) coordinate
            fill = POSITIVE_POINT_COLOR if label > 0 else NEGATIVE_POINT_COLOR
            cv2.circle(out, centre, radius + 1, colors[name], -1, lineType=cv2.LINE_AA)
            cv2.circle(out, centre, radius, fill, -1, lineType=cv2.LINE_AA)
    if legend and out.shape[0] >= 48:
        scale = max(0.35, out.shape[0] / 900)
        y = int(18 * scale / 0.5)
        for name in masks:
            cv2.putText(out, name, (6, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
            cv2.putText(out, name, (6, y), cv2.FONT_HERSHEY_SIMPLEX, scale, colors[name], 1, cv2.LINE_AA)
            y += int(20 * scale / 0.5)
    return out


def mask_overlay_frames(
    frames: Sequence[np.ndarray] | np.ndarray,
    masks: Mapping[str, Bool[np.ndarray, "T H W"]],
    *,
    points: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
    alpha: float = 0.5,
) -> UInt8[np.ndarray, "T H W 3"]:
    """`mask_overlay` for every frame of a clip; the prompt `points` (on frame 0) are drawn on frame 0."""
    return np.stack(
        [
            mask_overlay(
                frame,
                {name: m[t] for name, m in masks.items()},
                alpha=alpha,
                points=points if t == 0 else None,
            )
            for t, frame in enumerate(frames)
        ]
    )
