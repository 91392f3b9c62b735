"""Test session set-up: devices, seeds, and the environment flags that make CI strict.

Environment flags:
- ZEROHSI_TEST_SEED: unset runs the `seed` tests on the fixed list FIXED_SEEDS (CI is the same
  test every time); a number runs them on that seed; `random` on one fresh seed, printed.
- ZEROHSI_REQUIRE_PEERS=1 (set by .ci/run, which installs the peers): a skip of a `torch`-marked
  test (a peer comparison, a converter) is a failure.
- ZEROHSI_REQUIRE_GPU=1 (for the GPU suite): a skip of a `cuda`-marked test is a failure.
- ZEROHSI_TEST_FULL_OPT=1: compile at XLA's default backend optimisation level rather than at level 0
  (see `_fast_compiles`).
- ZEROHSI_TEST_XLA_CACHE: a folder for XLA's compiled programs that outlives the session (default: a
  fresh one per session, shared by the session's pytest-xdist workers, so that a program compiled
  again, after the memory-map release between modules, in another module or in the other worker,
  loads instead of compiling).
"""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


REQUIRE_PEERS = _flag("ZEROHSI_REQUIRE_PEERS")
REQUIRE_GPU = _flag("ZEROHSI_REQUIRE_GPU")


def _jax_cuda_plugins() -> list[str]:
    """The JAX CUDA plugins installed (jax[cuda12] and the like), found without importing JAX."""
    import importlib.metadata
    import importlib.util
    import pkgutil

    names = [ep.name for ep in importlib.metadata.entry_points(group="jax_plugins")]
    namespace = importlib.util.find_spec("jax_plugins")
    if namespace is not None and namespace.submodule_search_locations:
        names += [m.name for m in pkgutil.iter_modules(namespace.submodule_search_locations)]
    return sorted({n for n in names if "cuda" in n})


_CUDA_PROBE = """
import jax
try:
    print(len(jax.devices("cuda")))
except Exception as err:
    print(f"{type(err).__name__}: {err}".splitlines()[0])
    raise SystemExit(1)
"""


def _probe_cuda() -> tuple[bool, str]:
    """Whether JAX can use a CUDA device here, asked in a child process so that a broken driver or
    plugin cannot stop this one from starting. The probe runs only where an NVIDIA driver and a JAX
    CUDA plugin are installed, so CPU machines pay nothing for it."""
    if not (shutil.which("nvidia-smi") or Path("/dev/nvidiactl").exists()):
        return False, "no NVIDIA driver on this machine"
    if not _jax_cuda_plugins():
        return False, "no JAX CUDA plugin installed (pip install -e '.[cuda]')"
    env = dict(os.environ, JAX_PLATFORMS="cuda", XLA_PYTHON_CLIENT_PREALLOCATE="false")
    try:
        proc = subprocess.run([sys.executable, "-c", _CUDA_PROBE], env=env, capture_output=True, text=True,
                              timeout=300)
    except (OSError, subprocess.TimeoutExpired) as err:
        return False, f"probing JAX's CUDA backend failed: {err!r}"
    answer = proc.stdout.strip().splitlines()[-1:] or [proc.stderr.strip()[-300:] or "no output"]
    if proc.returncode != 0 or answer[0] == "0":
        return False, f"JAX cannot use the GPU: {answer[0]}"
    return True, ""


# The suite runs on the CPU: deterministic results and a fixed thread budget. Where JAX can also
# use a GPU, it is initialised second ("cpu,cuda": the first platform listed is JAX's default
# backend), so every test still runs on the CPU unless it places its arrays on jax.devices("cuda")
# itself, as the `cuda`-marked tests do. An explicit JAX_PLATFORMS is respected.
if "JAX_PLATFORMS" in os.environ:
    _platforms = [p.strip() for p in os.environ["JAX_PLATFORMS"].split(",")]
    CUDA_AVAILABLE = "cuda" in _platforms
    CUDA_REASON = "" if CUDA_AVAILABLE else f"JAX_PLATFORMS={os.environ['JAX_PLATFORMS']} leaves out cuda"
