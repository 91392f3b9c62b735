"""A textured Gaussian room (floor, walls, furniture) and a movable object, built from boxes.

World axes follow SMPL-X: y up, the floor at y = 0. Every surface is covered by flat Gaussians
(thin along the surface normal) whose colours carry a texture, so that photometric camera
tracking has something to lock onto.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
from jaxtyping import Int

from ..geometry import matrix_to_quaternion_np
from ..splat.gaussians import Gaussians, rgb_to_sh0

_FACES = (  # (normal axis, sign): the six faces of a box
    (0, 1), (0, -1), (1, 1), (1, -1), (2, 1), (2, -1),
)  # fmt: skip


def box_mesh(center, size) -> tuple[np.ndarray, Int[np.ndarray, "12 3"]]:
    """A closed, outward-oriented axis-aligned box mesh (vertices, faces): the watertight solids of
    generated scenes and objects (penetration metrics, tests)."""
    c, h = np.asarray(center, float), np.asarray(size, float) / 2
    corners = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], float) * h + c
    faces = np.array([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
                      [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]])
    return corners, faces


def _texture(points: np.ndarray, base: np.ndarray, rng: np.random.Generator, cell: float, contrast: float):
    """Checker of `cell`-sized squares plus smooth random blotches, multiplied onto `base`."""
    checker = (np.floor(points / cell).astype(int).sum(-1) % 2) * 2 - 1
    freqs = rng.normal(scale=2.0, size=(4, 3))
    phases = rng.uniform(0, 2 * np.pi, 4)
    blotch = np.sin(points @ freqs.T + phases).mean(-1)
    shade = 1.0 + contrast * (0.6 * checker + 0.4 * blotch)
    return np.clip(base[None] * shade[:, None], 0.02, 0.98)


def box_gaussians(center, size, color, *, spacing: float, rng: np.random.Generator, faces=_FACES,
                  cell: float = 0.25, contrast: float = 0.25, opacity: float = 0.97) -> dict[str, np.ndarray]:
    """Flat Gaussians covering the given faces of an axis-aligned box (numpy arrays)."""
    center, size, color = (np.asarray(v, float) for v in (center, size, color))
    means, quats, scales = [], [], []
    for axis, sign in faces:
        u_axis, v_axis = [a for a in range(3) if a != axis]
        nu = max(1, int(round(size[u_axis] / spacing)))
        nv = max(1, int(round(size[v_axis] / spacing)))
        us = (np.arange(nu) + 0.5) / nu - 0.5
        vs = (np.arange(nv) + 0.5) / nv - 0.5
        uu, vv = np.meshgrid(us, vs, indexing="ij")
        p = np.zeros((uu.size, 3))
        p[:, u_axis] = uu.ravel() * size[u_axis]
        p[:, v_axis] = vv.ravel() * size[v_axis]
        p[:, axis] = sign * size[axis] / 2
        # Jitter inside each cell breaks the grid's regularity, which would alias in renders.
        p[:, u_axis] += rng.uniform(-0.2, 0.2, len(p)) * size[u_axis] / nu
        p[:, v_axis] += rng.uniform(-0.2, 0.2, len(p)) * size[v_axis] / nv
        means.append(p + center)
        rot = np.zeros((3, 3))
        rot[u_axis, 0] = 1.0
        rot[v_axis, 1] = 1.0
        rot[:, 2] = np.cross(rot[:, 0], rot[:, 1])
        quats.append(np.tile(matrix_to_quaternion_np(rot), (len(p), 1)))
        su, sv = 0.7 * size[u_axis] / nu, 0.7 * size[v_axis] / nv
        scales.append(np.tile([su, sv, 0.15 * min(su, sv)], (len(p), 1)))
    means = np.concatenate(means)
    return {
        "means": means,
        "quats": np.concatenate(quats),
        "scales": np.concatenate(scales),
        "colors": _texture(means, color, rng, cell, contrast),
        "opacity": np.full(len(means), opacity),
    }


def _to_gaussians(parts: list[dict[str, np.ndarray]], group: int) -> Gaussians:
    cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    n = len(cat["means"])
    return Gaussians(
        means=jnp.asarray(cat["means"], jnp.float32),
        quats=jnp.asarray(cat["quats"], jnp.float32),
        log_scales=jnp.asarray(np.log(cat["scales"]), jnp.float32),
        opacity_logits=jnp.asarray(np.log(cat["opacity"] / (1 - cat["opacity"])), jnp.float32),
        sh=rgb_to_sh0(jnp.asarray(cat["colors"], jnp.float32))[:, None, :],
        groups=jnp.full((n,), group, jnp.int32),
    )


@dataclasses.dataclass(frozen=True)
class SceneAssets:
    scene: Gaussians
    """The static room and furniture (group `scene_group`)."""
    table_top_height: float
    """Height of the table top, where the object rests."""
    table_center: tuple[float, float, float]
    solids: tuple = ()
    """(centre, size) of every solid box the Gaussians cover (walls and floor as thick slabs):
    the watertight geometry of the penetration metric."""

    def mesh(self) -> tuple[np.ndarray, np.ndarray]:
        """(vertices, faces) of the room's solids: closed boxes, one after the other."""
        verts, faces = [], []
        for center, size in self.solids:
            v, f = box_mesh(center, size)
            faces.append(f + sum(len(x) for x in verts))
            verts.append(v)
        return np.concatenate(verts), np.concatenate(faces)


