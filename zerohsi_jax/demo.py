"""`zerohsi-jax demo`: generated assets rendered along a camera path (the reconstruction demo
builds on these assets)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np


def orbit_cameras(num: int, size: int, *, radius: float = 3.2, height: float = 1.5, target=(0.3, 0.8, 0.8)):
    from .splat import Camera

    cams = []
    for i in range(num):
        angle = np.deg2rad(-25 + 50 * i / max(1, num - 1))
        eye = (target[0] + radius * np.sin(angle), height, target[2] - radius * np.cos(angle))
        cams.append(Camera.look_at(eye, target, fov_y_deg=60, width=size, height=size))
    return cams


def run_demo(args) -> int:
    import imageio.v3 as iio
    import jax
    import jax.numpy as jnp
    from tqdm import tqdm

    from .splat import Gaussians, fit_capacity, render, save_ply
    from .synthetic import make_object, make_room

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    room = make_room()
    box = make_object()
    top = room.table_top_height + 0.1
    box = box.transform(jnp.eye(3), jnp.asarray([room.table_center[0], top, room.table_center[2]]))
    gaussians = Gaussians.concatenate([box, room.scene])
    save_ply(out_dir / "scene.ply", gaussians)
    cams = orbit_cameras(args.frames, args.size)
    cams[0].save_json(out_dir / "camera.json")
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *cams)
    config = fit_capacity(gaussians, stacked)
    render_frame = jax.jit(lambda g, c: render(g, c, jnp.array([1.0, 1.0, 1.0]), config=config).rgb)
    frames = []
    start = time.perf_counter()
    for cam in tqdm(cams, desc="rendering", unit="frame"):
        frames.append((np.clip(np.asarray(render_frame(gaussians, cam)), 0, 1) * 255 + 0.5).astype(np.uint8))
    seconds = time.perf_counter() - start
    iio.imwrite(out_dir / "frame0.png", frames[0])
    iio.imwrite(out_dir / "orbit.mp4", np.stack(frames), fps=12, codec="libx264", macro_block_size=8)
    summary = {"gaussians": gaussians.num, "frames": len(frames), "size": args.size, "seconds": round(seconds, 2)}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))
    print(f"wrote {out_dir}/scene.ply, camera.json, frame0.png, orbit.mp4")
    return 0
