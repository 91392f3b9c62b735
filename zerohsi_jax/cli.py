"""The `zerohsi-jax` command line."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

import numpy as np

# The commands' own modules (and JAX with them) are imported inside each command: `--help` and
# `config` answer without loading JAX, and the XLA cache is set before the first program.
from .cache import enable_compilation_cache
from .errors import is_user_error, one_line


def _parse_color(text: str) -> tuple[float, float, float]:
    parts = [float(v) for v in text.split(",")]
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected r,g,b in [0,1], got {text!r}")
    return tuple(parts)


def _cmd_render(args) -> int:
    from .splat import Camera, RasterConfig, load_ply, render

    gaussians = load_ply(args.scene)
    camera = Camera.load_json(args.camera)
    if args.width or args.height:
        camera = camera.resized(args.width or camera.width, args.height or camera.height)
    # Capacities left at None are measured on the scene; a --tile-capacity too small for it is
    # grown and the render redone, with a warning naming the capacity to set.
    config = RasterConfig(antialiased=args.antialiased, tile_capacity=args.tile_capacity)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        out = render(gaussians, camera, np.asarray(args.background, np.float32), config=config)
    import imageio.v3 as iio

    args.output.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(args.output, (np.clip(np.asarray(out.rgb), 0, 1) * 255 + 0.5).astype(np.uint8))
    print(f"wrote {args.output} ({camera.width}x{camera.height}, {gaussians.num} Gaussians)")
    if args.depth:
        # In float64: a float32 product would round some depths to the neighbouring millimetre.
        depth_mm = np.where(np.asarray(out.alpha) > 0.5, np.asarray(out.depth, np.float64) * 1000.0, 0.0)
        iio.imwrite(args.depth, np.clip(np.rint(depth_mm), 0, 65535).astype(np.uint16))
        print(f"wrote {args.depth}")
    return 0


def _cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(args)


def _int_at_least(least: int):
    """An argparse type: a whole number of `least` or more (argparse names the option in its error)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be {least} or more, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1)


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number of 0 or more, got {text}")
    return value


def _cmd_config(args) -> int:
    from .run_config import example_config, load_checked_config

    if args.example:
        print(example_config(), end="")
        return 0
    if args.check is None:
        print("zerohsi-jax config: give --example or --check CONFIG", file=sys.stderr)
        return 2
    load_checked_config(args.check, args.command_checked)
    print(f"{args.check}: valid (keys, values and the files `{args.command_checked}` needs)")
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

    reconstruct_command(args.config, seeds=args.seeds, resume=not args.no_resume, redo_from=args.redo_from,
                        devices=args.devices)
    return 0


def _cmd_continue(args) -> int:
    from .app import continue_command

    continue_command(args.run_dir, video=args.video, masks=args.masks, pose_estimates=args.pose_estimates,
                     out=args.out, seed=args.seed, resume=not args.no_resume, devices=args.devices)
    return 0


def _cmd_bench_suite(args) -> int:
    from .benchsuite import run_bench_suite

    run_bench_suite(args.out, args.size, devices=args.devices)
    return 0


def _cmd_view(args) -> int:
    try:
        from .view.app import view_command

        return view_command(args.run_dir, host=args.host, port=args.port, config=args.config, fps=args.fps,
                            max_scene_splats=args.max_splats, max_person_splats=args.max_person_splats,
                            frame=args.frame, screenshot=args.screenshot)
    except ImportError as err:
        print(f"zerohsi-jax view: error: {err}", file=sys.stderr)
        return 2


def _cmd_export(args) -> int:
    from .export import FORMATS, export_run

    for fmt in FORMATS if args.format == "all" else (args.format,):
        for path in export_run(args.run_dir, fmt, args.out, stage=args.stage, fps=args.fps, config=args.config,
                               camera=args.camera):
            print(f"export: wrote {path}")
    return 0


