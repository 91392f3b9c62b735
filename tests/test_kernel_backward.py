"""The compiled compositing backward (kernels/, `zerohsi_jax.splat.kernel_build` and `kernel_backward`).

Its gradients must equal the pure-JAX `composite_backward` on the same residuals: random scenes,
tiles at capacity, empty tiles, pixels that turn opaque and stop early, the alpha clamp, under
jit and (nested) vmap. The build, cache and fallback paths are checked too. The CPU build runs
everywhere; the CUDA test needs a GPU that JAX can see.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zerohsi_jax.splat import kernel_backward as kb
from zerohsi_jax.splat import kernel_build
from zerohsi_jax.splat.composite import _composite_forward, composite, composite_backward
from zerohsi_jax.splat.composite_step import tile_pixel_centers
from zerohsi_jax.splat.config import RasterConfig

# A small chunk keeps the pure-JAX backward quick to compile; the kernel ignores chunking.
CHUNK = 4
# Most scenes share these shapes (off-screen Gaussians pad N) so that the JAX forward and
# backward compile once for all of them.
N, WIDTH, HEIGHT, CHANNELS, CAPACITY = 256, 40, 30, 3, 64
CFG = RasterConfig(tile_capacity=CAPACITY, chunk_size=CHUNK)


@pytest.fixture(scope="module", autouse=True)
def cpu_kernel():
    """The CPU kernel must build wherever the tests run (CI has gcc): failing to build is a failure."""
    assert kb.load_kernel("cpu"), kb.kernel_status("cpu")


def random_scene(
    seed,
    visible,
    width=WIDTH,
    height=HEIGHT,
    channels=CHANNELS,
    *,
    total=N,
    tile_capacity=CAPACITY,
    tile_size=16,
    scale=(1.0, 6.0),
    opacity=(0.05, 0.99),
    region=None,
    dtype=np.float64,
    centered=False,
):
    """`total` random 2D Gaussians, `visible` of them on screen, binned front to back per tile
    (the inputs of `composite`).

    `region` (x0, y0, x1, y1) confines the visible means; `centered` puts them on pixel centres,
    where sigma = 0 and an opacity of 1 hits the alpha clamp."""
    rng = np.random.default_rng(seed)
    x0, y0, x1, y1 = region or (-4.0, -4.0, width + 4.0, height + 4.0)
    means = np.stack([rng.uniform(x0, x1, total), rng.uniform(y0, y1, total)], -1)
    if centered:
        means = np.floor(means) + 0.5
    means[visible:] = -1000.0  # touches no tile
    theta = rng.uniform(0, np.pi, total)
    rot = np.stack(
        [np.stack([np.cos(theta), -np.sin(theta)], -1), np.stack([np.sin(theta), np.cos(theta)], -1)], -2
    )
    scales = rng.uniform(*scale, (total, 2))
    cov = rot @ (scales[:, :, None] ** 2 * np.eye(2)) @ np.swapaxes(rot, -1, -2)
    inv = np.linalg.inv(cov)
    conics = np.stack([inv[:, 0, 0], inv[:, 0, 1], inv[:, 1, 1]], -1)
    opacities = rng.uniform(*opacity, total)
    features = rng.uniform(-1.0, 1.0, (total, channels))
    background = rng.uniform(0.0, 1.0, channels)
    depth = rng.uniform(0.0, 1.0, total)

    radius = 3.0 * np.sqrt(np.linalg.eigvalsh(cov)[:, -1])
    tiles_x, tiles_y = -(-width // tile_size), -(-height // tile_size)
    tx = np.arange(tiles_x * tiles_y) % tiles_x * tile_size
    ty = np.arange(tiles_x * tiles_y) // tiles_x * tile_size
    hit = (
        (means[None, :, 0] + radius >= tx[:, None])
        & (means[None, :, 0] - radius <= tx[:, None] + tile_size)
        & (means[None, :, 1] + radius >= ty[:, None])
        & (means[None, :, 1] - radius <= ty[:, None] + tile_size)
    )
    order = np.argsort(np.where(hit, depth[None], np.inf), axis=1, kind="stable")
    order = np.pad(order, ((0, 0), (0, max(0, tile_capacity - total))))[:, :tile_capacity]
    counts = np.minimum(hit.sum(1), tile_capacity)
    ids = np.where(np.arange(tile_capacity)[None] < counts[:, None], order, 0)
    return dict(
        means2d=means.astype(dtype),
        conics=conics.astype(dtype),
        opacities=opacities.astype(dtype),
        features=features.astype(dtype),
        background=background.astype(dtype),
        ids=ids.astype(np.int32),
        counts=counts.astype(np.int32),
        width=width,
        height=height,
        true_counts=hit.sum(1),
    )


INPUTS = ("means2d", "conics", "opacities", "features", "background", "ids", "counts")
GRADS = ("means2d", "conics", "opacities", "features", "background")


def residuals(scene, cfg, seed=0, zero_fraction=0.2):
    """The forward's residuals and a random cotangent (some pixels exactly zero)."""
    args = [jnp.asarray(scene[k]) for k in INPUTS]
    dtype = args[0].dtype
    pix = tile_pixel_centers(scene["width"], scene["height"], cfg).astype(dtype)
    _, trans, stop = jax.jit(_composite_forward, static_argnums=8)(*args, pix, cfg)
    rng = np.random.default_rng(seed + 1000)
    grad_out = rng.normal(size=trans.shape + (args[3].shape[1],))
    grad_out[rng.uniform(size=trans.shape) < zero_fraction] = 0.0
    return (*args, pix, trans, stop, jnp.asarray(grad_out, dtype))