def make_room(*, seed: int = 0, spacing: float = 0.12, size=(5.0, 2.6, 5.0), scene_group: int = 2) -> SceneAssets:
    """A room with a floor, three walls, a table, a sofa and a shelf; floor at y = 0, the open
    side towards -z where the camera stands."""
    rng = np.random.default_rng(seed)
    wx, wy, wz = size
    thin = 0.02
    parts = [
        # floor (wood-like), back wall, side walls
        box_gaussians((0, -thin / 2, 0), (wx, thin, wz), (0.55, 0.40, 0.28), spacing=spacing, rng=rng,
                      faces=((1, 1),), cell=0.4, contrast=0.3),
        box_gaussians((0, wy / 2, wz / 2), (wx, wy, thin), (0.80, 0.78, 0.70), spacing=spacing, rng=rng,
                      faces=((2, -1),), cell=0.6, contrast=0.2),
        box_gaussians((-wx / 2, wy / 2, 0), (thin, wy, wz), (0.62, 0.72, 0.80), spacing=spacing, rng=rng,
                      faces=((0, 1),), cell=0.6, contrast=0.2),
        box_gaussians((wx / 2, wy / 2, 0), (thin, wy, wz), (0.78, 0.68, 0.60), spacing=spacing, rng=rng,
                      faces=((0, -1),), cell=0.6, contrast=0.2),
    ]
    fine = spacing * 0.6
    table_c, table_h = (0.9, 0.0, 0.9), 0.72
    parts.append(box_gaussians((table_c[0], table_h - 0.03, table_c[2]), (1.0, 0.06, 0.7), (0.45, 0.28, 0.16),
                               spacing=fine, rng=rng, cell=0.15))
    for dx in (-0.45, 0.45):
        for dz in (-0.3, 0.3):
            parts.append(box_gaussians((table_c[0] + dx, (table_h - 0.06) / 2, table_c[2] + dz),
                                       (0.05, table_h - 0.06, 0.05), (0.35, 0.22, 0.12), spacing=fine, rng=rng,
                                       faces=_FACES[:2] + _FACES[4:]))
    sofa_c = (-1.3, 0.0, 1.6)
    parts.append(box_gaussians((sofa_c[0], 0.22, sofa_c[2]), (1.6, 0.44, 0.8), (0.25, 0.35, 0.55), spacing=fine,
                               rng=rng, cell=0.2))
    parts.append(box_gaussians((sofa_c[0], 0.6, sofa_c[2] + 0.32), (1.6, 0.5, 0.16), (0.22, 0.32, 0.5),
                               spacing=fine, rng=rng, cell=0.2))
    parts.append(box_gaussians((1.9, 0.9, 2.2), (0.8, 1.8, 0.4), (0.85, 0.85, 0.82), spacing=fine, rng=rng,
                               cell=0.3, contrast=0.35))
    slab = 0.3  # the solids behind the thin visible surfaces
    solids = [
        ((0, -slab / 2, 0), (wx, slab, wz)),
        ((0, wy / 2, wz / 2 + slab / 2), (wx, wy, slab)),
        ((-wx / 2 - slab / 2, wy / 2, 0), (slab, wy, wz)),
        ((wx / 2 + slab / 2, wy / 2, 0), (slab, wy, wz)),
        ((table_c[0], table_h - 0.03, table_c[2]), (1.0, 0.06, 0.7)),
        ((sofa_c[0], 0.22, sofa_c[2]), (1.6, 0.44, 0.8)),
        ((sofa_c[0], 0.6, sofa_c[2] + 0.32), (1.6, 0.5, 0.16)),
        ((1.9, 0.9, 2.2), (0.8, 1.8, 0.4)),
    ] + [((table_c[0] + dx, (table_h - 0.06) / 2, table_c[2] + dz), (0.05, table_h - 0.06, 0.05))
         for dx in (-0.45, 0.45) for dz in (-0.3, 0.3)]
    return SceneAssets(scene=_to_gaussians(parts, scene_group), table_top_height=table_h, table_center=table_c,
                       solids=tuple(solids))


def make_object(*, seed: int = 1, size=(0.28, 0.2, 0.2), color=(0.85, 0.2, 0.15), spacing: float = 0.035,
                object_group: int = 1) -> Gaussians:
    """A small textured box centred at the origin (place it with `Gaussians.transform`)."""
    rng = np.random.default_rng(seed)
    return _to_gaussians([box_gaussians((0, 0, 0), size, color, spacing=spacing, rng=rng, cell=0.07,
                                        contrast=0.35, opacity=0.99)], object_group)