def _add_device_flags(p: argparse.ArgumentParser) -> None:
    """--devices, and the flags that join this process to the others of a multi-process run."""
    p.add_argument("--devices", type=_positive_int, metavar="N",
                   help="fit the seeds on the first N devices of this process (default: all of them); the seeds "
                        "are split over them, padded to a multiple of N")
    p.add_argument("--coordinator", metavar="ADDRESS:PORT",
                   help="multi-process run: process 0's address and a free port (jax.distributed); also "
                        "ZEROHSI_COORDINATOR. Under srun or mpirun no flag is needed")
    p.add_argument("--num-processes", type=_positive_int, metavar="N",
                   help="multi-process run: how many processes (also ZEROHSI_NUM_PROCESSES)")
    p.add_argument("--process-id", type=_int_at_least(0), metavar="I",
                   help="multi-process run: this process's id, 0..N-1 (also ZEROHSI_PROCESS_ID)")


DISTRIBUTED_COMMANDS = ("reconstruct", "continue", "demo", "bench-suite")
"""The commands that fit seeds, hence take --devices and the multi-process flags."""


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
    p.add_argument("--frames", type=_int_at_least(2), default=12, help="video frames (the paper: 51)")
    p.add_argument("--size", type=_int_at_least(16), default=128, help="image width and height in pixels")
    p.add_argument("--seeds", type=_positive_int, default=1, help="videos fitted together in one batched program")
    p.add_argument("--seed", type=int, default=0, help="random seed of the generated assets")
    p.add_argument("--estimate-noise", type=_non_negative_float, default=0.05,
                   help="std (radians) of the simulated per-frame pose estimates around the ground truth")
    p.add_argument("--paper-schedule", action="store_true", help="the paper's iteration counts (slow on CPU)")
    p.add_argument("--frame-parallel", action="store_true", help="experimental frame-parallel HSI fit")
    p.add_argument("--no-resume", action="store_true", help="start over instead of resuming a run in --out")
    p.add_argument("--redo-from", type=_positive_int, metavar="N",
                   help="resume, but fit frame N and the later frames again (after a damaged file)")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("config", help="print an example run config, or validate one")
    p.add_argument("--example", action="store_true", help="print every field with its default and meaning")
    p.add_argument("--check", type=Path, help="validate a config file: keys, values and the files it names")
    p.add_argument("--for", dest="command_checked", choices=["init-frame", "segment", "reconstruct"],
                   default="reconstruct", help="the command whose files must exist (init-frame needs no video)")
    p.set_defaults(func=_cmd_config)

    p = sub.add_parser("init-frame", help="render the initial state for the image-to-video generator")
    p.add_argument("config", type=Path)
    p.set_defaults(func=_cmd_init_frame)

    p = sub.add_parser("segment", help="SAM2 masks of human and object through the config's videos")
    p.add_argument("config", type=Path)
    p.set_defaults(func=_cmd_segment)

    p = sub.add_parser("reconstruct", help="camera tracking, HSI fit and refinement on the config's videos")
    p.add_argument("config", type=Path)
    p.add_argument("--seeds", type=_positive_int, help="fit the first N videos together (default: all)")
    p.add_argument("--no-resume", action="store_true", help="start over instead of resuming the run folder")
    p.add_argument("--redo-from", type=_positive_int, metavar="N",
                   help="resume, but fit frame N and the later frames again (after a damaged file)")
    p.set_defaults(func=_cmd_reconstruct)

    p = sub.add_parser("continue", help="the next clip of a long sequence, starting from a run's last frame")
    p.add_argument("run_dir", type=Path, help="the output folder of a finished reconstruct")
    p.add_argument("--video", help="the next clip, generated from RUN_DIR/next/init_frame.png; without it, only "
                                   "the next clip's config and initial frame are written")
    p.add_argument("--seed", type=int, default=0, help="which seed of a batched run to continue")
    p.add_argument("--masks", help="its masks (.npz with 'human' and 'object'); default: SAM2")
    p.add_argument("--pose-estimates", help="its per-frame body pose estimates (.npy, (T, 63))")
    p.add_argument("--out", help="output folder (default RUN_DIR/next)")
    p.add_argument("--no-resume", action="store_true", help="start the next clip's run over instead of resuming it")
    p.set_defaults(func=_cmd_continue)

    p = sub.add_parser("bench-suite", help="generated static and dynamic instances scored with the paper's metrics")
    p.add_argument("--size", choices=["small", "full"], default="small",
                   help="small: CPU-sized (2 instances, 2 seeds); full: 4 instances, 5 seeds, paper schedule (GPU)")
    p.add_argument("--out", type=Path, default=Path("out/bench_suite"))
    p.set_defaults(func=_cmd_bench_suite)

    p = sub.add_parser("view", help="interactive 4D viewer of a finished run in the browser (needs the view extra)")
    p.add_argument("run_dir", type=Path, help="the run folder (the demo's: out/demo/run; a config's: <output>/run)")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: reachable from other machines)")
    p.add_argument("--port", type=int, default=8080, help="port (the next free one is taken when it is busy)")
    p.add_argument("--config", type=Path, help="the run's config (default: config.yaml beside the run folder)")
    p.add_argument("--fps", type=float, help="frame rate, when neither the run nor its video records one")
    p.add_argument("--max-splats", type=int, default=300_000,
                   help="scene splats sent to the browser at first (a random subset; a control changes it)")
    p.add_argument("--max-person-splats", type=int, default=60_000, help="avatar splats shown per frame at most")
    p.add_argument("--frame", type=int, default=0, help="the frame shown first")
    p.add_argument("--screenshot", type=Path, help="save a picture of the viewer (headless Chromium) and exit")
    p.set_defaults(func=_cmd_view)

    p = sub.add_parser("export", help="a finished run as AMASS/SMPL-X motion files, camera and object JSON")
    p.add_argument("run_dir", type=Path, help="the run folder (the demo's: out/demo/run)")
    p.add_argument("--format", required=True, choices=["amass", "smplx", "cameras", "objects", "all"],
                   help="amass: AMASS SMPL-X .npz per seed; smplx: smplx.SMPLX keyword arrays; cameras: per-frame "
                        "world-to-camera and intrinsics (JSON, OpenCV axes); objects: per-frame object poses (JSON)")
    p.add_argument("--out", type=Path, help="output folder (default RUN_DIR/export)")
    p.add_argument("--stage", choices=["refined", "stage2"], default="refined",
                   help="the refined poses (stage 3) or the per-frame HSI fit (stage 2)")
    p.add_argument("--fps", type=float, help="frame rate, when neither the run nor its video records one")
    p.add_argument("--config", type=Path, help="the run's config (default: config.yaml beside the run folder)")
    p.add_argument("--camera", type=Path, help="camera JSON with the intrinsics, for a run without a config")
    p.set_defaults(func=_cmd_export)

    for name in DISTRIBUTED_COMMANDS:
        _add_device_flags(sub.choices[name])

    debug = "show the traceback of every error (a mistake in the inputs is otherwise one line)"
    parser.add_argument("--debug", action="store_true", help=debug)
    for command in sub.choices.values():
        # SUPPRESS: given after the command it sets the flag; left out, it keeps the one given before.
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug)
    return parser


