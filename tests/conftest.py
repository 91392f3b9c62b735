import os

# Tests run on the CPU with a fixed thread budget; the GPU, when present, is for benchmarks.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402


def _has(module: str) -> bool:
    try:
        __import__(module)
        return True
    except Exception:
        return False


HAS_TORCH = _has("torch")


def pytest_collection_modifyitems(config, items):
    if HAS_TORCH:
        return
    skip = pytest.mark.skip(
        reason="needs the torch extra (pip install -e '.[torch]'): peer implementation or converter"
    )
    for item in items:
        if "torch" in item.keywords:
            item.add_marker(skip)


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
    from zerohsi_jax.demo import build_demo_scene

    return build_demo_scene(3, 40, avatar_gaussians=600, avatar_size="tiny", room_spacing=0.3, object_spacing=0.07)


@pytest.fixture
def seed(request):
    """A fresh seed per run (set ZEROHSI_TEST_SEED to replay one); printed so a failure names it."""
    value = int(os.environ.get("ZEROHSI_TEST_SEED", int.from_bytes(os.urandom(4), "little")))
    print(f"{request.node.name}: seed={value} (replay with ZEROHSI_TEST_SEED={value})")
    return value
