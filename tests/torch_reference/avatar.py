"""The Gaussian part of the official AvatarNet.render, step by step in PyTorch, for the tests.

Follows the official order of operations (full-resolution live position map, nearest 0.5
downsampling, the front half as the input, the view-direction map, the three networks, the
activations, `transform_cano2live`), given the canonical maps, the points' skinning weights,
the canonical-to-live joint transforms (without and with the root) and the camera position.
Written for the tests; not the official code.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def quaternion_to_matrix(q):
    q = F.normalize(q, dim=-1)
    w, x, y, z = q.unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        -1,
    ).reshape(q.shape[:-1] + (3, 3))  # fmt: skip


def matrix_to_quaternion(m):
    """Largest-pivot candidate (pytorch3d's choice), not normalised."""
    m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    pivots = [1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22]
    q_abs = torch.sqrt(torch.clamp(torch.stack(pivots, -1), min=0))
    cands = torch.stack([
        torch.stack([q_abs[..., 0] ** 2, m21 - m12, m02 - m20, m10 - m01], -1),
        torch.stack([m21 - m12, q_abs[..., 1] ** 2, m10 + m01, m02 + m20], -1),
        torch.stack([m02 - m20, m10 + m01, q_abs[..., 2] ** 2, m12 + m21], -1),
        torch.stack([m10 - m01, m20 + m02, m21 + m12, q_abs[..., 3] ** 2], -1),
    ], -2) / (2.0 * torch.clamp(q_abs[..., None], min=0.1))  # fmt: skip
    best = q_abs.argmax(-1)
    return torch.gather(cands, -2, best[..., None, None].expand(*best.shape, 1, 4))[..., 0, :]


def knn_log_scale(points, k=3):
    d2 = torch.cdist(points, points) ** 2
    nearest = torch.topk(d2, k + 1, largest=False).values[:, 1:]
    return torch.log(torch.sqrt(torch.clamp_min(nearest.mean(-1), 1e-7)))


@torch.no_grad()
def official_gaussians(nets, cano_map, nml_map, lbs, cano2live_wo, cano2live, cam_pos):
    """dict of positions, opacity, scales, rotations (wxyz), colors (as the network outputs
    them, BGR for an official avatar) of the posed avatar."""
    size = cano_map.shape[0]
    half = size // 2
    mask = torch.linalg.norm(cano_map, dim=-1) > 0.0
    init_points = cano_map[mask]
    cano_nmls = nml_map[mask]
    n = init_points.shape[0]
    raw_scale = knn_log_scale(init_points)[:, None].repeat(1, 3)
    raw_opacity = torch.full((n, 1), math.log(0.1 / 0.9))
    raw_rot = torch.zeros(n, 4)
    raw_rot[:, 0] = 1

    # get_pose_map
    mats = torch.einsum("nj,jxy->nxy", lbs, cano2live_wo)
    live = torch.einsum("nxy,ny->nx", mats[:, :3, :3], init_points) + mats[:, :3, 3]
    live_map = torch.zeros_like(cano_map)
    live_map[mask] = live
    live_map = F.interpolate(live_map.permute(2, 0, 1)[None], None, [0.5, 0.5], mode="nearest")[0]
    pose_map = torch.cat(torch.split(live_map, [half, half], 2), 0)[:3]

    # get_viewdir_feat
    mats_r = torch.einsum("nj,jxy->nxy", lbs, cano2live)
    live_pts = torch.einsum("nxy,ny->nx", mats_r[:, :3, :3], init_points) + mats_r[:, :3, 3]
    live_nmls = torch.einsum("nxy,ny->nx", mats_r[:, :3, :3], cano_nmls)
    viewdirs = F.normalize(cam_pos[None] - live_pts, dim=-1, eps=1e-3)
    viewdirs = (live_nmls * viewdirs).sum(-1)
    vmap = torch.zeros(cano_map.shape[:2])
    vmap[mask] = viewdirs
    vmap = F.interpolate(vmap[None, None], None, 0.5, "nearest")
    front_v, back_v = torch.split(vmap, [half, half], -1)

    pos_map, other_map, color_map = nets.maps(pose_map, front_v, back_v)
    positions = 0.05 * pos_map.permute(1, 2, 0)[mask] + init_points
    others = other_map.permute(1, 2, 0)[mask]
    opacity, scales, rotations = torch.split(others, [1, 3, 4], 1)
    opacity = torch.sigmoid(opacity + raw_opacity)
    scales = torch.exp(scales + raw_scale)
    rotations = F.normalize(rotations + raw_rot, dim=-1)
    colors = color_map.permute(1, 2, 0)[mask]

    # transform_cano2live
    positions = torch.einsum("nxy,ny->nx", mats_r[:, :3, :3], positions) + mats_r[:, :3, 3]
    rot = torch.einsum("nxy,nyz->nxz", mats_r[:, :3, :3], quaternion_to_matrix(rotations))
    return {
        "positions": positions,
        "opacity": opacity[:, 0],
        "scales": scales,
        "rotations": matrix_to_quaternion(rot),
        "colors": colors,
        "pose_map": pose_map,
    }
