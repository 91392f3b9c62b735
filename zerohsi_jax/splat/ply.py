"""INRIA 3DGS `.ply` files (graphdeco-inria/gaussian-splatting's layout), read and written.

One `vertex` element of float32 properties: x y z nx ny nz f_dc_0..2 f_rest_* opacity scale_0..2
rot_0..3. Values are stored before activation (opacity logit, log-scale, unnormalised wxyz
quaternion), and f_rest is channel-major: f_rest[c * (K - 1) + (k - 1)] = sh[k, c].
"""

from __future__ import annotations

import itertools
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from plyfile import PlyData, PlyElement, PlyListProperty

from ..files import atomic_write
from .gaussians import Gaussians, sh_degree_of

_REST_COUNTS = {0: 0, 9: 1, 24: 2, 45: 3}  # f_rest properties -> SH degree


class PlyFormatError(ValueError):
    """A `.ply` file that is not a 3DGS Gaussian file; the message names the file and the problem."""


def load_ply(path, dtype=jnp.float32) -> Gaussians:
    """Read an INRIA 3DGS `.ply` file (SH degree 0 to 3, binary or ASCII)."""
    path = Path(path)
    if path.is_dir():
        found = sorted(str(p.relative_to(path)) for p in itertools.islice(path.rglob("*.ply"), 3))
        hint = f" (it holds {', '.join(found)})" if found else ""
        raise PlyFormatError(f"{path}: is a directory, not a .ply file; give the path of the Gaussian .ply file{hint}")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such Gaussian .ply file")
    try:
        ply = PlyData.read(str(path))
    except Exception as err:  # plyfile raises several types for a broken header or body
        raise PlyFormatError(f"{path}: not a readable PLY file ({type(err).__name__}: {err})") from None
    extra = _rows_past_declared(path, ply)
    if extra:
        last = ply.elements[-1]
        rows = "vertices" if last.name == "vertex" else f"'{last.name}' rows"
        raise PlyFormatError(
            f"{path}: the header declares {last.count} {rows} ('element {last.name} {last.count}') but the file "
            f"holds {extra} more after them, which would be dropped; correct the count in the header (to "
            f"{last.count + extra} if they are Gaussians) or cut the extra rows from the file"
        )
    names = [e.name for e in ply.elements]
    if "vertex" not in names:
        raise PlyFormatError(f"{path}: no 'vertex' element (found {names}); a 3DGS file stores Gaussians as vertices")
    v = ply["vertex"]
    props = [p.name for p in v.properties]
    required = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity"]
    required += [f"scale_{i}" for i in range(3)] + [f"rot_{i}" for i in range(4)]
    missing = [p for p in required if p not in props]
    if missing:
        raise PlyFormatError(
            f"{path}: missing vertex properties {missing}; a 3DGS file needs x y z f_dc_0..2 "
            "f_rest_* opacity scale_0..2 rot_0..3"
        )
    rest = sorted((p for p in props if p.startswith("f_rest_")), key=lambda p: int(p.split("_")[-1]))
    if len(rest) not in _REST_COUNTS:
        raise PlyFormatError(
            f"{path}: {len(rest)} f_rest properties; SH degree 0-3 needs 0, 9, 24 or 45"
        )
    if [int(p.split("_")[-1]) for p in rest] != list(range(len(rest))):
        raise PlyFormatError(f"{path}: f_rest properties are not numbered 0..{len(rest) - 1}")
    n = v.count
    if n == 0:
        raise PlyFormatError(f"{path}: the file holds no Gaussians")

    def col(name):
        return np.asarray(v[name], np.float32)

    k = (_REST_COUNTS[len(rest)] + 1) ** 2
    sh = np.zeros((n, k, 3), np.float32)
    sh[:, 0] = np.stack([col(f"f_dc_{c}") for c in range(3)], -1)
    if k > 1:
        rest_vals = np.stack([col(p) for p in rest], -1).reshape(n, 3, k - 1)
        sh[:, 1:] = np.transpose(rest_vals, (0, 2, 1))
    arrays = {
        "means": np.stack([col("x"), col("y"), col("z")], -1),
        "quats": np.stack([col(f"rot_{i}") for i in range(4)], -1),
        "log_scales": np.stack([col(f"scale_{i}") for i in range(3)], -1),
        "opacity_logits": col("opacity"),
        "sh": sh,
    }
    for name, arr in arrays.items():
        if not np.all(np.isfinite(arr)):
            bad = int(np.sum(~np.isfinite(arr.reshape(n, -1)).all(-1)))
            raise PlyFormatError(f"{path}: {bad} Gaussians have non-finite {name}")
    if np.any(np.linalg.norm(arrays["quats"], axis=-1) == 0):
        raise PlyFormatError(f"{path}: some rotations are the zero quaternion (rot_0..3 all 0)")
    return Gaussians(**{name: jnp.asarray(arr, dtype) for name, arr in arrays.items()})


def _rows_past_declared(path: Path, ply: PlyData) -> int:
    """Whole rows of the last element that follow the rows the header declares. plyfile reads
    exactly the declared counts and ignores the rest, so a header that undercounts would
    silently lose Gaussians."""
    with open(path, "rb") as f:
        head = b""
        while b"end_header" not in head:
            chunk = f.read(1 << 16)
            if not chunk:
                return 0
            head += chunk
        line_end = head.find(b"\n", head.index(b"end_header"))
        if line_end < 0:
            return 0
        body_start = line_end + 1
        if ply.text:
            f.seek(body_start)
            rows = sum(1 for line in f if line.strip())
            return max(0, rows - sum(e.count for e in ply.elements))
    if any(isinstance(prop, PlyListProperty) for e in ply.elements for prop in e.properties):
        return 0  # variable-size rows: the body's length says nothing about the counts
    row = ply.elements[-1].data.dtype.itemsize
    declared_end = body_start + sum(e.count * e.data.dtype.itemsize for e in ply.elements)
    return max(0, path.stat().st_size - declared_end) // row if row else 0


def save_ply(path, gaussians: Gaussians) -> None:
    """Write `gaussians` as a binary INRIA 3DGS `.ply` (float32). The file appears complete or
    not at all: it is written beside the target and renamed into place."""
    path = Path(path)
    g = gaussians
    if g.means.ndim != 2:
        raise ValueError(f"save_ply writes one Gaussian set; got means of shape {g.means.shape}")
    n, k = g.sh.shape[0], g.sh.shape[1]
    sh_degree_of(k)
    sh = np.asarray(g.sh, np.float32)
    cols = {
        "x": g.means[:, 0], "y": g.means[:, 1], "z": g.means[:, 2],
        "nx": np.zeros(n), "ny": np.zeros(n), "nz": np.zeros(n),
    }  # fmt: skip
    for c in range(3):
        cols[f"f_dc_{c}"] = sh[:, 0, c]
    rest = np.transpose(sh[:, 1:], (0, 2, 1)).reshape(n, -1)
    for i in range(rest.shape[1]):
        cols[f"f_rest_{i}"] = rest[:, i]
    cols["opacity"] = g.opacity_logits
    for i in range(3):
        cols[f"scale_{i}"] = g.log_scales[:, i]
    for i in range(4):
        cols[f"rot_{i}"] = g.quats[:, i]
    data = np.empty(n, dtype=[(name, "f4") for name in cols])
    for name, values in cols.items():
        data[name] = np.asarray(values, np.float32)
    atomic_write(path, PlyData([PlyElement.describe(data, "vertex")]).write)