else:
    CUDA_AVAILABLE, CUDA_REASON = _probe_cuda()
    os.environ["JAX_PLATFORMS"] = "cpu,cuda" if CUDA_AVAILABLE else "cpu"
if CUDA_AVAILABLE:
    # Grow GPU memory as needed rather than reserving 75% of it at start (XLA's default).
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


def _fast_compiles() -> None:
    """Compile the session's programs with LLVM at level 0 (XLA_FLAGS, which the test's child
    processes inherit). The suite compiles far more than it runs (in one pipeline test 99 s of
    XLA compilation to a few seconds of execution), and most of a CPU compilation is LLVM
    optimising machine code: the HSI lever tests took 396 -> 280 s. The HLO, its fusions and its
    buffers are XLA's at either level and LLVM does not reassociate floating point without fast
    math (off), so values agree to round-off (fused multiply-adds; experiments/bench/cost_model.py
    measured one pair in 1.8M at the paper's scale). An XLA_FLAGS that sets the level is kept;
    ZEROHSI_TEST_FULL_OPT=1 runs the suite at XLA's default."""
    flags = os.environ.get("XLA_FLAGS", "")
    if not _flag("ZEROHSI_TEST_FULL_OPT") and "xla_backend_optimization_level" not in flags:
        os.environ["XLA_FLAGS"] = (flags + " --xla_backend_optimization_level=0").strip()


_fast_compiles()

import jax  # noqa: E402

from zerohsi_jax.cache import enable_compilation_cache  # noqa: E402


def _session_xla_cache() -> str:
    """A folder for the session's compiled programs. Under pytest-xdist every worker of one run uses
    the same folder (named by the run's id), so a program one worker compiled loads in the other."""
    run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if not run_id:
        return tempfile.mkdtemp(prefix="zerohsi-xla-")
    folder = Path(tempfile.gettempdir()) / f"zerohsi-xla-{run_id}"
    folder.mkdir(exist_ok=True)
    return str(folder)


_XLA_CACHE = os.environ.get("ZEROHSI_TEST_XLA_CACHE") or _session_xla_cache()
enable_compilation_cache(_XLA_CACHE, min_compile_seconds=0.5)


def _has(module: str) -> bool:
    try:
        __import__(module)
        return True
    except Exception:
        return False


HAS_TORCH = _has("torch")

# The seeds every `seed` test runs on by default (see the module docstring). Two: each seed costs
# the seeded tests about 100 s of the suite on 2 cores (most of them compile per seed).
FIXED_SEEDS = (0, 1)


def _test_seeds() -> tuple[int, ...]:
    value = os.environ.get("ZEROHSI_TEST_SEED", "").strip().lower()
    if not value:
        return FIXED_SEEDS
    if value == "random":
        return (int.from_bytes(os.urandom(4), "little"),)
    try:
        return (int(value),)
    except ValueError:
        raise ValueError(f"ZEROHSI_TEST_SEED={value!r}: give a number, 'random', or leave it unset") from None


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow(seconds): an end-to-end check that takes about `seconds` on 2 cores (with the fixtures it "
        "is the first to need); the modules with the most such time run first (see _slow_modules_first)"
    )  # fmt: skip
    config.addinivalue_line(
        "markers", "cuda(device=True): needs a CUDA device JAX can use (device=False: nvcc only); skipped "
        "without one, a failure with ZEROHSI_REQUIRE_GPU=1"
    )  # fmt: skip


def pytest_report_header(config):
    gpu = "GPU: cuda tests run on jax.devices('cuda')" if CUDA_AVAILABLE else f"GPU: none ({CUDA_REASON})"
    return [
        f"JAX_PLATFORMS={os.environ['JAX_PLATFORMS']} (default backend: {jax.default_backend()}); {gpu}",
        f"seeds: {', '.join(map(str, _test_seeds()))}; ZEROHSI_REQUIRE_PEERS={int(REQUIRE_PEERS)}, "
        f"ZEROHSI_REQUIRE_GPU={int(REQUIRE_GPU)}; XLA program cache: {_XLA_CACHE}",
    ]


