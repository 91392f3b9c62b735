"""The `zerohsi-jax` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _parse_color(text: str) -> tuple[float, float, float]:
    parts = [float(v) for v in text.split(",")]
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected r,g,b in [0,1], got {text!r}")
    return tuple(parts)


def _cmd_render(args) -> int:
    import warnings

    import numpy as np

    from .splat import Camera, RasterConfig, check_overflow, fit_capacity, load_ply, render

    gaussians = load_ply(args.scene)
    camera = Camera.load_json(args.camera)
    if args.width or args.height:
        camera = camera.resized(args.width or camera.width, args.height or camera.height)
    config = RasterConfig(antialiased=args.antialiased)
    config = fit_capacity(gaussians, camera, config) if args.tile_capacity is None else config.with_capacity(
        tile_capacity=args.tile_capacity
    )
    out = render(gaussians, camera, np.asarray(args.background, np.float32), config=config)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        check_overflow(out, config, where=str(args.scene))
    import imageio.v3 as iio

    args.output.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(args.output, (np.clip(np.asarray(out.rgb), 0, 1) * 255 + 0.5).astype(np.uint8))
    print(f"wrote {args.output} ({camera.width}x{camera.height}, {gaussians.num} Gaussians)")
    if args.depth:
        depth_mm = np.where(np.asarray(out.alpha) > 0.5, np.asarray(out.depth) * 1000.0, 0.0)
        iio.imwrite(args.depth, np.clip(depth_mm, 0, 65535).astype(np.uint16))
        print(f"wrote {args.depth}")
    return 0


def _cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(args)


def _cmd_config(args) -> int:
    from .run_config import example_config, load_run_config

    if args.example:
        print(example_config(), end="")
        return 0
    if args.check is None:
        print("zerohsi-jax config: give --example or --check CONFIG", file=sys.stderr)
        return 2
    load_run_config(args.check)
    print(f"{args.check}: valid")
    return 0


def _cmd_init_frame(args) -> int:
    from .app import init_frame_command

    init_frame_command(args.config)
    return 0


def _cmd_segment(args) -> int:
    from .app import segment_command

    segment_command(args.config)
    return 0


def _cmd_reconstruct(args) -> int:
    from .app import reconstruct_command

    reconstruct_command(args.config, seeds=args.seeds, resume=not args.no_resume)
    return 0


def _cmd_continue(args) -> int:
    from .app import continue_command

    continue_command(args.run_dir, video=args.video, masks=args.masks, pose_estimates=args.pose_estimates,
                     out=args.out)
    return 0


def _cmd_bench_suite(args) -> int:
    from .benchsuite import run_bench_suite

    run_bench_suite(args.out, args.size)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zerohsi-jax",
        description="ZeroHSI in JAX: 4D human-scene interaction from video with differentiable Gaussian splatting.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("render", help="render a 3DGS .ply file from a camera")
    p.add_argument("scene", type=Path, help="INRIA 3DGS .ply file")
    p.add_argument("--camera", type=Path, required=True,
                   help="camera JSON: viewmat (4x4 world-to-camera, OpenCV axes) or eye/target, "
                        "fx/fy/cx/cy or fov_y_deg, width, height")
    p.add_argument("-o", "--output", type=Path, required=True, help="output PNG")
    p.add_argument("--depth", type=Path, help="also write the expected depth as a 16-bit PNG (millimetres)")
    p.add_argument("--background", type=_parse_color, default=(0.0, 0.0, 0.0), help="r,g,b in [0,1]")
    p.add_argument("--width", type=int, help="render width (intrinsics scaled)")
    p.add_argument("--height", type=int, help="render height (intrinsics scaled)")
    p.add_argument("--antialiased", action="store_true", help="gsplat's antialiased opacity compensation")
    p.add_argument("--tile-capacity", type=int, help="Gaussians per 16x16 tile (default: measured)")
    p.set_defaults(func=_cmd_render)

    p = sub.add_parser("demo", help="the whole pipeline on generated assets, scored against their ground truth")
    p.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder")
    p.add_argument("--frames", type=int, default=12, help="video frames (the paper: 51)")
    p.add_argument("--size", type=int, default=128, help="image width and height in pixels")
    p.add_argument("--seeds", type=int, default=1, help="videos fitted together in one batched program")
    p.add_argument("--seed", type=int, default=0, help="random seed of the generated assets")
    p.add_argument("--estimate-noise", type=float, default=0.05,
                   help="std (radians) of the simulated per-frame pose estimates around the ground truth")
    p.add_argument("--paper-schedule", action="store_true", help="the paper's iteration counts (slow on CPU)")
    p.add_argument("--frame-parallel", action="store_true", help="experimental frame-parallel HSI fit")
    p.add_argument("--no-resume", action="store_true", help="start over instead of resuming a run in --out")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("config", help="print an example run config, or validate one")
    p.add_argument("--example", action="store_true", help="print every field with its default and meaning")
    p.add_argument("--check", type=Path, help="validate a config file")
    p.set_defaults(func=_cmd_config)

    p = sub.add_parser("init-frame", help="render the initial state for the image-to-video generator")
    p.add_argument("config", type=Path)
    p.set_defaults(func=_cmd_init_frame)

    p = sub.add_parser("segment", help="SAM2 masks of human and object through the config's videos")
    p.add_argument("config", type=Path)
    p.set_defaults(func=_cmd_segment)

    p = sub.add_parser("reconstruct", help="camera tracking, HSI fit and refinement on the config's videos")
    p.add_argument("config", type=Path)
    p.add_argument("--seeds", type=int, help="fit the first N videos together (default: all)")
    p.add_argument("--no-resume", action="store_true", help="start over instead of resuming the run folder")
    p.set_defaults(func=_cmd_reconstruct)

    p = sub.add_parser("continue", help="the next clip of a long sequence, starting from a run's last frame")
    p.add_argument("run_dir", type=Path, help="the output folder of a finished reconstruct")
    p.add_argument("--video", required=True, help="the next clip, generated from the last frame")
    p.add_argument("--masks", help="its masks (.npz with 'human' and 'object'); default: SAM2")
    p.add_argument("--pose-estimates", help="its per-frame body pose estimates (.npy, (T, 63))")
    p.add_argument("--out", help="output folder (default RUN_DIR/next)")
    p.set_defaults(func=_cmd_continue)

    p = sub.add_parser("bench-suite", help="generated static and dynamic instances scored with the paper's metrics")
    p.add_argument("--size", choices=["small", "full"], default="small",
                   help="small: CPU-sized (2 instances, 2 seeds); full: 4 instances, 5 seeds, paper schedule (GPU)")
    p.add_argument("--out", type=Path, default=Path("out/bench_suite"))
    p.set_defaults(func=_cmd_bench_suite)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError) as err:
        print(f"zerohsi-jax {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
