"""The paper's plausibility metrics (Tables 1 and 2) as JAX functions.

- Scene penetration from a signed distance field of a watertight scene mesh: the SDF is sampled
  once on a grid (negative inside, by the generalised winding number), cached, and queried by
  trilinear interpolation.
- Foot sliding as NeMF adapts it: horizontal foot displacement between frames, counted while
  the foot is in contact and weighted by its height.
- Hand-object contact ratio and object penetration depth as CHOIS defines them.
- Diversity: mean per-joint distance between every pair of sequences of one instance.
"""

from __future__ import annotations

import hashlib
import inspect
import marshal
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

# ------------------------------------------------------------------------------------- SDF


class SignedDistanceGrid(eqx.Module):
    """Signed distances (metres, negative inside) on a regular grid, read by trilinear interpolation."""

    values: Float[Array, "X Y Z"]
    origin: Float[Array, "3"]
    spacing: float = eqx.field(static=True)

    def __call__(self, points: Float[Array, "... 3"]) -> Float[Array, "..."]:
        """SDF at `points`; outside the grid, the distance to the grid box plus the border value."""
        shape = jnp.asarray(self.values.shape)
        g = (points - self.origin) / self.spacing
        inside = jnp.clip(g, 0.0, shape - 1.0)
        outside = jnp.linalg.norm((g - inside) * self.spacing, axis=-1)
        i0 = jnp.clip(jnp.floor(inside).astype(jnp.int32), 0, shape - 2)
        f = inside - i0
        value = 0.0
        for corner in range(8):
            offset = jnp.array([(corner >> 2) & 1, (corner >> 1) & 1, corner & 1])
            weight = jnp.prod(jnp.where(offset == 1, f, 1.0 - f), axis=-1)
            idx = i0 + offset
            value = value + weight * self.values[idx[..., 0], idx[..., 1], idx[..., 2]]
        return value + outside


def _point_triangle_distance(p, a, b, c):
    """Distance from points p (P, 3) to triangles (F, 3) each: (P, F). Ericson's region tests."""
    p = p[:, None, :]
    ab, ac, ap = b - a, c - a, p - a
    d1, d2 = jnp.sum(ab * ap, -1), jnp.sum(ac * ap, -1)
    bp = p - b
    d3, d4 = jnp.sum(ab * bp, -1), jnp.sum(ac * bp, -1)
    cp = p - c
    d5, d6 = jnp.sum(ab * cp, -1), jnp.sum(ac * cp, -1)
    va, vb, vc = d3 * d6 - d5 * d4, d5 * d2 - d1 * d6, d1 * d4 - d3 * d2
    denom = jnp.where(jnp.abs(va + vb + vc) > 1e-30, va + vb + vc, 1e-30)
    v_face, w_face = vb / denom, vc / denom
    closest = a + v_face[..., None] * ab + w_face[..., None] * ac
    safe = lambda x: jnp.where(jnp.abs(x) > 1e-30, x, 1e-30)  # noqa: E731
    # Edge AB, AC, BC and the vertices, in the standard order of tests.
    t_ab = d1 / safe(d1 - d3)
    t_ac = d2 / safe(d2 - d6)
    t_bc = (d4 - d3) / safe((d4 - d3) + (d5 - d6))
    cases = [
        ((d1 <= 0) & (d2 <= 0), jnp.broadcast_to(a, closest.shape)),
        ((d3 >= 0) & (d4 <= d3), jnp.broadcast_to(b, closest.shape)),
        ((d6 >= 0) & (d5 <= d6), jnp.broadcast_to(c, closest.shape)),
        ((vc <= 0) & (d1 >= 0) & (d3 <= 0), a + t_ab[..., None] * ab),
        ((vb <= 0) & (d2 >= 0) & (d6 <= 0), a + t_ac[..., None] * ac),
        ((va <= 0) & ((d4 - d3) >= 0) & ((d5 - d6) >= 0), b + t_bc[..., None] * (c - b)),
    ]
    for cond, point in reversed(cases):
        closest = jnp.where(cond[..., None], point, closest)
    return jnp.linalg.norm(p - closest, axis=-1)


