"""Generated instances with a known ground truth: a Gaussian room with a table, a box on it, the
synthetic SMPL-X body wearing the built-in avatar, ground-truth motions (reach, grasp, lift) filmed
by a slowly moving camera, the reference videos rendered from them with the masks a segmenter would
give, and noisy pose estimates. The demo (`zerohsi_jax.demo`) and the bench suite
(`zerohsi_jax.benchsuite`) run on them; so do experiments and tests."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Instance:
    """`build_instance`'s result: one scene and initial state, and one ground truth per variation."""

    inputs: object  # SceneInputs
    initial: object  # InitialState
    truths: tuple  # GroundTruth per variation (videos of the same initial state)
    raster: object  # RasterConfig measured for the instance
    vposer: object  # the pose prior (`pose_prior.synthetic_pose_prior`)
    room: object  # SceneAssets: the solids behind the scene's Gaussians (penetration metrics)


@dataclasses.dataclass(frozen=True)
class DemoScene:
    """`build_demo_scene`'s result: an instance with one ground truth and its reference video."""

    inputs: object  # SceneInputs
    truth: object  # GroundTruth
    initial: object  # InitialState
    frames: np.ndarray  # (T, H, W, 3) float32
    human_masks: np.ndarray
    object_masks: np.ndarray
    vposer: object
    raster: object
    room: object = None  # SceneAssets: the solids behind the scene's Gaussians (penetration metrics)


def render_reference(inputs, truth, raster, background=(0.0, 0.0, 0.0)):
    """The reference video of a ground truth, and the masks a segmenter would give: the visible
    pixels of human and object (the render knows whose each pixel is). Float (T, H, W, 3), (T, H, W).
    `background`: the run's background colour (`ReconstructConfig.background`)."""
    import jax
    import jax.numpy as jnp

    from ..reconstruct.hsi_fit import render_frame
    from ..reconstruct.state import HUMAN_GROUP, OBJECT_GROUP, tree_index

    @jax.jit
    def draw(human, object_pose, viewmat):
        out = render_frame(inputs.avatar, human, inputs.object, object_pose, inputs.scene,
                           inputs.camera.with_viewmat(viewmat), raster, jnp.asarray(background, jnp.float32))
        return out.rgb, out.group_masks

    frames, human_masks, object_masks = [], [], []
    for t in range(truth.viewmats.shape[0]):
        rgb, masks = draw(tree_index(truth.human, t), tree_index(truth.object_poses, t), jnp.asarray(truth.viewmats[t]))
        frames.append(np.asarray(rgb))
        human_masks.append(np.asarray(masks[..., HUMAN_GROUP] > 0.5, np.float32))
        object_masks.append(np.asarray(masks[..., OBJECT_GROUP] > 0.5, np.float32))
    return np.stack(frames), np.stack(human_masks), np.stack(object_masks)


def build_instance(num_frames: int, size: int, *, seed: int = 0, variations=(None,), dynamic: bool = True,
                   fov_y_deg: float = 55.0, avatar_gaussians: int = 4000, avatar_size: str = "small",
                   room_spacing: float = 0.12, object_spacing: float = 0.035, betas=None,
                   avatar_pose_dependence: float = 0.0) -> Instance:
    """A generated instance: the scene, body, avatar and pose prior, and one ground truth per
    entry of `variations` (videos of the same initial state). Without `dynamic`, the box is part
    of the static scene. `betas`: the subject's shape (the avatar's and the truth's; None: zeros).
    `avatar_pose_dependence` > 0 gives the avatar pose-dependent network outputs of that spread
    (`avatar.builtin.with_pose_dependence`), as a trained avatar has; the built-in one has none.
    """
    from ..avatar import builtin_avatar
    from ..avatar.builtin import with_pose_dependence
    from ..body import SMPLX
    from ..reconstruct import InitialState, ReconstructConfig, SceneInputs
    from ..reconstruct.pipeline import measure_raster_config
    from ..reconstruct.state import SCENE_GROUP, tree_index
    from ..splat import Camera, Gaussians
    from .body_model_file import synthetic_smplx_path
    from .motion import interaction_motion
    from .pose_prior import synthetic_pose_prior
    from .scene import make_object, make_room

    body = SMPLX.load(synthetic_smplx_path(), num_betas=10, use_pca=False, flat_hand_mean=True)
    avatar = builtin_avatar(seed, size=avatar_size, num_gaussians=avatar_gaussians, betas=betas)
    if avatar_pose_dependence > 0:
        avatar = with_pose_dependence(avatar, avatar_pose_dependence, seed=seed)
    room = make_room(seed=seed, spacing=room_spacing)
    half = 0.1
    obj = make_object(seed=seed + 1, size=(0.28, 2 * half, 0.2), spacing=object_spacing)
    truths = [interaction_motion(body, num_frames, table_center=room.table_center, table_top=room.table_top_height,
                                 object_half_height=half, camera_size=size, fov_y_deg=fov_y_deg, variation=v,
                                 dynamic=dynamic, betas=betas) for v in variations]
    truth = truths[0]
    focal = 0.5 * size / np.tan(np.deg2rad(fov_y_deg) / 2)
    camera0 = Camera(truth.viewmats[0], focal, focal, size / 2, size / 2, size, size, near=0.05, far=100.0)
    object_pose0 = tree_index(truth.object_poses, 0)
    scene = room.scene
    if not dynamic:
        placed = obj.transform(object_pose0.rotation, object_pose0.translation).with_group(SCENE_GROUP)
        scene, obj = Gaussians.concatenate([scene, placed]), None
    inputs = SceneInputs(scene=scene, object=obj, avatar=avatar, body=body, camera=camera0)
    initial = InitialState(human=tree_index(truth.human, 0), object_pose=object_pose0 if dynamic else None)
    raster = measure_raster_config(inputs, initial, ReconstructConfig(), headroom=2.0)
    return Instance(inputs, initial, tuple(truths), raster, synthetic_pose_prior(body, seed=seed), room)


def build_demo_scene(num_frames: int, size: int, *, seed: int = 0, background=(0.0, 0.0, 0.0),
                     **assets) -> DemoScene:
    """Assets, ground truth and the reference video of the demo rendered over `background`
    (smaller assets through the keywords of `build_instance`, for tests)."""
    built = build_instance(num_frames, size, seed=seed, **assets)
    (truth,) = built.truths
    frames, human_masks, object_masks = render_reference(built.inputs, truth, built.raster, background)
    return DemoScene(built.inputs, truth, built.initial, frames, human_masks, object_masks, built.vposer, built.raster,
                     built.room)


def noisy_estimates(truth_body_pose: np.ndarray, noise: float, seed: int) -> np.ndarray:
    """What a pose estimator would give: the ground-truth body poses plus Gaussian noise (radians)."""
    rng = np.random.default_rng(seed)
    return (truth_body_pose + rng.normal(scale=noise, size=truth_body_pose.shape)).astype(np.float32)
