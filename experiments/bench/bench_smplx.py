"""Batched SMPL-X forward and forward+backward: zerohsi_jax (JAX, jit) against smplx 0.1.28 (Torch), CPU.

Both run in this process on the same synthetic model file (smplx's defaults: 10 betas, 10 expression
coefficients, 6 PCA hand components), on the same random inputs, with the same thread count. Times
are per call after compilation / warm-up; rounds alternate between the two implementations so that
background load affects both alike, and the median over rounds is reported.

    python experiments/bench/bench_smplx.py [--batches 1 64 1024] [--rounds 7] [--out results_smplx.md]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from zerohsi_jax.body import SMPLX  # noqa: E402
from zerohsi_jax.synthetic import synthetic_smplx_path  # noqa: E402


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def make_inputs(batch: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    sizes = {
        "betas": 10,
        "expression": 10,
        "global_orient": 3,
        "body_pose": 63,
        "jaw_pose": 3,
        "leye_pose": 3,
        "reye_pose": 3,
        "left_hand_pose": 6,
        "right_hand_pose": 6,
        "transl": 3,
    }
    return {k: (0.4 * rng.normal(size=(batch, n))).astype(np.float32) for k, n in sizes.items()}


def jax_timers(model: SMPLX, inputs: dict):
    args = {k: jnp.asarray(v) for k, v in inputs.items()}
    batch = inputs["betas"].shape[0]
    probe_v = jnp.asarray(np.random.default_rng(1).normal(size=(batch, 10475, 3)), jnp.float32)
    probe_j = jnp.asarray(np.random.default_rng(2).normal(size=(batch, 127, 3)), jnp.float32)

    @eqx.filter_jit
    def forward(m, kw):
        out = m(**kw)
        return out.vertices, out.joints

    def loss(kw, m):
        out = m(**kw)
        return jnp.sum(out.vertices * probe_v) + jnp.sum(out.joints * probe_j)

    backward = eqx.filter_jit(jax.value_and_grad(loss))  # gradients for every input

    def run_forward():
        jax.block_until_ready(forward(model, args))

    def run_backward():
        jax.block_until_ready(backward(args, model))

    return run_forward, run_backward


def torch_timers(path: Path, inputs: dict):
    import smplx
    import torch

    batch = inputs["betas"].shape[0]
    model = smplx.SMPLX(
        str(path), num_betas=10, num_expression_coeffs=10, use_pca=True, num_pca_comps=6, batch_size=batch
    )
    args = {k: torch.from_numpy(v) for k, v in inputs.items()}
    probe_v = torch.from_numpy(np.random.default_rng(1).normal(size=(batch, 10475, 3)).astype(np.float32))
    probe_j = torch.from_numpy(np.random.default_rng(2).normal(size=(batch, 127, 3)).astype(np.float32))

    def run_forward():
        with torch.no_grad():
            model(**args)

    def run_backward():
        leaves = {k: v.clone().requires_grad_(True) for k, v in args.items()}
        out = model(**leaves)
        loss = (out.vertices * probe_v).sum() + (out.joints * probe_j).sum()
        loss.backward()

    return run_forward, run_backward


def timed(fn, repeats: int) -> tuple[float, float]:
    """Wall-clock and process CPU (user + system, all threads) seconds per call."""
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats, (time.process_time() - cpu_start) / repeats


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64, 1024])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", default=str(Path(__file__).with_name("results_smplx.md")))
    args = parser.parse_args(argv)

    import torch

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    path = synthetic_smplx_path()
    model = SMPLX.load(path, num_betas=10, num_expression_coeffs=10, use_pca=True, num_pca_comps=6)
    load_before = os.getloadavg()[0]

    rows = []
    for batch in args.batches:
        inputs = make_inputs(batch)
        ours = jax_timers(model, inputs)
        theirs = torch_timers(path, inputs)
        # Calls per timing sample: enough to last ~0.2 s at small batches.
        for kind, (ours_fn, theirs_fn) in (
            ("forward", (ours[0], theirs[0])),
            ("forward+backward", (ours[1], theirs[1])),
        ):
            compile_start = time.perf_counter()
            ours_fn()  # compile
            compile_s = time.perf_counter() - compile_start
            theirs_fn()  # warm-up
            probe = min(timed(ours_fn, 1)[0], timed(theirs_fn, 1)[0])
            repeats = max(1, min(50, int(0.2 / max(probe, 1e-6))))
            ours_t, theirs_t = [], []
            for _ in range(args.rounds):
                ours_t.append(timed(ours_fn, repeats))
                theirs_t.append(timed(theirs_fn, repeats))
            o, t = statistics.median(w for w, _ in ours_t), statistics.median(w for w, _ in theirs_t)
            oc, tc = statistics.median(c for _, c in ours_t), statistics.median(c for _, c in theirs_t)
            rows.append((batch, kind, o, t, oc, tc, compile_s))
            print(
                f"batch {batch:5d} {kind:17s} zerohsi_jax {o * 1e3:9.2f} ms  smplx {t * 1e3:9.2f} ms  "
                f"speed-up {t / o:5.2f}x (CPU time {tc / oc:5.2f}x)  (compile {compile_s:.1f} s)",
                flush=True,
            )

    load_after = os.getloadavg()[0]
    lines = [
        "# SMPL-X forward / forward+backward: zerohsi_jax (JAX) vs smplx 0.1.28 (Torch), CPU",
        "",
        f"- date: {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}",
        f"- machine: {cpu_model()}, {threads} cores; JAX {jax.__version__} (jit, after compilation), "
        f"Torch {torch.__version__} with {torch.get_num_threads()} threads",
        "- model: synthetic SMPL-X file (10,475 vertices), 10 betas, 10 expression coefficients, 6 PCA hand "
        "components; outputs vertices (B, 10475, 3) and joints (B, 127, 3); backward = gradients of a "
        "scalar of both with respect to every input",
        f"- median over {args.rounds} alternating rounds; 1-minute load average {load_before:.1f} before, "
        f"{load_after:.1f} after (other processes share this machine)",
        "",
        "- wall-clock times decide the speed-up; the CPU-time ratio (process user + system time, all "
        "threads) is given too because it is less sensitive to other processes taking the cores",
        "",
        "| batch | pass | zerohsi_jax (ms) | smplx (ms) | speed-up | CPU-time ratio "
        "| zerohsi_jax per example (ms) | compile (s) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for batch, kind, o, t, oc, tc, c in rows:
        lines.append(
            f"| {batch} | {kind} | {o * 1e3:.2f} | {t * 1e3:.2f} | {t / o:.2f}x | {tc / oc:.2f}x "
            f"| {o * 1e3 / batch:.3f} | {c:.1f} |"
        )
    table = "\n".join(lines) + "\n"
    Path(args.out).write_text(table)
    print(table)
    return table


if __name__ == "__main__":
    main()