def _winding_numbers(p, a, b, c):
    """Generalised winding number of the triangles around each point (P,): ~1 inside a closed,
    outward-oriented mesh, ~0 outside (Jacobson et al. 2013, van Oosterom-Strackee solid angle)."""
    ra, rb, rc = a - p[:, None], b - p[:, None], c - p[:, None]
    la, lb, lc = (jnp.linalg.norm(r, axis=-1) for r in (ra, rb, rc))
    det = jnp.sum(ra * jnp.cross(rb, rc), -1)
    den = la * lb * lc + jnp.sum(ra * rb, -1) * lc + jnp.sum(rb * rc, -1) * la + jnp.sum(rc * ra, -1) * lb
    return jnp.sum(2.0 * jnp.arctan2(det, den), axis=1) / (4.0 * jnp.pi)


def sdf_grid_from_mesh(vertices, faces, *, spacing: float = 0.05, padding: float = 0.2,
                       chunk: int = 512) -> SignedDistanceGrid:
    """Sample the signed distance of a watertight mesh on a grid covering it (+ padding)."""
    v = jnp.asarray(vertices, jnp.float32)
    f = jnp.asarray(faces, jnp.int32)
    lo = v.min(0) - padding
    hi = v.max(0) + padding
    counts = np.ceil(np.asarray(hi - lo) / spacing).astype(int) + 1
    axes = [lo[i] + spacing * jnp.arange(counts[i]) for i in range(3)]
    grid = jnp.stack(jnp.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]

    @jax.jit
    def block(p):
        dist = jnp.min(_point_triangle_distance(p, a, b, c), axis=1)
        inside = jnp.abs(_winding_numbers(p, a, b, c)) > 0.5  # either face orientation
        return jnp.where(inside, -dist, dist)

    pad = (-grid.shape[0]) % chunk
    padded = jnp.concatenate([grid, jnp.zeros((pad, 3), grid.dtype)])
    values = jax.lax.map(block, padded.reshape(-1, chunk, 3)).reshape(-1)[: grid.shape[0]]
    return SignedDistanceGrid(values.reshape(tuple(counts)), lo, float(spacing))


def _sdf_producer_source() -> bytes:
    """The code that computes a cached grid, so that an edit to it is a new cache entry rather
    than an old grid read back."""
    parts = []
    for fn in (sdf_grid_from_mesh, _point_triangle_distance, _winding_numbers):
        try:
            parts.append(inspect.getsource(fn).encode())
        except (OSError, TypeError):  # no source shipped: the compiled code stands for it
            parts.append(marshal.dumps(fn.__code__))
    return b"\0".join(parts)


def cached_sdf_grid(vertices, faces, cache_dir, *, spacing: float = 0.05) -> SignedDistanceGrid:
    """`sdf_grid_from_mesh`, computed once per mesh and spacing and stored under `cache_dir`. The
    file name is a hash of everything the grid depends on: the mesh, the spacing and padding, and
    the source of the functions that compute it."""
    v = np.ascontiguousarray(vertices, np.float32)
    f = np.ascontiguousarray(faces, np.int32)
    padding = 0.2
    digest = hashlib.sha256()
    for part in (repr((v.shape, f.shape, float(spacing), float(padding))).encode(), v.tobytes(), f.tobytes(),
                 _sdf_producer_source()):
        digest.update(part + b"\0")
    key = digest.hexdigest()[:16]
    path = Path(cache_dir) / f"sdf_{key}.npz"
    if path.exists():
        with np.load(path) as d:
            return SignedDistanceGrid(jnp.asarray(d["values"]), jnp.asarray(d["origin"]), float(d["spacing"]))
    grid = sdf_grid_from_mesh(v, f, spacing=spacing, padding=padding)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, values=np.asarray(grid.values), origin=np.asarray(grid.origin), spacing=grid.spacing)
    return grid


