"""Pinhole cameras in the OpenCV convention (x right, y down, z forward)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float


class CameraFileError(ValueError):
    """A camera file (or dict) that does not describe a usable pinhole camera. The message names
    the file, the field and how to fix it."""


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
        `eye` + `target` (+ `up`, `fov_y_deg`); intrinsics fx, fy, cx, cy or `fov_y_deg`.

        Every field is checked before anything is built, because a bad value does not fail
        loudly later: a NaN or a mirrored pose renders a plausible-looking wrong image. A bad
        field raises `CameraFileError` naming `source`, the field and the fix."""
        if not isinstance(d, dict):
            raise CameraFileError(
                f"{source}: a camera is a JSON object such as "
                '{"width": 640, "height": 480, "eye": [0, 0, 0], "target": [0, 0, 1], "fov_y_deg": 50}, '
                f"got a {type(d).__name__}"
            )
        width = _size_field(d, "width", source)
        height = _size_field(d, "height", source)
        near = _number_field(d, "near", source, default=0.01)
        far = _number_field(d, "far", source, default=1e10)
        if not 0.0 < near < far:
            raise CameraFileError(
                f"{source}: need 0 < 'near' < 'far', got near={near}, far={far}; the clip planes are distances "
                "along the viewing axis in scene units (defaults 0.01 and 1e10)"
            )
        viewmat = _pose_from_fields(d, source)
        fx, fy = _focal_from_fields(d, height, source)
        cx = _number_field(d, "cx", source, default=width / 2)
        cy = _number_field(d, "cy", source, default=height / 2)
        return Camera(viewmat, fx, fy, cx, cy, width, height, near, far)

    def save_json(self, path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @staticmethod
    def load_json(path) -> Camera:
        """A camera from a JSON file (`from_dict`'s fields); `CameraFileError` names the file and
        the field that is wrong."""
        path = Path(path)
        if path.is_dir():
            raise CameraFileError(f"{path}: is a directory, not a camera .json file; give the file's path")
        if not path.is_file():
            raise FileNotFoundError(f"camera file {path} does not exist")
        try:
            d = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CameraFileError(f"{path}: not valid JSON ({err})") from None
        return Camera.from_dict(d, source=str(path))


# Largest |R R^T - I| entry accepted as a rotation: far above the 1e-7 of a float32 round trip
# or six written decimals, far below any scale or shear that changes a render visibly.
_ROTATION_TOLERANCE = 1e-4
_POSE_HELP = "'viewmat' (4x4 world-to-camera, OpenCV axes), 'camtoworld' (its inverse) or 'eye' + 'target'"


def _field(d: dict, key: str, source: str, default=None):
    if key in d:
        return d[key]
    if default is None:
        what = "width and height" if key in ("width", "height") else repr(key)
        raise CameraFileError(f"{source}: missing key {key!r} (a camera needs {what})")
    return default


def _number_field(d: dict, key: str, source: str, default=None) -> float:
    value = _field(d, key, source, default)
    # bool is an int subclass: `true` in a file is a typo, not 1.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CameraFileError(f"{source}: {key!r} is {value!r}; expected a number")
    if not math.isfinite(value):
        raise CameraFileError(f"{source}: {key!r} is {value}; expected a finite number")
    return float(value)


def _size_field(d: dict, key: str, source: str) -> int:
    value = _number_field(d, key, source)
    if value != int(value) or value <= 0:
        raise CameraFileError(f"{source}: {key!r} is {value:g}; the image {key} is a positive whole number of pixels")
    return int(value)


def _array_field(d: dict, key: str, source: str, shape: tuple[int, ...], default=None) -> np.ndarray:
    value = _field(d, key, source, default)
    what = "x".join(map(str, shape)) + (" matrix" if len(shape) == 2 else " vector")
    try:
        arr = np.asarray(value, float)
    except (TypeError, ValueError):
        raise CameraFileError(f"{source}: {key!r} must be a {what} of numbers, got {value!r}") from None
    if arr.shape != shape:
        raise CameraFileError(f"{source}: {key!r} must be a {what}, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        where = tuple(int(i) for i in np.argwhere(~np.isfinite(arr))[0])
        raise CameraFileError(
            f"{source}: {key!r} holds a non-finite value ({arr[where]} at index {list(where)}); every entry of the "
            "camera pose must be a finite number"
        )
    return arr


def _check_rigid(m: np.ndarray, key: str, source: str) -> None:
    """A 4x4 pose must be a rotation and a translation: anything else renders a distorted scene."""
    if np.max(np.abs(m[3] - np.array([0.0, 0.0, 0.0, 1.0]))) > 1e-6:
        raise CameraFileError(
            f"{source}: {key!r} must end in the row [0, 0, 0, 1], got {m[3].tolist()}; a camera pose is a rigid "
            "transform, not a projection"
        )
    rot = m[:3, :3]
    singular = np.linalg.svd(rot, compute_uv=False)
    if np.max(np.abs(rot @ rot.T - np.eye(3))) > _ROTATION_TOLERANCE:
        spread = singular.max() - singular.min()
        if spread <= _ROTATION_TOLERANCE * singular.max():
            shape = f"scaled by {singular[0]:.6g}"
            fix = "divide the upper-left 3x3 block by that factor (scale the scene instead)"
        else:
            shape = "sheared or unevenly scaled"
            fix = "orthonormalise the upper-left 3x3 block (its nearest rotation is U V^T of its SVD)"
        raise CameraFileError(
            f"{source}: the rotation block of {key!r} (upper-left 3x3) is not a rotation: it is {shape} "
            f"(singular values {', '.join(f'{v:.6g}' for v in singular)}, a rotation has 1, 1, 1); {fix}"
        )
    if np.linalg.det(rot) < 0:
        raise CameraFileError(
            f"{source}: the rotation block of {key!r} (upper-left 3x3) has determinant -1: it mirrors the scene. "
            "A camera's axes are right-handed (OpenCV: x right, y down, z forward); a pose converted from "
            "another convention by flipping one axis needs a second axis flipped too (OpenGL to OpenCV: flip y "
            "and z)"
        )


def _pose_from_fields(d: dict, source: str) -> np.ndarray:
    if "viewmat" in d:
        viewmat = _array_field(d, "viewmat", source, (4, 4))
        _check_rigid(viewmat, "viewmat", source)
        return viewmat
    if "camtoworld" in d:
        c2w = _array_field(d, "camtoworld", source, (4, 4))
        _check_rigid(c2w, "camtoworld", source)
        # The rigid inverse: exact where a general inverse would add rounding to the rotation.
        viewmat = np.eye(4)
        viewmat[:3, :3] = c2w[:3, :3].T
        viewmat[:3, 3] = -c2w[:3, :3].T @ c2w[:3, 3]
        return viewmat
    if "eye" in d or "target" in d:
        eye = _array_field(d, "eye", source, (3,))
        target = _array_field(d, "target", source, (3,))
        up = _array_field(d, "up", source, (3,), default=(0.0, 1.0, 0.0))
        forward = target - eye
        scale = max(1.0, float(np.abs(eye).max()), float(np.abs(target).max()))
        if np.linalg.norm(forward) <= 1e-9 * scale:
            raise CameraFileError(
                f"{source}: 'eye' and 'target' are the same point {eye.tolist()}, so the camera has no viewing "
                "direction; 'target' is a point the camera looks at, away from 'eye'"
            )
        if np.linalg.norm(up) == 0:
            raise CameraFileError(
                f"{source}: 'up' is the zero vector; give the world direction that is up in the image"
            )
        sine = np.linalg.norm(np.cross(forward / np.linalg.norm(forward), up / np.linalg.norm(up)))
        if sine < 1e-6:
            raise CameraFileError(
                f"{source}: 'up' {up.tolist()} is parallel to the viewing direction target - eye, so the image's "
                "roll is undefined; give an 'up' across the view (e.g. [0, 0, 1] for a camera looking along y)"
            )
        return look_at_viewmat(eye, target, up / np.linalg.norm(up))
    raise CameraFileError(f"{source}: give the pose as {_POSE_HELP}")


def _focal_from_fields(d: dict, height: int, source: str) -> tuple[float, float]:
    if "fx" in d or "fy" in d:
        for key in ("fx", "fy"):
            other = "fy" if key == "fx" else "fx"
            if key not in d:
                raise CameraFileError(f"{source}: {other!r} is given without {key!r}; give both focal lengths "
                                      "(pixels), or 'fov_y_deg' alone")
        fx, fy = _number_field(d, "fx", source), _number_field(d, "fy", source)
        for key, value in (("fx", fx), ("fy", fy)):
            if value <= 0:
                raise CameraFileError(
                    f"{source}: {key!r} is {value:g}; a focal length is a positive number of pixels (a flipped "
                    "image axis belongs in the pose, not in the sign of the focal length)"
                )
        return fx, fy
    if "fov_y_deg" in d:
        fov = _number_field(d, "fov_y_deg", source)
        if not 0.0 < fov < 180.0:
            raise CameraFileError(
                f"{source}: 'fov_y_deg' is {fov:g}; a pinhole camera's vertical field of view lies strictly "
                "between 0 and 180 degrees (50 is a typical lens)"
            )
        f = 0.5 * height / math.tan(math.radians(fov) / 2)
        return f, f
    raise CameraFileError(f"{source}: give the intrinsics as 'fx', 'fy' (pixels) or 'fov_y_deg'")


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
