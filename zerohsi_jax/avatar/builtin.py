"""The built-in avatar: Gaussians on an SMPL-X body (by default the synthetic one), with the
official avatar's interfaces at a small size, so that the demo and the tests need no download.

Construction mirrors the official preprocessing (`gen_data/gen_pos_maps.py`) at low
resolution: the body in the canonical pose is rendered orthographically from the front and
the back into an S x 2S position / normal map (2 m across), whose pixels carry skinning weights
interpolated barycentrically from the mesh. Unlike the official avatar, whose Gaussians are
those pixels, the built-in Gaussians are spread evenly over the mesh surface (front/back maps
see the sides of the body only obliquely) and each reads the network maps at the pixel it
projects to on its own side. They are flat discs (kNN-sized, thin along the normal), opaque,
and coloured by body part (skin, hair, striped shirt with a chest patch, trousers, shoes).

The three StyleUNets and the view-direction net have the official structure at a small width
and start with zeroed output layers, so at initialisation the avatar reproduces its template
(shape and colours) exactly, and fine-tuning starts from there.
"""

from __future__ import annotations

import math
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..geometry import axis_angle_to_matrix, matrix_to_quaternion
from .layers import ViewDirNet
from .model import POSITION_SCALE, AnimatableAvatar, make_template
from .skinning import CANONICAL_BODY_POSE, full_pose, joint_transforms
from .styleunet import DualStyleUNet, StyleUNetConfig

SIZES = {
    # map_size S: maps are S x 2S (front | back); nets map S/2 -> S.
    "tiny": dict(map_size=64, style_dim=32, channel_max=16, viewdir_hidden=8, num_gaussians=4000),  # tests
    "small": dict(map_size=128, style_dim=64, channel_max=32, viewdir_hidden=16, num_gaussians=12000),
    "medium": dict(map_size=256, style_dim=128, channel_max=64, viewdir_hidden=32, num_gaussians=30000),
}
MAP_EXTENT_M = 2.0  # the official maps are 1024 px at 512 px/m

# SMPL-X joints -> garment of the built-in avatar.
SKIN, HAIR, SHIRT, TROUSERS, SHOES = range(5)
PART_OF_JOINT = np.full(55, SKIN)
PART_OF_JOINT[[3, 6, 9, 13, 14, 16, 17]] = SHIRT  # spine, collars, upper arms
PART_OF_JOINT[[0, 1, 2, 4, 5]] = TROUSERS  # pelvis, thighs, shins
PART_OF_JOINT[[7, 8, 10, 11]] = SHOES
PART_COLORS = np.array(
    [
        [0.87, 0.68, 0.56],  # skin
        [0.20, 0.13, 0.08],  # hair
        [0.18, 0.42, 0.72],  # shirt
        [0.24, 0.24, 0.30],  # trousers
        [0.55, 0.15, 0.12],  # shoes
    ],
    np.float32,
)


# ----------------------------------------------------------------------------- the body
def load_model_arrays(path) -> dict[str, np.ndarray]:
    """The arrays of an SMPL-X `.npz` model file (the official layout)."""
    with np.load(Path(path), allow_pickle=False) as data:
        return {
            k: data[k]
            for k in ("v_template", "f", "weights", "J_regressor", "kintree_table", "shapedirs", "posedirs")
        }


def canonical_body(model: dict[str, np.ndarray], betas: np.ndarray | None = None):
    """(canonical-pose vertices, faces, vertex skinning weights, rest joints, parents) of an
    SMPL-X model: shape blend shapes of `betas`, rest joints from the regressor, then linear
    blend skinning to the canonical pose with its pose correctives."""
    parents = tuple(int(p) for p in np.asarray(model["kintree_table"][0]).astype(np.int64))
    parents = (-1,) + parents[1:]
    v = np.asarray(model["v_template"], np.float64)
    if betas is not None and len(betas):
        dirs = np.asarray(model["shapedirs"], np.float64)[:, :, : len(betas)]
        v = v + dirs @ np.asarray(betas, np.float64)
    joints = np.asarray(model["J_regressor"], np.float64) @ v
    pose = full_pose(jnp.asarray(CANONICAL_BODY_POSE.reshape(-1)))
    rot = np.asarray(jax.jit(axis_angle_to_matrix)(pose), np.float64)
    _, a = jax.jit(joint_transforms, static_argnums=2)(pose, jnp.asarray(joints, jnp.float32), parents)
    a = np.asarray(a, np.float64)
    feature = (rot[1:] - np.eye(3)).reshape(-1)
    posedirs = np.asarray(model["posedirs"], np.float64)
    v_posed = v + (posedirs.reshape(-1, posedirs.shape[-1]) @ feature).reshape(-1, 3)
    weights = np.asarray(model["weights"], np.float64)
    blended = np.einsum("vj,jab->vab", weights, a)
    cano = np.einsum("vab,vb->va", blended[:, :3, :3], v_posed) + blended[:, :3, 3]
    faces = np.asarray(model["f"], np.int64)
    return cano, faces, weights, joints, parents