def _keep_compiled_programs() -> None:
    """XLA's compiled programs go to the cache root's `xla` folder, so a second run of a command
    loads them instead of compiling for a minute (ZEROHSI_JAX_XLA_CACHE=0 turns this off). A
    cache folder set already (a notebook, the tests) is left as it is."""
    import jax

    if os.environ.get("ZEROHSI_JAX_XLA_CACHE", "1").strip().lower() in ("0", "false", "no"):
        return
    if jax.config.jax_compilation_cache_dir:
        return
    enable_compilation_cache()


def main(argv: list[str] | None = None) -> int:
    """Run a command. A mistake in what the user gave (`errors.is_user_error`) is one line on
    stderr, `zerohsi-jax <command>: error: <message>`, and exit status 2; any other exception is a
    bug and keeps its traceback. `--debug` shows the traceback of every error."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command in DISTRIBUTED_COMMANDS:
            # Before anything starts a JAX backend: jax.distributed must be joined first.
            from .devices import initialize_distributed

            initialize_distributed(args.coordinator, args.num_processes, args.process_id)
        if args.command != "config":
            _keep_compiled_programs()
        return args.func(args)
    except Exception as err:
        if args.debug or not is_user_error(err):
            raise
        print(f"zerohsi-jax {args.command}: error: {one_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
