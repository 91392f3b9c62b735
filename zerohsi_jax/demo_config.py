"""The demo as a run config: the files a config run names, written beside the demo's run folder.

The demo builds its scene, object, avatar and video in memory. Writing them as a `RunConfig`
(`config.yaml` with `scene.ply`, `object.ply`, `camera.json`, the reference video, its masks and
pose estimates) lets `view`, `export` and `continue` treat the demo's run like any other: they
load everything through `zerohsi_jax.app.load_assets`, and `zerohsi-jax reconstruct
out/demo/config.yaml` reruns the fit from the files.

A config run's object frame is centred on the centroid of its Gaussians (`load_assets` centres
the PLY). The generated box's jittered Gaussians are centred on the origin only to a millimetre
or so, so `config_ready_demo` moves the demo into exactly that frame (object Gaussians shifted
by -centroid, every object pose by +R centroid): the same world, and object poses that mean the
same in the run folder as for the saved PLY.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import yaml

from .avatar import save_avatar
from .avatar.builtin import SIZES
from .files import atomic_write, save_json, save_npz
from .geometry import matrix_to_axis_angle
from .io import write_video
from .reconstruct import ObjectPose
from .run_config import RunConfig, run_config_to_dict
from .splat import save_ply

DEMO_FRAME_RATE = 10.0
"""The demo's motion is sampled as the paper's videos are after resampling: 30 fps / 3."""


def centred_object_frame(demo):
    """The demo with its object frame on the exact centroid of the object's Gaussians (world
    positions of everything unchanged)."""
    obj = demo.inputs.object
    if obj is None:
        return demo
    centroid = jnp.mean(obj.means, axis=0)

    def moved(pose):
        return ObjectPose(pose.rotation, pose.translation + jnp.einsum("...ij,j->...i", pose.rotation, centroid))

    inputs = dataclasses.replace(demo.inputs, object=obj.transform(jnp.eye(3, dtype=obj.means.dtype), -centroid))
    initial = dataclasses.replace(demo.initial, object_pose=moved(demo.initial.object_pose))
    truth = dataclasses.replace(demo.truth, object_poses=moved(demo.truth.object_poses))
    return dataclasses.replace(demo, inputs=inputs, initial=initial, truth=truth)


def _avatar_entry(out_dir: Path, avatar, seed: int) -> dict:
    """The config's avatar settings: the built-in avatar's when `load_assets` rebuilds this one
    (it builds seed 0 with the template's shape), else the avatar saved to a file."""
    size = next((name for name, spec in SIZES.items() if spec["map_size"] == avatar.template.map_size), None)
    if seed == 0 and size is not None and not np.any(np.asarray(avatar.template.betas)):
        return {"avatar": "builtin", "avatar_size": size, "avatar_gaussians": int(avatar.num_gaussians)}
    save_avatar(avatar, out_dir / "avatar.npz")  # written aside and renamed into place
    return {"avatar": "avatar.npz"}


def config_ready_demo(out_dir, demo, *, seed: int = 0, schedule=None, estimates=None,
                      frame_rate: float = DEMO_FRAME_RATE):
    """Write `config.yaml` and the files it names into `out_dir` (the demo's run folder is
    `out_dir/run`), and return the demo in the object frame those files define (use it for the run).

    `seed`: the seed the demo's avatar and pose prior were built with; `schedule`: the
    ReconstructConfig the demo runs; `estimates` (S, T, 63): the simulated pose estimates per seed."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    demo = centred_object_frame(demo)
    inputs, initial = demo.inputs, demo.initial
    num_frames = int(demo.frames.shape[0])

    save_ply(out_dir / "scene.ply", inputs.scene)
    save_json(out_dir / "camera.json", inputs.camera.to_dict())
    write_video(out_dir / "reference.mp4", demo.frames, frame_rate)
    save_npz(out_dir / "masks.npz", human=np.asarray(demo.human_masks) > 0.5,
             object=np.asarray(demo.object_masks) > 0.5)
    atomic_write(out_dir / "initial_body_pose.npy",
                 lambda tmp: np.save(tmp, np.asarray(initial.human.body_pose, np.float32).reshape(63)))
    seeds = 1 if estimates is None else int(np.asarray(estimates).shape[0])
    if estimates is not None:
        for s in range(seeds):
            atomic_write(out_dir / f"pose_estimates_{s}.npy",
                         lambda tmp, s=s: np.save(tmp, np.asarray(estimates[s], np.float32)))

    human = {
        "smplx_model": "synthetic",
        "vposer": "synthetic",
        "transl": np.asarray(initial.human.transl, float).reshape(3).tolist(),
        "global_orient": np.asarray(initial.human.global_orient, float).reshape(3).tolist(),
        "body_pose": "initial_body_pose.npy",
        **_avatar_entry(out_dir, inputs.avatar, seed),
    }
    if seed != 0:
        # load_assets trains the synthetic prior with seed 0; this demo's was trained with its own seed.
        atomic_write(out_dir / "vposer.eqx", lambda tmp: demo.vposer.save(tmp, source=f"the demo's prior, seed {seed}"))
        human["vposer"] = "vposer.eqx"
    obj = {"ply": None}
    if inputs.object is not None:
        save_ply(out_dir / "object.ply", inputs.object)
        pose = initial.object_pose
        obj = {"ply": "object.ply", "translation": np.asarray(pose.translation, float).reshape(3).tolist(),
               "rotation": np.asarray(matrix_to_axis_angle(pose.rotation), float).reshape(3).tolist()}
    data = run_config_to_dict(RunConfig())
    data.update(
        scene={"ply": "scene.ply"},
        object={**data["object"], **obj},
        human={**data["human"], **human},
        camera="camera.json",
        render_size=None,
        video={"paths": ["reference.mp4"] * seeds, "stride": 1, "max_frames": num_frames,
               "masks": ["masks.npz"] * seeds,
               "pose_estimates": None if estimates is None else [f"pose_estimates_{s}.npy" for s in range(seeds)]},
        prompt="a person steps to the table, grasps the box and lifts it (the zerohsi-jax demo)",
        init_frame={"width": int(inputs.camera.width), "height": int(inputs.camera.height)},
        output=".",
    )
    if schedule is not None:
        data["reconstruct"] = run_config_to_dict(schedule)
    text = "# Written by `zerohsi-jax demo`: the demo's generated assets as a run config (paths relative to it).\n"
    text += yaml.safe_dump(data, sort_keys=False)
    atomic_write(out_dir / "config.yaml", lambda tmp: Path(tmp).write_text(text))
    return demo


__all__ = ["DEMO_FRAME_RATE", "centred_object_frame", "config_ready_demo"]