def canonical_body_from_model(model, betas: np.ndarray):
    """`canonical_body` through a `zerohsi_jax.body.SMPLX` instance (its forward pass)."""
    nb = int(model.num_betas)
    b = np.zeros((1, nb), np.float32)
    b[0, : min(nb, len(betas))] = betas[:nb]
    out = model(
        betas=jnp.asarray(b), global_orient=jnp.zeros((1, 3)), transl=jnp.zeros((1, 3)),
        body_pose=jnp.asarray(CANONICAL_BODY_POSE.reshape(1, -1)),
    )  # fmt: skip
    return (
        np.asarray(out.vertices[0], np.float64),
        np.asarray(model.faces, np.int64),
        np.asarray(model.lbs_weights, np.float64),
        np.asarray(out.rest_joints[0], np.float64),
        tuple(int(p) for p in model.parent_tuple),
    )


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    tri = vertices[faces]
    face_n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])  # area-weighted
    n = np.zeros_like(vertices)
    for k in range(3):
        np.add.at(n, faces[:, k], face_n)
    return n / np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-12)


# ----------------------------------------------------------------------------- position maps
def rasterize_orthographic(vertices, faces, size: int, center, pixels_per_meter: float, nearest: str):
    """Per pixel of an orthographic view along z: the visible face and its barycentric
    coordinates. Pixel (r, c) looks at x = cx + (c + 0.5 - S/2) / ppm, y = cy - (r + 0.5 - S/2) / ppm;
    `nearest='max_z'` keeps the front-most surface, 'min_z' the back-most (the official back
    map is rendered from behind and flipped, so its columns align with the front's).
    Returns face ids (S, S) with -1 where empty, and barycentrics (S, S, 3)."""
    u = (vertices[:, 0] - center[0]) * pixels_per_meter + size / 2 - 0.5
    v = (center[1] - vertices[:, 1]) * pixels_per_meter + size / 2 - 0.5
    z = vertices[:, 2]
    fu, fv, fz = u[faces], v[faces], z[faces]
    c0 = np.ceil(fu.min(1)).astype(int)
    r0 = np.ceil(fv.min(1)).astype(int)
    span = int(max((np.floor(fu.max(1)) - c0).max(), (np.floor(fv.max(1)) - r0).max(), 0)) + 1
    det = (fv[:, 1] - fv[:, 2]) * (fu[:, 0] - fu[:, 2]) + (fu[:, 2] - fu[:, 1]) * (fv[:, 0] - fv[:, 2])
    ok = np.abs(det) > 1e-12
    det = np.where(ok, det, 1.0)
    pix, depth, fid, bary = [], [], [], []
    for dr in range(span):
        for dc in range(span):
            pc, pr = c0 + dc, r0 + dr
            l0 = ((fv[:, 1] - fv[:, 2]) * (pc - fu[:, 2]) + (fu[:, 2] - fu[:, 1]) * (pr - fv[:, 2])) / det
            l1 = ((fv[:, 2] - fv[:, 0]) * (pc - fu[:, 2]) + (fu[:, 0] - fu[:, 2]) * (pr - fv[:, 2])) / det
            l2 = 1.0 - l0 - l1
            inside = ok & (l0 >= -1e-9) & (l1 >= -1e-9) & (l2 >= -1e-9)
            inside &= (pc >= 0) & (pc < size) & (pr >= 0) & (pr < size)
            idx = np.nonzero(inside)[0]
            lam = np.stack([l0[idx], l1[idx], l2[idx]], -1)
            pix.append(pr[idx] * size + pc[idx])
            depth.append(np.sum(lam * fz[idx], -1))
            fid.append(idx)
            bary.append(lam)
    pix, depth, fid, bary = (np.concatenate(x) for x in (pix, depth, fid, bary))
    key = -depth if nearest == "max_z" else depth
    order = np.lexsort((key, pix))
    first = np.ones(len(order), bool)
    first[1:] = pix[order][1:] != pix[order][:-1]
    keep = order[first]
    face_map = np.full(size * size, -1, np.int64)
    bary_map = np.zeros((size * size, 3))
    face_map[pix[keep]] = fid[keep]
    bary_map[pix[keep]] = bary[keep]
    return face_map.reshape(size, size), bary_map.reshape(size, size, 3)