def scene_penetration(sdf: SignedDistanceGrid, vertices: Float[Array, "T V 3"]) -> dict[str, Float[Array, ""]]:
    """Share of body vertices inside the scene (%), and mean and max penetration depth (m) over
    the penetrating vertices (0 when none penetrates)."""
    d = sdf(vertices)
    inside = d < 0
    depth = jnp.where(inside, -d, 0.0)
    n = jnp.maximum(jnp.sum(inside), 1)
    return {"penetration_percent": 100.0 * jnp.mean(inside), "penetration_mean_m": jnp.sum(depth) / n,
            "penetration_max_m": jnp.max(depth)}


# ------------------------------------------------------------------------------- foot sliding


def foot_sliding(foot_positions: Float[Array, "T K 3"], height_threshold: float = 0.05,
                 up_axis: int = 1, floor_height: float = 0.0) -> Float[Array, ""]:
    """NeMF's foot skating, adapted: for each foot point and frame step, the horizontal
    displacement times (2 - 2^(h / H)) when the height h above the floor is below H (a foot
    touching the floor counts fully, one at H not at all); mean over steps and points (metres)."""
    h = foot_positions[..., up_axis] - floor_height
    horizontal = jnp.delete(foot_positions, up_axis, axis=-1, assume_unique_indices=True)
    step = jnp.linalg.norm(horizontal[1:] - horizontal[:-1], axis=-1)
    height = jnp.maximum(h[1:], h[:-1])
    weight = jnp.where(height < height_threshold, 2.0 - jnp.exp2(jnp.clip(height, 0.0) / height_threshold), 0.0)
    return jnp.mean(step * weight)


# ----------------------------------------------------------------------- hand-object contact


def hand_object_contact_ratio(hand_vertices: Float[Array, "T H 3"], object_points: Float[Array, "T P 3"],
                              threshold: float = 0.05) -> Float[Array, ""]:
    """CHOIS's contact percentage: the share of frames in which some hand vertex is within
    `threshold` of the object."""
    d = jnp.min(jnp.linalg.norm(hand_vertices[:, :, None] - object_points[:, None], axis=-1), axis=(1, 2))
    return jnp.mean(d < threshold)


def object_penetration(object_sdf: SignedDistanceGrid, body_vertices: Float[Array, "T V 3"],
                       object_to_world: Float[Array, "T 4 4"], min_depth: float = 0.04) -> Float[Array, ""]:
    """CHOIS's object penetration (m), as its evaluation computes it: in each frame, the mean depth
    of the body vertices more than `min_depth` inside the object (its SDF given in its own frame);
    averaged over the frames where any vertex is, 0 when none is. CHOIS's threshold is 4 cm: a
    hand resting on a surface dips into it by less."""
    rot, trans = object_to_world[:, :3, :3], object_to_world[:, :3, 3]
    local = jnp.einsum("tji,tvj->tvi", rot, body_vertices - trans[:, None])
    depth = -object_sdf(local)
    deep = depth > min_depth
    count = jnp.sum(deep, axis=-1)
    per_frame = jnp.sum(jnp.where(deep, depth, 0.0), axis=-1) / jnp.maximum(count, 1)
    frames = jnp.sum(count > 0)
    return jnp.where(frames > 0, jnp.sum(per_frame) / jnp.maximum(frames, 1), 0.0)


# ---------------------------------------------------------------------------------- diversity


def diversity(joint_sequences: Float[Array, "S T J 3"]) -> Float[Array, ""]:
    """Mean per-joint distance (m) between every pair of the S sequences of one instance."""
    s = joint_sequences.shape[0]
    if s < 2:
        raise ValueError("diversity needs at least two sequences of the instance")
    d = jnp.linalg.norm(joint_sequences[:, None] - joint_sequences[None], axis=-1).mean(axis=(-1, -2))
    i, j = np.triu_indices(s, k=1)
    return jnp.mean(d[i, j])
