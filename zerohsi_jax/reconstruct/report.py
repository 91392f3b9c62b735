"""Pictures of a run: the reference | render | overlay video and the loss curves."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ..files import save_figure
from ..io import overlay, side_by_side, to_uint8, write_video
from .hsi_fit import render_frame
from .state import HumanPose, ObjectPose, SceneInputs


def render_results(inputs: SceneInputs, result, seed: int = 0, background=(0.0, 0.0, 0.0)) -> np.ndarray:
    """Render the refined poses of one seed at every frame (T, H, W, 3) in [0, 1]."""
    raster = result.raster

    @jax.jit
    def draw(human, object_pose, viewmat):
        cam = inputs.camera.with_viewmat(viewmat)
        return render_frame(inputs.avatar, human, inputs.object, object_pose, inputs.scene, cam, raster,
                            jnp.asarray(background, jnp.float32)).rgb

    frames = []
    for t in range(result.viewmats.shape[1]):
        h = HumanPose(*(jnp.asarray(getattr(result.human, k)[seed, t]) for k in ("transl", "global_orient",
                                                                                  "body_pose")))
        o = jnp.asarray(result.object_poses[seed, t])
        frames.append(np.asarray(draw(h, ObjectPose(o[:3, :3], o[:3, 3]), jnp.asarray(result.viewmats[seed, t]))))
    return np.stack(frames)


def comparison_frames(reference: np.ndarray, rendered: np.ndarray) -> np.ndarray:
    """reference | render | render blended over the reference, per frame (uint8)."""
    out = []
    for ref, ren in zip(reference, rendered, strict=True):
        a, b = to_uint8(ref), to_uint8(ren)
        out.append(side_by_side(a, b, overlay(a, b, alpha=0.5), gap=4))
    return np.stack(out)


def plot_losses(path: Path, result) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    for ax, key, title in ((axes[0], "camera", "camera tracking (per frame)"), (axes[1], "hsi", "HSI fit (per frame)")):
        traces = result.losses.get(key, [])
        for t, trace in enumerate(traces):
            trace = np.asarray(trace).reshape(-1, np.asarray(trace).shape[-1]).mean(0)
            ax.plot(trace, color=matplotlib.colormaps["viridis"](t / max(1, len(traces) - 1)), lw=0.8)
        ax.set_title(title)
        ax.set_xlabel("iteration")
        ax.set_yscale("log")
    refine = result.losses.get("refine")
    if refine is not None:
        axes[2].plot(np.asarray(refine).reshape(-1, np.asarray(refine).shape[-1]).T, lw=0.8)
        axes[2].set_yscale("log")
    axes[2].set_title("refinement (whole sequence)")
    axes[2].set_xlabel("iteration")
    fig.tight_layout()
    save_figure(path, fig, dpi=110)  # written aside and renamed: a picture that exists is whole
    plt.close(fig)


def write_run_pictures(out_dir, inputs: SceneInputs, result, reference: np.ndarray, fps: float = 10.0,
                       seed: int = 0, background=(0.0, 0.0, 0.0)) -> list[Path]:
    """video.mp4 (reference | render | overlay) and losses.png in `out_dir`; the renders over the
    run's `background` colour."""
    out_dir = Path(out_dir)
    rendered = render_results(inputs, result, seed, background)
    video = write_video(out_dir / "video.mp4", comparison_frames(reference, rendered), fps)
    plot_losses(out_dir / "losses.png", result)
    return [video, out_dir / "losses.png"]