def canonical_maps(vertices, faces, weights, size: int):
    """Front|back canonical position map points: (points, normals, weights, rows, cols)."""
    center = 0.5 * (vertices.min(0) + vertices.max(0))
    ppm = size / MAP_EXTENT_M
    normals = vertex_normals(vertices, faces)
    pts, nmls, ws, rows, cols = [], [], [], [], []
    for side, nearest in ((0, "max_z"), (1, "min_z")):
        face_map, bary_map = rasterize_orthographic(vertices, faces, size, center, ppm, nearest)
        r, c = np.nonzero(face_map >= 0)
        f = faces[face_map[r, c]]
        lam = bary_map[r, c]
        pts.append(np.einsum("nk,nkd->nd", lam, vertices[f]))
        n = np.einsum("nk,nkd->nd", lam, normals[f])
        nmls.append(n / np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-12))
        ws.append(np.einsum("nk,nkj->nj", lam, weights[f]))
        rows.append(r)
        cols.append(c + side * size)
    return tuple(np.concatenate(x) for x in (pts, nmls, ws, rows, cols)) + (center, ppm)


# ----------------------------------------------------------------------------- Gaussians
def sample_surface(vertices, faces, num: int, rng: np.random.Generator):
    """About `num` points spread evenly over the surface: area-weighted random samples, thinned
    to one per cell of a grid whose cell size is searched to give `num` cells.
    Returns (face ids, barycentrics)."""
    tri = vertices[faces]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=-1)
    m = 10 * num
    fid = rng.choice(len(faces), size=m, p=area / area.sum())
    r1, r2 = rng.random(m), rng.random(m)
    s = np.sqrt(r1)
    lam = np.stack([1 - s, s * (1 - r2), s * r2], -1)
    pts = np.einsum("nk,nkd->nd", lam, tri[fid])

    def first_per_cell(cell):
        ijk = np.floor((pts - pts.min(0)) / cell).astype(np.int64)
        packed = (ijk[:, 0] << 42) | (ijk[:, 1] << 21) | ijk[:, 2]
        return np.unique(packed, return_index=True)[1]

    lo, hi = 1e-3, 0.2
    for _ in range(24):
        cell = math.sqrt(lo * hi)
        if len(first_per_cell(cell)) > num:
            lo = cell
        else:
            hi = cell
    first = np.sort(first_per_cell(hi))
    return fid[first], lam[first]


