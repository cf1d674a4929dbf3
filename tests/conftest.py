import pyro
import pytest
import torch

# One CPU thread per test process: the suite stays fast when other processes share the cores
# (several OpenMP threads per process oversubscribe them; see docs/design.md).
torch.set_num_threads(1)


def pytest_configure(config):
    # pytest-xdist registers it too; without xdist (-p no:xdist) the mark is still known
    config.addinivalue_line("markers", "xdist_group(name): run on one pytest-xdist worker")


def _is_slow(item):
    return item.get_closest_marker("slow") is not None


def _module_fixture_users(item):
    """Whether ``item`` uses a fixture built once per module (a trained run, the docs site)."""
    info = getattr(item, "_fixtureinfo", None)  # absent from items that are not functions
    if info is None:
        return False
    scopes = {defs[-1].scope for defs in info.name2fixturedefs.values() if defs}
    return bool(scopes & {"module", "class", "package"})


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own hook reads the xdist_group marks
def pytest_collection_modifyitems(items):
    """Long tests first, so that the two pytest-xdist workers end on short ones together.

    Modules with more ``slow`` tests come first and, inside a module, its slow tests; a
    module's tests stay together (its module-scoped fixtures are built once per worker).
    Both sorts are stable: otherwise the collection's order. The tests of a module that use
    one of its module-scoped fixtures form one ``xdist_group``: under ``--dist loadgroup``
    one worker runs them all and builds the fixture once (under plain ``-n``, each worker
    that gets one of them builds it).
    """
    for item in items:
        if _module_fixture_users(item):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))
    module = {item: item.nodeid.split("::")[0] for item in items}
    slow_count, first = {}, {}
    for position, item in enumerate(items):
        slow_count[module[item]] = slow_count.get(module[item], 0) + _is_slow(item)
        first.setdefault(module[item], position)
    items.sort(
        key=lambda item: (-slow_count[module[item]], first[module[item]], not _is_slow(item))
    )


@pytest.fixture(autouse=True)
def fresh_pyro():
    """Every test starts with an empty param store, a fixed seed and one CPU thread."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()
    torch.set_num_threads(1)  # a script or CLI run inside a test may have set another count


@pytest.fixture(autouse=True)
def step_costs(tmp_path_factory, monkeypatch):
    """Every test remembers its training steps' costs in a folder of its own (compile/warm.py),
    so that what another test measured never changes the advice and notices a run prints
    (compile="auto" itself never reads them: tests/test_train.py pins it); outside
    ``tmp_path``, which tests compare before and after a command."""
    folder = tmp_path_factory.mktemp("step_costs")
    monkeypatch.setenv("PYRO_VAE_STEP_COSTS", str(folder))
    return folder


@pytest.fixture
def float64():
    """Statistical checks run in float64 (docs/design.md); restored afterwards."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield torch.float64
    torch.set_default_dtype(old)


@pytest.fixture(scope="session")
def mnist():
    """MNIST-5k, statically binarized (seed 0); read-only, shared by every test module."""
    from pyro_vae.data import load_dataset

    return load_dataset("mnist5k", binarize="static", seed=0)
