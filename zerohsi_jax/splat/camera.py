"""Pinhole cameras in the OpenCV convention (x right, y down, z forward)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float


class Camera(eqx.Module):
    """A pinhole camera: world-to-camera `viewmat` and intrinsics in pixels.

    The float fields are leaves (differentiable, vmappable: a batch of cameras is a Camera
    whose leaves have a leading axis); the image size and clip planes are static."""

    viewmat: Float[Array, "4 4"]
    fx: Float[Array, ""]
    fy: Float[Array, ""]
    cx: Float[Array, ""]
    cy: Float[Array, ""]
    width: int = eqx.field(static=True)
    height: int = eqx.field(static=True)
    near: float = eqx.field(static=True, default=0.01)
    far: float = eqx.field(static=True, default=1e10)

    def __init__(self, viewmat, fx, fy, cx, cy, width, height, near=0.01, far=1e10):
        viewmat = jnp.asarray(viewmat)
        if not jnp.issubdtype(viewmat.dtype, jnp.floating):
            viewmat = viewmat.astype(jnp.result_type(float))
        self.viewmat = viewmat
        dtype = viewmat.dtype
        self.fx = jnp.asarray(fx, dtype)
        self.fy = jnp.asarray(fy, dtype)
        self.cx = jnp.asarray(cx, dtype)
        self.cy = jnp.asarray(cy, dtype)
        self.width = int(width)
        self.height = int(height)
        self.near = float(near)
        self.far = float(far)
        if self.viewmat.shape[-2:] != (4, 4):
            raise ValueError(f"Camera.viewmat must be (4, 4), got {self.viewmat.shape}")
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"Camera size must be positive, got {self.width}x{self.height}")
        if not 0.0 < self.near < self.far:
            raise ValueError(f"need 0 < near < far, got near={self.near}, far={self.far}")

    @property
    def K(self) -> Float[Array, "3 3"]:
        zero, one = jnp.zeros_like(self.fx), jnp.ones_like(self.fx)
        return jnp.stack(
            [
                jnp.stack([self.fx, zero, self.cx], -1),
                jnp.stack([zero, self.fy, self.cy], -1),
                jnp.stack([zero, zero, one], -1),
            ],
            -2,
        )

    @property
    def position(self) -> Float[Array, "3"]:
        """Camera centre in world coordinates: -R^T t."""
        r = self.viewmat[..., :3, :3]
        t = self.viewmat[..., :3, 3]
        return -jnp.einsum("...ji,...j->...i", r, t)

    def with_viewmat(self, viewmat) -> Camera:
        return eqx.tree_at(lambda c: c.viewmat, self, jnp.asarray(viewmat, self.viewmat.dtype))

    def resized(self, width: int, height: int) -> Camera:
        """The same camera at another resolution, intrinsics scaled per axis."""
        sx, sy = width / self.width, height / self.height
        return Camera(
            self.viewmat, self.fx * sx, self.fy * sy, self.cx * sx, self.cy * sy, width, height, self.near, self.far
        )

    # ------------------------------------------------------------------ construction and files
    @staticmethod
    def look_at(eye, target, up=(0.0, 1.0, 0.0), *, fov_y_deg: float = 50.0, width: int = 256, height: int = 256,
                near: float = 0.01, far: float = 1e10) -> Camera:
        """A camera at `eye` looking at `target`; `up` is the world direction that appears upwards
        in the image (default +y, the SMPL-X convention)."""
        viewmat = look_at_viewmat(np.asarray(eye, float), np.asarray(target, float), np.asarray(up, float))
        f = 0.5 * height / math.tan(math.radians(fov_y_deg) / 2)
        return Camera(viewmat, f, f, width / 2, height / 2, width, height, near, far)

    def to_dict(self) -> dict:
        return {
            "viewmat": np.asarray(self.viewmat, float).tolist(),
            "fx": float(self.fx), "fy": float(self.fy), "cx": float(self.cx), "cy": float(self.cy),
            "width": self.width, "height": self.height, "near": self.near, "far": self.far,
        }  # fmt: skip

    @staticmethod
    def from_dict(d: dict, source: str = "camera") -> Camera:
        """A camera from a dict: either `viewmat` (world-to-camera, OpenCV) or `camtoworld`, or
        `eye` + `target` (+ `up`, `fov_y_deg`); intrinsics fx, fy, cx, cy or `fov_y_deg`."""
        try:
            width, height = int(d["width"]), int(d["height"])
        except KeyError as err:
            raise ValueError(f"{source}: missing key {err.args[0]!r} (a camera needs width and height)") from None
        near, far = float(d.get("near", 0.01)), float(d.get("far", 1e10))
        if "viewmat" in d:
            viewmat = np.asarray(d["viewmat"], float)
        elif "camtoworld" in d:
            viewmat = np.linalg.inv(np.asarray(d["camtoworld"], float))
        elif "eye" in d and "target" in d:
            viewmat = look_at_viewmat(
                np.asarray(d["eye"], float), np.asarray(d["target"], float), np.asarray(d.get("up", (0, 1, 0)), float)
            )
        else:
            raise ValueError(
                f"{source}: give the pose as 'viewmat' (4x4 world-to-camera), 'camtoworld' or 'eye'+'target'"
            )
        if viewmat.shape != (4, 4):
            raise ValueError(f"{source}: the camera pose must be 4x4, got shape {viewmat.shape}")
        if all(k in d for k in ("fx", "fy")):
            fx, fy = float(d["fx"]), float(d["fy"])
        elif "fov_y_deg" in d:
            fy = 0.5 * height / math.tan(math.radians(float(d["fov_y_deg"])) / 2)
            fx = fy
        else:
            raise ValueError(f"{source}: give the intrinsics as fx, fy (pixels) or fov_y_deg")
        cx, cy = float(d.get("cx", width / 2)), float(d.get("cy", height / 2))
        return Camera(viewmat, fx, fy, cx, cy, width, height, near, far)

    def save_json(self, path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @staticmethod
    def load_json(path) -> Camera:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"camera file {path} does not exist")
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from None
        return Camera.from_dict(d, source=str(path))


def look_at_viewmat(eye: np.ndarray, target: np.ndarray, up: np.ndarray) -> np.ndarray:
    """World-to-camera matrix (OpenCV axes) of a camera at `eye` looking at `target`."""
    forward = target - eye
    forward = forward / np.linalg.norm(forward)
    right = np.cross(forward, up)
    if np.linalg.norm(right) < 1e-9:
        raise ValueError("look_at: the up vector is parallel to the viewing direction")
    right = right / np.linalg.norm(right)
    down = np.cross(forward, right)
    rot = np.stack([right, down, forward])  # rows: camera axes in world coordinates
    viewmat = np.eye(4)
    viewmat[:3, :3] = rot
    viewmat[:3, 3] = -rot @ eye
    return viewmat