def knn_mean_sq_dist(points: np.ndarray, k: int = 3) -> np.ndarray:
    """Mean squared distance to the k nearest other points (the official scale init, which
    uses pytorch3d's knn_points with K = k + 1 and drops the point itself). Brute force in
    blocks of rows (about 128 MB of distances per block)."""
    pts = jnp.asarray(points, jnp.float32)
    n = len(points)
    chunk = min(n, int(max(64, min(1024, 2**25 // max(n, 1)))))

    @jax.jit
    def block(start):
        p = jax.lax.dynamic_slice_in_dim(pts, start, chunk)
        d2 = jnp.sum(p**2, -1)[:, None] + jnp.sum(pts**2, -1)[None] - 2.0 * p @ pts.T
        nearest = -jax.lax.top_k(-d2, k + 1)[0]
        return jnp.mean(jnp.maximum(nearest[:, 1:], 0.0), axis=-1)

    starts = [min(i, n - chunk) for i in range(0, n, chunk)]
    out = np.empty(n)
    for s in starts:
        out[s : s + chunk] = np.asarray(block(s))
    return np.maximum(out, 1e-14)


def frames_to_quats(normals: np.ndarray) -> np.ndarray:
    """Quaternions (w, x, y, z) of frames whose third axis is the normal."""
    helper = np.where(np.abs(normals[:, 1:2]) < 0.9, [[0.0, 1.0, 0.0]], [[1.0, 0.0, 0.0]])
    t1 = np.cross(helper, normals)
    t1 /= np.linalg.norm(t1, axis=-1, keepdims=True)
    t2 = np.cross(normals, t1)
    return np.asarray(jax.jit(matrix_to_quaternion)(jnp.asarray(np.stack([t1, t2, normals], -1), jnp.float32)))


def garment_colors(points, weights, normals, joints, rng) -> np.ndarray:
    """Plausible clothing colours from the dominant joint, with hair on the top and back of the
    head, shirt stripes, a patch on the left chest (so front and back, left and right differ)
    and a little per-Gaussian variation."""
    part = PART_OF_JOINT[np.argmax(weights, -1)]
    head = joints[15]
    is_head = np.argmax(weights, -1) == 15
    hair = is_head & (
        (points[:, 1] > head[1] + 0.055) | ((points[:, 2] < head[2] - 0.01) & (points[:, 1] > head[1] - 0.05))
    )
    part = np.where(hair, HAIR, part)
    col = PART_COLORS[part].copy()
    shirt = part == SHIRT
    stripes = np.sin(points[:, 1] * 2 * np.pi / 0.06) > 0.4
    col[shirt & stripes] *= 0.72
    chest = (
        shirt
        & (points[:, 0] > 0.03)
        & (points[:, 0] < 0.13)
        & (np.abs(points[:, 1] - joints[9, 1] - 0.02) < 0.05)
    )
    col[chest & (normals[:, 2] > 0.3)] = [0.95, 0.85, 0.2]
    back = shirt & (normals[:, 2] < -0.3)
    col[back & ~stripes] = [0.14, 0.34, 0.60]
    trousers = part == TROUSERS
    col[trousers & (points[:, 0] < 0)] *= 0.85  # the right leg a shade darker
    col *= 1.0 + 0.04 * rng.standard_normal((len(col), 1))
    return np.clip(col, 0.0, 1.0).astype(np.float32)


# ----------------------------------------------------------------------------- the avatar
def small_networks(map_size: int, style_dim: int, channel_max: int, viewdir_hidden: int, seed: int):
    """The three StyleUNets (zeroed outputs) and the view-direction net of a built-in avatar."""
    rng = np.random.default_rng(seed)
    base = dict(inp_size=map_size // 2, out_size=map_size, style_dim=style_dim, channel_max=channel_max)
    nets = {
        name: DualStyleUNet.random(StyleUNetConfig(out_ch=ch, **base), rng).zero_output()
        for name, ch in (("position_net", 3), ("other_net", 8), ("color_net", 3))
    }
    viewdir = ViewDirNet.random(nets["color_net"].config.view_feature_channels, viewdir_hidden, rng)
    return nets, viewdir


def with_pose_dependence(avatar: AnimatableAvatar, strength: float, seed: int = 0) -> AnimatableAvatar:
    """`avatar` with random pose-dependent network outputs of standard deviation `strength` (over
    the Gaussians, at the rest pose), in place of the built-in avatar's zero outputs: a stand-in for
    a trained avatar's pose-dependent wrinkles and shading, whose outputs change with the pose.
    Position offsets are 0.05 x the position net's output, so `strength` 0.2 moves Gaussians ~1 cm."""
    rng = np.random.default_rng(seed)
    zeros = (jnp.zeros(3), jnp.zeros(63), jnp.zeros(3), jnp.asarray([0.0, 0.0, 3.0]))
    for name in ("position_net", "other_net", "color_net"):
        net = getattr(avatar, name)
        live = DualStyleUNet.random(net.config, rng)
        avatar = eqx.tree_at(lambda a, name=name: getattr(a, name), avatar, live.scaled_output(1.0))
        maps = avatar.network_maps(*zeros)
        raw = {"position_net": maps.offsets / POSITION_SCALE, "other_net": maps.others,
               "color_net": maps.colors - avatar.template.base_colors}[name]
        spread = float(jnp.std(raw))
        avatar = eqx.tree_at(lambda a, name=name: getattr(a, name), avatar,
                             live.scaled_output(strength / max(spread, 1e-12)))
    return avatar


def builtin_avatar(
    key_or_seed=0,
    smplx_model=None,
    *,
    size: str = "small",
    betas=None,
    num_gaussians: int | None = None,
    opacity: float = 0.98,
    tangent_scale: float = 0.75,
    normal_scale: float = 0.25,
) -> AnimatableAvatar:
    """The built-in avatar on an SMPL-X body.

    `smplx_model`: a `zerohsi_jax.body.SMPLX`, or the path of an SMPL-X `.npz` (official
    layout); None uses the synthetic body (`zerohsi_jax.synthetic.synthetic_smplx_path`).
    `size`: 'small' (map 128, ~12k Gaussians, the demo's), 'medium' (map 256, ~30k) or 'tiny'
    (map 64, ~4k, for quick tests). `key_or_seed` seeds the networks' weights and the surface sampling."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    spec = dict(SIZES[size])
    if num_gaussians is not None:
        spec["num_gaussians"] = int(num_gaussians)
    key = jax.random.key(key_or_seed) if isinstance(key_or_seed, int) else key_or_seed
    seed = int(jax.random.randint(key, (), 0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    if smplx_model is None:
        from zerohsi_jax.synthetic.body_model_file import synthetic_smplx_path

        smplx_model = synthetic_smplx_path()
    betas = np.zeros(10, np.float32) if betas is None else np.asarray(betas, np.float32)
    if isinstance(smplx_model, (str, Path)):
        verts, faces, vweights, joints, parents = canonical_body(load_model_arrays(smplx_model), betas)
    elif isinstance(smplx_model, dict):
        verts, faces, vweights, joints, parents = canonical_body(smplx_model, betas)
    else:
        verts, faces, vweights, joints, parents = canonical_body_from_model(smplx_model, betas)
    s = spec["map_size"]

    m_pts, m_nml, m_w, m_rows, m_cols, center, ppm = canonical_maps(verts, faces, vweights, s)

    fid, lam = sample_surface(verts, faces, spec["num_gaussians"], rng)
    tri = verts[faces[fid]]
    g_pts = np.einsum("nk,nkd->nd", lam, tri)
    g_w = np.einsum("nk,nkj->nj", lam, vweights[faces[fid]])
    face_n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    g_nml = face_n / np.maximum(np.linalg.norm(face_n, axis=-1, keepdims=True), 1e-12)
    g_cols = np.clip(np.round((g_pts[:, 0] - center[0]) * ppm + s / 2 - 0.5), 0, s - 1).astype(np.int64)
    g_rows = np.clip(np.round((center[1] - g_pts[:, 1]) * ppm + s / 2 - 0.5), 0, s - 1).astype(np.int64)
    g_cols = g_cols + np.where(g_nml[:, 2] < 0, s, 0)
    spacing = np.sqrt(knn_mean_sq_dist(g_pts))
    # Discs in the surface: sigma = 0.75 x the kNN spacing covers the surface without holes
    # (two neighbours' alphas overlap to ~0.95 half-way) and dilates the silhouette little.
    log_scales = np.log(spacing)[:, None] + np.log([tangent_scale, tangent_scale, normal_scale])[None]

    template = make_template(
        map_size=s,
        map_points=m_pts, map_normals=m_nml, map_weights=m_w, map_rows=m_rows, map_cols=m_cols,
        gaussian_means=g_pts, gaussian_weights=g_w, gaussian_rows=g_rows, gaussian_cols=g_cols,
        base_log_scales=log_scales,
        base_opacity_logits=np.full(len(g_pts), math.log(opacity / (1 - opacity))),
        base_quats=frames_to_quats(g_nml),
        base_colors=garment_colors(g_pts, g_w, g_nml, joints, rng),
        joints_rest=joints, parents=parents, betas=betas,
    )  # fmt: skip
    nets, viewdir = small_networks(s, spec["style_dim"], spec["channel_max"], spec["viewdir_hidden"], seed)
    return AnimatableAvatar(**nets, viewdir_net=viewdir, template=template, color_order="rgb")