_jax_backward = jax.jit(composite_backward, static_argnums=11)
_kernel_backward = jax.jit(kb.kernel_composite_backward, static_argnums=11)


def assert_same_gradients(scene, cfg, *, rtol, atol, seed=0):
    res = residuals(scene, cfg, seed)
    expected = _jax_backward(*res, cfg)
    got = _kernel_backward(*res, cfg)
    for name, e, g in zip(GRADS, expected, got, strict=True):
        e, g = np.asarray(e), np.asarray(g)
        assert e.shape == g.shape and e.dtype == g.dtype, name
        assert np.all(np.isfinite(g)), name
        scale = max(np.abs(e).max(), 1e-30)
        np.testing.assert_allclose(g, e, rtol=rtol, atol=atol * scale, err_msg=f"gradient of {name}")
    return res


F64 = dict(rtol=1e-9, atol=1e-11)
F32 = dict(rtol=2e-3, atol=2e-5)


@pytest.mark.parametrize("seed, visible", [(0, 40), (1, 120)])
def test_random_scenes_float64(x64, seed, visible):
    scene = random_scene(seed, visible)
    assert np.any(scene["counts"] < CAPACITY)
    assert_same_gradients(scene, CFG, seed=seed, **F64)


@pytest.mark.parametrize("seed, n, size, channels", [(2, 150, (16, 16), 1), (3, 300, (50, 41), 7)])
def test_other_sizes_and_channel_counts(x64, seed, n, size, channels):
    scene = random_scene(seed, n, *size, channels, total=n, tile_capacity=96)
    assert_same_gradients(scene, RasterConfig(tile_capacity=96, chunk_size=CHUNK), seed=seed, **F64)


def test_random_scene_float32():
    scene = random_scene(4, 100, dtype=np.float32)
    assert_same_gradients(scene, CFG, seed=4, **F32)


def test_tiles_at_capacity(x64):
    scene = random_scene(6, N, scale=(2.0, 8.0), opacity=(0.02, 0.3))
    assert np.all(scene["counts"] == CAPACITY) and np.all(scene["true_counts"] > CAPACITY)
    assert_same_gradients(scene, CFG, **F64)