def pytest_collection_modifyitems(config, items):
    no_torch = pytest.mark.skip(
        reason="needs the torch extra (pip install -e '.[torch]'): peer implementation or converter"
    )
    no_cuda = pytest.mark.skip(reason=f"needs a CUDA device JAX can use: {CUDA_REASON}")
    for item in items:
        if item.get_closest_marker("torch") is not None and not HAS_TORCH:
            item.add_marker(no_torch)
        cuda = item.get_closest_marker("cuda")
        # cuda(device=False): builds CUDA code with nvcc but runs nothing on a GPU (it skips itself
        # where nvcc is missing).
        if cuda is not None and cuda.kwargs.get("device", True) and not CUDA_AVAILABLE:
            item.add_marker(no_cuda)
    _slow_modules_first(items)


def _slow_seconds(item) -> float:
    mark = item.get_closest_marker("slow")
    if mark is None:
        return 0.0
    return float(mark.kwargs.get("seconds", mark.args[0] if mark.args else 60.0))


def _slow_modules_first(items):
    """The modules with the most `slow(seconds=...)` time first, each kept whole and in its order.
    pytest-xdist hands each worker a contiguous block of this list and a worker that runs dry takes
    tests from the far end of the other's queue, so a slow test listed late could start last and
    leave the other worker idle until it ends (measured: 10 min of a 58 min run). Whole modules, so
    that a module's fixtures are still built once per worker."""
    weight: dict[str, float] = {}
    for item in items:
        weight[item.nodeid.split("::")[0]] = weight.get(item.nodeid.split("::")[0], 0.0) + _slow_seconds(item)
    order = {id(item): i for i, item in enumerate(items)}
    items.sort(key=lambda item: (-weight[item.nodeid.split("::")[0]], order[id(item)]))


def _required(item) -> str | None:
    """The flag under which a skip of `item` is a failure, if any."""
    if REQUIRE_PEERS and item.get_closest_marker("torch") is not None:
        return "ZEROHSI_REQUIRE_PEERS=1 (the peer packages are installed, so peer comparisons must run)"
    if REQUIRE_GPU and item.get_closest_marker("cuda") is not None:
        return "ZEROHSI_REQUIRE_GPU=1 (the GPU suite must run the CUDA tests)"
    return None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Under ZEROHSI_REQUIRE_PEERS / ZEROHSI_REQUIRE_GPU a skipped peer or CUDA test fails, with the
    skip's reason; every other skip (a test that names another missing need) stays a skip."""
    report = yield
    flag = _required(item)
    if flag and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under {flag}: {reason}"
    return report


@pytest.fixture(scope="module", autouse=True)
def _stay_under_the_memory_map_limit():
    """A whole session compiles thousands of programs; past 40% of vm.max_map_count
    their cached machine code is dropped between modules (see zerohsi_jax.compiled_memory)."""
    yield
    from zerohsi_jax.compiled_memory import release_if_near_limit

    release_if_near_limit(0.4)


@pytest.fixture
def x64():
    """Run the test body with 64-bit floats enabled (float64 references, finite differences)."""
    with jax.enable_x64(True):
        yield


@pytest.fixture(scope="session")
def tiny_demo():
    """The demo problem at its smallest (3 frames at 40x40, a 600-Gaussian avatar): shared by the
    pipeline tests so that its assets are built and its programs compiled once per session."""
    from zerohsi_jax.synthetic.instances import build_demo_scene

    return build_demo_scene(3, 40, avatar_gaussians=600, avatar_size="tiny", room_spacing=0.3, object_spacing=0.07)


@pytest.fixture(params=_test_seeds(), ids=lambda s: f"seed{s}")
def seed(request):
    """Each seed of the run's list (FIXED_SEEDS unless ZEROHSI_TEST_SEED says otherwise); printed so
    that a failure names it."""
    print(f"{request.node.name}: seed={request.param} (replay with ZEROHSI_TEST_SEED={request.param})")
    return request.param
