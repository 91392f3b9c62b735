"""A ground-truth interaction for the demo: a person in front of a table reaches for a box, picks
it up and lifts it towards the chest, filmed by a slowly moving camera.

Key poses come from a small inverse-kinematics fit of the right arm and spine on the body model
(so the hand really reaches the box on any body file); the sequence interpolates between them.
After the grasp the box moves rigidly with the right wrist.
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..reconstruct.state import HumanPose, ObjectPose
from ..splat import Camera

# Joint indices of the SMPL-X kinematic tree.
SPINE = (3, 6, 9)
RIGHT_ARM = (14, 17, 19, 21)  # collar, shoulder, elbow, wrist
LEFT_SHOULDER, RIGHT_SHOULDER = 16, 17
LEFT_ELBOW, RIGHT_ELBOW = 18, 19


def _set_joint(pose: np.ndarray, joint: int, axis_angle) -> np.ndarray:
    pose = pose.copy()
    pose[(joint - 1) * 3 : joint * 3] = axis_angle
    return pose


def standing_pose() -> np.ndarray:
    """Arms lowered from the T-pose, elbows slightly bent."""
    pose = np.zeros(63, np.float32)
    pose = _set_joint(pose, LEFT_SHOULDER, (0.0, 0.0, -1.2))
    pose = _set_joint(pose, RIGHT_SHOULDER, (0.0, 0.0, 1.2))
    pose = _set_joint(pose, LEFT_ELBOW, (0.0, -0.25, 0.0))
    pose = _set_joint(pose, RIGHT_ELBOW, (0.0, 0.25, 0.0))
    return pose


@dataclasses.dataclass(frozen=True)
class GroundTruth:
    human: HumanPose  # (T, ...)
    object_poses: ObjectPose  # (T, ...)
    viewmats: np.ndarray  # (T, 4, 4)
    grasp_frame: int
    betas: np.ndarray | None = None  # (num_betas,) the subject's shape; None: zeros


RIGHT_MIDDLE1 = 43  # base of the right middle finger: with the wrist, it brackets the palm


def shaped_rest_joints(body, betas=None):
    """The rest joints of the body with shape `betas` (None: the template's)."""
    from ..body import betas_for, lbs

    # Shape then expression coefficients: the expression stays neutral.
    coeffs = np.zeros(body.joint_shapedirs.shape[0], np.float32)
    coeffs[: body.num_betas] = betas_for(body, betas)
    return np.asarray(lbs.regress_joints(body.joint_template, body.joint_shapedirs, jnp.asarray(coeffs)))


def _palm_positions(body, betas=None):
    """Right-palm position of body poses (joints only: no skinning, cheap enough to vmap)."""
    from ..avatar.skinning import full_pose, joint_transforms

    joints_rest = jnp.asarray(shaped_rest_joints(body, betas))
    parents = tuple(int(p) for p in np.asarray(body.parents))

    def palm(body_pose, transl):
        joints, _ = joint_transforms(full_pose(body_pose), joints_rest, parents)
        return 0.5 * (joints[RIGHT_ARM[-1]] + joints[RIGHT_MIDDLE1]) + transl

    return palm


def reach_solver(body, iterations: int = 200, betas=None):
    """A jitted, vmappable IK: (start pose, root translation, palm target) -> pose whose right
    palm reaches the target by moving the spine and the right arm only (a body of shape `betas`)."""
    palm = _palm_positions(body, betas)
    movable = np.zeros(63, bool)
    for j in SPINE + RIGHT_ARM:
        movable[(j - 1) * 3 : j * 3] = True
    movable = jnp.asarray(movable)
    opt = optax.adam(0.03)

    def solve(start, transl, target):
        def loss(delta):
            pose = start + jnp.where(movable, delta, 0.0)
            return jnp.sum((palm(pose, transl) - target) ** 2) + 1e-3 * jnp.sum(delta**2)

        def step(carry, _):
            d, s = carry
            u, s = opt.update(jax.grad(loss)(d), s, d)
            return (optax.apply_updates(d, u), s), None

        delta0 = jnp.zeros(63, start.dtype)
        (delta, _), _ = jax.lax.scan(step, (delta0, opt.init(delta0)), None, length=iterations)
        return start + jnp.where(movable, delta, 0.0)

    return jax.jit(jax.vmap(solve))


@eqx.filter_jit
def _posed_body(body, kwargs: dict):
    """`body(**kwargs)` compiled: run eagerly, SMPL-X costs a compilation per operation."""
    return body(**kwargs)


def _smoothstep(x):
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def interaction_motion(body, num_frames: int, *, table_center, table_top: float, object_half_height: float,
                       camera_size: int, fov_y_deg: float = 55.0, variation: int | None = None,
                       dynamic: bool = True, betas=None) -> GroundTruth:
    """The demo's ground-truth motion, object poses and cameras. `variation` (a seed) moves the
    person's step and the lift target by a few centimetres: another video of the same initial
    state. `dynamic=False` reaches and touches the table beside the box, then straightens up: the
    box stays where it is. `betas`: the subject's shape (None: the template's)."""
    from ..body import betas_for

    shape = jnp.asarray(betas_for(body, betas))
    rest = np.asarray(_posed_body(body, {"betas": shape}).vertices)
    floor_offset = -float(rest[..., 1].min())  # translation that puts the feet on y = 0
    start_root = np.array([table_center[0] + 0.12, floor_offset, table_center[2] - 0.62], np.float32)
    end_root = start_root + np.array([0.0, 0.0, 0.08], np.float32)
    object_start = np.array([table_center[0] - 0.1, table_top + object_half_height, table_center[2] - 0.12],
                            np.float32)
    jitter = np.zeros(3, np.float32) if variation is None else np.random.default_rng(variation).uniform(
        -0.06, 0.06, 3).astype(np.float32)
    # Every video starts from the same state; they differ in where the person steps and how the
    # box is lifted (or, without lifting, where the table is touched).
    end_root = end_root + np.array([0.5 * jitter[0], 0.0, 0.5 * jitter[2]], np.float32)

    stand = standing_pose()
    solve = reach_solver(body, betas=betas)
    grasp_target = object_start + np.array([0.0, object_half_height + 0.03, 0.0], np.float32)
    if not dynamic:
        grasp_target = grasp_target + np.array([jitter[0], -2 * object_half_height, -0.1 + jitter[2]], np.float32)
    reach = np.asarray(solve(stand[None], end_root[None], grasp_target[None]))[0]
    if dynamic:
        lift_target = np.array([end_root[0] - 0.12, floor_offset + 0.05, end_root[2] + 0.32], np.float32) + jitter
        lift = np.asarray(solve(reach[None], end_root[None], lift_target[None]))[0]
    else:
        lift = stand

    u = np.linspace(0.0, 1.0, num_frames)
    grasp_frame = int(round(0.5 * (num_frames - 1)))
    a = _smoothstep(u / 0.45)[:, None]
    b = _smoothstep((u - 0.55) / 0.45)[:, None]
    body_pose = (1 - a) * stand + a * reach
    body_pose = (1 - b) * body_pose + b * lift
    transl = start_root + _smoothstep(u / 0.45)[:, None] * (end_root - start_root)
    yaw = 0.15 * np.sin(np.pi * u)  # a slight turn of the torso towards the box and back
    global_orient = np.stack([np.zeros_like(yaw), yaw, np.zeros_like(yaw)], -1).astype(np.float32)
    human = HumanPose(jnp.asarray(transl, jnp.float32), jnp.asarray(global_orient), jnp.asarray(body_pose,
                                                                                                  jnp.float32))

    out = _posed_body(body, {"betas": shape, "global_orient": human.global_orient, "body_pose": human.body_pose,
                             "transl": human.transl})
    wrist = np.asarray(out.joint_transforms[:, RIGHT_ARM[-1]])
    rot = np.tile(np.eye(3, dtype=np.float32), (num_frames, 1, 1))
    trans = np.tile(object_start, (num_frames, 1))
    grasp_obj = np.eye(4, dtype=np.float32)
    grasp_obj[:3, 3] = object_start
    relative = np.linalg.inv(wrist[grasp_frame]) @ grasp_obj
    for t in range(grasp_frame + 1, num_frames if dynamic else 0):
        m = wrist[t] @ relative
        rot[t], trans[t] = m[:3, :3], m[:3, 3]
    objects = ObjectPose(jnp.asarray(rot), jnp.asarray(trans))

    target = np.array([table_center[0], 0.85, table_center[2] - 0.45])
    viewmats = []
    for s in u:
        # A slow arc on the person's right side, where the reaching arm is in view and the table
        # stands beside the person rather than in front of the legs.
        angle = np.deg2rad(-97.0 + 10.0 * s)
        eye = target + np.array([1.9 * np.sin(angle), 0.45 + 0.1 * s, -1.9 * np.cos(angle)])
        viewmats.append(np.asarray(Camera.look_at(eye, target, width=camera_size, height=camera_size,
                                                  fov_y_deg=fov_y_deg).viewmat))
    return GroundTruth(human=human, object_poses=objects, viewmats=np.stack(viewmats), grasp_frame=grasp_frame,
                       betas=np.asarray(shape))


def reach_and_lift_poses(body, num_motions: int, frames_per_motion: int = 12, *, seed: int = 0,
                         jitter: float = 0.03) -> np.ndarray:
    """Body poses of `num_motions` random reach-and-lift motions (boxes at random places in
    front of and beside the person, lifted to random points near the chest), with a little
    per-joint jitter: a training set for a demo pose prior. (N, 63)."""
    rng = np.random.default_rng(seed)
    rest = np.asarray(body().vertices)
    root = np.array([0.0, -float(rest[..., 1].min()), 0.0], np.float32)
    roots = np.tile(root, (num_motions, 1))
    solve = reach_solver(body)
    stand = np.tile(standing_pose(), (num_motions, 1))
    grasp = root + np.stack([rng.uniform(-0.45, 0.15, num_motions), rng.uniform(-0.45, -0.05, num_motions),
                             rng.uniform(0.25, 0.6, num_motions)], -1)
    reach = np.asarray(solve(stand, roots, grasp.astype(np.float32)))
    lift = root + np.stack([rng.uniform(-0.3, 0.05, num_motions), rng.uniform(-0.15, 0.3, num_motions),
                            rng.uniform(0.2, 0.45, num_motions)], -1)
    lifted = np.asarray(solve(reach, roots, lift.astype(np.float32)))
    u = np.linspace(0.0, 1.0, frames_per_motion)[None, :, None]
    a = _smoothstep(u / 0.45)
    b = _smoothstep((u - 0.55) / 0.45)
    poses = (1 - a) * stand[:, None] + a * reach[:, None]
    poses = (1 - b) * poses + b * lifted[:, None]
    poses = poses.reshape(-1, 63)
    return (poses + rng.normal(scale=jitter, size=poses.shape)).astype(np.float32)