def test_empty_tiles(x64):
    scene = random_scene(7, 60, region=(3.0, 3.0, 12.0, 12.0), scale=(0.5, 1.0))
    assert np.sum(scene["counts"] == 0) >= 4
    res = assert_same_gradients(scene, CFG, **F64)
    # Nothing covers an empty tile: its pixels keep all their transmittance.
    empty = np.flatnonzero(scene["counts"] == 0)
    np.testing.assert_array_equal(np.asarray(res[8])[empty], 1.0)


def test_opaque_pixels_stop_early(x64):
    scene = random_scene(8, N, scale=(4.0, 10.0), opacity=(0.9, 0.99))
    res = assert_same_gradients(scene, CFG, **F64)
    stop, counts = np.asarray(res[9]), scene["counts"]
    stopped = stop < counts[:, None]
    assert stopped.mean() > 0.9, "most pixels should turn opaque before their tile's last slot"
    assert np.median(stop[stopped]) < 0.75 * CAPACITY  # many slots lie past the stop


def test_alpha_clamp(x64):
    # Means on pixel centres: sigma = 0 there and o exp(-sigma) = 1 > alpha_max.
    scene = random_scene(9, 40, scale=(1.0, 3.0), opacity=(1.0, 1.0), centered=True)
    res = assert_same_gradients(scene, CFG, **F64)
    # The clamp is really hit by slots that count: a Gaussian at its own pixel, before that
    # pixel's stop index.
    stop, clamped = np.asarray(res[9]), 0
    tiles_x = -(-WIDTH // 16)
    for g, (x, y) in enumerate(scene["means2d"]):
        if not (0 < x < WIDTH and 0 < y < HEIGHT):
            continue
        tile, pixel = int(y // 16) * tiles_x + int(x // 16), int(y % 16) * 16 + int(x % 16)
        slot = np.flatnonzero(scene["ids"][tile, : scene["counts"][tile]] == g)
        clamped += int(slot.size > 0 and slot[0] < stop[tile, pixel])
    assert clamped >= 5


def test_thread_count_does_not_change_results(monkeypatch):
    cfg = CFG
    res = residuals(random_scene(10, 150, dtype=np.float32), cfg)
    results = []
    for threads in ("1", "2", "5"):
        monkeypatch.setenv("ZEROHSI_JAX_KERNEL_THREADS", threads)
        results.append(kb.kernel_composite_backward(*res, cfg))  # eager: the attribute is read each call
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _loss_grads(scene, cfg, batched_opacities, batched_features, weights):
    """Per-example gradients of a weighted image sum, vmapped over opacities and features."""

    def loss(means2d, conics, opacities, features, background):
        img = composite(
            means2d,
            conics,
            opacities,
            features,
            background,
            scene["ids"],
            scene["counts"],
            scene["width"],
            scene["height"],
            cfg,
        )
        return jnp.sum(img * weights)

    grad = jax.grad(loss, argnums=(0, 1, 2, 3, 4))
    batched = jax.vmap(grad, in_axes=(None, None, 0, 0, None))
    if batched_opacities.ndim == 3:
        batched = jax.vmap(batched, in_axes=(None, None, 0, 0, None))
    return jax.jit(batched)(
        scene["means2d"], scene["conics"], batched_opacities, batched_features, scene["background"]
    )


@pytest.mark.parametrize("batch_shape", [(2, 2)])  # nested vmap: two batch axes in the FFI call
def test_jit_and_vmap_through_composite(x64, batch_shape):
    scene = random_scene(11, 100, 40, 24, 4, total=100)
    rng = np.random.default_rng(0)
    opacities = rng.uniform(0.05, 0.99, batch_shape + scene["opacities"].shape)
    features = rng.uniform(-1, 1, batch_shape + scene["features"].shape)
    weights = rng.normal(size=(24, 40, 4))
    jax_cfg = RasterConfig(tile_capacity=64, chunk_size=CHUNK, backward="jax")
    kernel_cfg = RasterConfig(tile_capacity=64, chunk_size=CHUNK, backward="kernel")
    expected = _loss_grads(scene, jax_cfg, opacities, features, weights)
    got = _loss_grads(scene, kernel_cfg, opacities, features, weights)
    for name, e, g in zip(GRADS, expected, got, strict=True):
        assert g.shape == batch_shape + scene[name].shape
        np.testing.assert_allclose(
            np.asarray(g), np.asarray(e), rtol=1e-9, atol=1e-11 * np.abs(e).max(), err_msg=name
        )
    # The examples differ, so a broadcast that dropped the batch would show.
    assert not np.allclose(
        np.asarray(got[3])[(0,) * len(batch_shape)], np.asarray(got[3])[(1,) * len(batch_shape)]
    )


def test_default_backward_uses_the_kernel():
    cfg = RasterConfig()
    assert cfg.backward == "auto"
    scene = {
        k: jnp.asarray(v)
        for k, v in random_scene(12, 50, 16, 16, total=50, tile_capacity=32, dtype=np.float32).items()
    }

    def loss(opacities):
        img = composite(
            scene["means2d"],
            scene["conics"],
            opacities,
            scene["features"],
            scene["background"],
            scene["ids"],
            scene["counts"],
            16,
            16,
            RasterConfig(tile_capacity=32, chunk_size=CHUNK),
        )
        return jnp.sum(img)

    text = jax.jit(jax.grad(loss)).lower(scene["opacities"]).as_text()
    assert kb.TARGET_NAME in text
    assert RasterConfig(backward="custom").backward == "custom"  # the old name still works
    with pytest.raises(ValueError):
        RasterConfig(backward="cuda")


def test_kernel_rejects_inconsistent_shapes():
    cfg = RasterConfig(tile_capacity=32, chunk_size=CHUNK)
    res = residuals(random_scene(13, 50, 16, 16, total=50, tile_capacity=32, dtype=np.float32), cfg)
    wrong = RasterConfig(tile_size=8, tile_capacity=32, chunk_size=CHUNK)
    with pytest.raises(Exception, match="tile_size is 8"):
        jax.block_until_ready(kb.kernel_composite_backward(*res, wrong))


# ---------------------------------------------------------------------------------------------
# Build, cache and fallback


def test_cache_hit_does_not_compile(monkeypatch):
    plan = kernel_build.build_plan("cpu")
    assert plan.library.is_file()  # built by the module fixture

    def no_compiler(*args, **kwargs):
        raise AssertionError("a cache hit must not run the compiler")

    monkeypatch.setattr(kernel_build.subprocess, "run", no_compiler)
    assert kernel_build.build_kernel("cpu") == plan.library


def test_cache_key_follows_sources_and_flags(tmp_path, monkeypatch):
    src = tmp_path / "kernels"
    shutil.copytree(kernel_build.kernel_source_dir(), src)
    original = kernel_build.build_plan("cpu", src).library
    seen = {original}

    def assert_new_key():
        library = kernel_build.build_plan("cpu", src).library
        assert library not in seen
        seen.add(library)

    # Every input of the build is in the key: each source file, jaxlib (its FFI headers and ABI),
    # the compiler and the flags.
    for name in ("composite_backward_cpu.cc", "composite_backward.h", "composite_backward_ffi.h"):
        (src / name).write_text((src / name).read_text() + "\n// edited\n")
        assert_new_key()
    monkeypatch.setattr(kernel_build.jaxlib, "__version__", kernel_build.jaxlib.__version__ + ".post1")
    assert_new_key()
    other_compiler = tmp_path / "bin" / "c++"
    other_compiler.parent.mkdir()
    other_compiler.symlink_to(kernel_build._cxx())
    monkeypatch.setenv("ZEROHSI_JAX_CXX", str(other_compiler))
    assert_new_key()
    monkeypatch.setenv("ZEROHSI_JAX_CXXFLAGS", "-DZHSI_SOMETHING")
    assert_new_key()


def test_compile_error_reports_the_compiler_output(tmp_path, monkeypatch):
    src = tmp_path / "kernels"
    shutil.copytree(kernel_build.kernel_source_dir(), src)
    main = src / "composite_backward_cpu.cc"
    main.write_text("#error deliberately broken kernel\n" + main.read_text())
    monkeypatch.setenv("ZEROHSI_JAX_CACHE", str(tmp_path / "cache"))
    with pytest.raises(kernel_build.KernelBuildError, match="deliberately broken kernel"):
        kernel_build.build_kernel("cpu", source_dir=src)
    assert not list((tmp_path / "cache").rglob("*.so"))  # nothing half-built is left to load


def test_missing_compiler_is_an_error(monkeypatch):
    monkeypatch.setenv("ZEROHSI_JAX_CXX", "/nonexistent/zerohsi-c++")
    with pytest.raises(kernel_build.KernelBuildError, match="zerohsi-c\\+\\+"):
        kernel_build.build_plan("cpu")


_FALLBACK_SCRIPT = textwrap.dedent(
    """
    import json, warnings
    import jax, jax.numpy as jnp, numpy as np
    from zerohsi_jax.splat import composite, RasterConfig
    from zerohsi_jax.splat.kernel_backward import KernelUnavailableError

    rng = np.random.default_rng(0)
    n = 30
    means = jnp.asarray(rng.uniform(0, 16, (n, 2)), jnp.float32)
    conics = jnp.asarray(np.tile([0.3, 0.05, 0.2], (n, 1)), jnp.float32)
    feats = jnp.asarray(rng.uniform(0, 1, (n, 3)), jnp.float32)
    ids = jnp.asarray(np.arange(n)[None], jnp.int32)
    counts = jnp.asarray([n], jnp.int32)

    opacities = jnp.full((n,), 0.5, jnp.float32)

    def grads(backward, chunk=4):
        cfg = RasterConfig(tile_capacity=n, chunk_size=chunk, backward=backward)
        image = lambda o: composite(means, conics, o, feats, jnp.zeros(3), ids, counts, 16, 16, cfg)
        loss = lambda o: jnp.sum(image(o) ** 2)
        return np.asarray(jax.jit(jax.grad(loss))(opacities))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        auto = grads("auto")
        grads("auto", chunk=2)  # a second trace asks for the kernel again
    reference = grads("jax")
    try:
        grads("kernel")
        raised = ""
    except KernelUnavailableError as err:
        raised = str(err)
    ours = [str(w.message) for w in caught if "compiled compositing backward" in str(w.message)]
    print(json.dumps(dict(warnings=ours, max_diff=float(np.abs(auto - reference).max()), raised=raised)))
    """
)


def test_missing_compiler_falls_back_with_one_warning(tmp_path):
    env = dict(
        os.environ,
        ZEROHSI_JAX_CXX="/nonexistent/zerohsi-c++",
        ZEROHSI_JAX_CACHE=str(tmp_path),
        JAX_PLATFORMS="cpu",
    )
    proc = subprocess.run(
        [sys.executable, "-c", _FALLBACK_SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(report["warnings"]) == 1, report["warnings"]
    assert "/nonexistent/zerohsi-c++" in report["warnings"][0] and "pure-JAX" in report["warnings"][0]
    assert report["max_diff"] == 0.0  # the fallback is exactly the pure-JAX backward
    assert "unavailable on cpu" in report["raised"]
    assert not list(tmp_path.rglob("*.so"))


# ---------------------------------------------------------------------------------------------
# One-way dependencies: composite -> kernel_backward -> kernel_build, and no circle among splat's
# modules


def _splat_import_graph() -> dict[str, set[str]]:
    """Each module of zerohsi_jax.splat (its package __init__ aside) -> the splat modules it
    imports anywhere in its body, function-level imports included."""
    import ast

    package = Path(kb.__file__).parent
    graph = {}
    for path in sorted(package.glob("*.py")):
        if path.stem == "__init__":
            continue
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                targets |= {node.module} if node.module else {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("zerohsi_jax.splat."):
                targets.add(node.module.split(".")[2])
        graph[path.stem] = targets
    return graph


def test_splat_modules_import_one_way():
    graph = _splat_import_graph()
    assert {"composite", "kernel_backward", "kernel_build", "reference"} <= graph.keys()

    def reachable(start):
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    for module in graph:
        assert module not in reachable(module), f"import circle through zerohsi_jax.splat.{module}"
    assert "composite" not in reachable("kernel_backward") | reachable("kernel_build")
    assert "kernel_backward" in graph["composite"]


def test_kernel_backward_loads_without_composite():
    """Imported on its own (the package's __init__, which re-exports `composite`, stubbed out),
    the kernel's module pulls in no compositing code."""
    script = textwrap.dedent(
        """
        import sys, types
        from pathlib import Path
        import zerohsi_jax
        stub = types.ModuleType("zerohsi_jax.splat")
        stub.__path__ = [str(Path(zerohsi_jax.__file__).parent / "splat")]
        sys.modules["zerohsi_jax.splat"] = stub
        import zerohsi_jax.splat.kernel_backward
        print(sorted(m for m in sys.modules if m.startswith("zerohsi_jax.splat.")))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    loaded = proc.stdout.strip().splitlines()[-1]
    assert "kernel_backward" in loaded and "composite" not in loaded, loaded


# ---------------------------------------------------------------------------------------------
# CUDA


# The conftest runs the suite on the CPU and, where JAX can use a GPU, initialises CUDA as a
# second platform; these tests place their arrays on jax.devices("cuda") explicitly. Without a
# GPU (or nvcc) they skip with the reason; under ZEROHSI_REQUIRE_GPU=1 that skip is a failure.


@pytest.mark.cuda(device=False)
def test_cuda_source_compiles(tmp_path, monkeypatch):
    """The CUDA launcher builds against jaxlib's FFI headers (no GPU needed to compile)."""
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc is not installed: the CUDA source is not compiled")
    monkeypatch.setenv("ZEROHSI_JAX_CACHE", str(tmp_path))
    monkeypatch.setenv("ZEROHSI_JAX_CUDA_ARCH", "sm_90")
    library = kernel_build.build_kernel("cuda")
    assert library.is_file() and library.stat().st_size > 0
    symbols = subprocess.run(["nm", "-D", str(library)], capture_output=True, text=True).stdout
    assert "ZerohsiCompositeBackwardCuda" in symbols


@pytest.mark.cuda
def test_the_gpu_is_a_second_platform_beside_the_cpu():
    """Only the tests that ask for the GPU run there: the default backend stays the CPU."""
    assert jax.default_backend() == "cpu"
    x = jax.device_put(jnp.arange(4.0), jax.devices("cuda")[0])
    assert (x * 2).devices() == {jax.devices("cuda")[0]}
    assert jnp.ones(2).devices() == {jax.devices("cpu")[0]}


@pytest.mark.cuda
@pytest.mark.parametrize("dtype, tol", [(np.float32, F32), (np.float64, F64)])
def test_cuda_kernel_matches_jax_backward(dtype, tol):
    assert kb.load_kernel("cuda"), kb.kernel_status("cuda")
    gpu = jax.devices("cuda")[0]
    with jax.enable_x64(dtype == np.float64):
        for seed, (n, w, h, c, cap, opacity) in enumerate(
            [
                (300, 37, 29, 3, 96, (0.05, 0.99)),
                (400, 40, 40, 40, 12, (0.02, 0.3)),
                (400, 32, 32, 5, 128, (0.9, 0.99)),
            ]
        ):
            cfg = RasterConfig(tile_capacity=cap, chunk_size=CHUNK)
            scene = random_scene(seed, n, w, h, c, total=n, tile_capacity=cap, opacity=opacity, dtype=dtype)
            res = residuals(scene, cfg, seed)
            expected = _jax_backward(*res, cfg)
            got = jax.jit(kb.kernel_composite_backward, static_argnums=11)(*jax.device_put(res, gpu), cfg)
            for name, e, g in zip(GRADS, expected, got, strict=True):
                e, g = np.asarray(e), np.asarray(g)
                np.testing.assert_allclose(
                    g, e, rtol=tol["rtol"], atol=tol["atol"] * np.abs(e).max(), err_msg=name
                )
