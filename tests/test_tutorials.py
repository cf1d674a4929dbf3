"""The tutorials in docs/tutorials run top to bottom, and the published copies are full runs.

Each notebook is executed in its smoke form (``CI=1``: its first code cell shrinks epochs and
points) in a fresh folder, so a notebook writes nothing into the checkout, and any error fails
with the cell that raised it. The committed notebook is checked without running it: it carries
the outputs of a full run (``smoke_test = False``), in order, without an error.
"""

import os
import re
from pathlib import Path

import pytest

# executing notebooks needs the test extra's nbclient (a bare GPU box may lack it)
nbclient = pytest.importorskip("nbclient", reason='pip install -e ".[test]"')
nbformat = pytest.importorskip("nbformat", reason='pip install -e ".[test]"')

TUTORIALS = Path(__file__).resolve().parent.parent / "docs" / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))
IDS = [path.stem for path in NOTEBOOKS]
CELL_TIMEOUT = 300  # seconds; a hung cell fails instead of stalling the suite


def code_cells(notebook) -> list:
    """The code cells of a notebook, in order."""
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def output_text(cell) -> str:
    """What a code cell printed or displayed as text."""
    parts = []
    for out in cell.get("outputs", []):
        if out.output_type == "stream":
            parts.append(out.get("text", ""))
        else:
            parts.append(str(out.get("data", {}).get("text/plain", "")))
    return "".join(parts)


def test_tutorials_are_found():
    assert len(NOTEBOOKS) >= 3, f"expected the tutorials in {TUTORIALS}, found {IDS}"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_runs_in_smoke_form(path, tmp_path):
    notebook = nbformat.read(path, as_version=4)
    env = dict(os.environ, CI="1")
    client = nbclient.NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    try:
        client.execute(env=env, cwd=str(tmp_path))
    except nbclient.exceptions.CellExecutionError as error:
        plain = re.sub(r"\x1b\[[0-9;]*m", "", str(error))  # the traceback without its colours
        pytest.fail(f"{path.name} failed in its smoke form:\n{plain}", pytrace=False)
    first = output_text(code_cells(notebook)[0])
    assert "smoke_test = True" in first, f"{path.name}: the first code cell must print smoke_test"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_committed_notebook_is_a_full_run(path):
    notebook = nbformat.read(path, as_version=4)
    cells = code_cells(notebook)
    assert cells, f"{path.name} has no code cell"
    assert "smoke_test = False" in output_text(cells[0]), (
        f"{path.name}: the committed copy must be the full run (its first code cell prints "
        "smoke_test = False); execute it with CI unset"
    )
    counts = [cell.get("execution_count") for cell in cells]
    assert counts == list(range(1, len(cells) + 1)), (
        f"{path.name}: execution counts {counts} are not 1..{len(cells)}: run it top to bottom "
        "in a fresh kernel"
    )
    for number, cell in enumerate(cells, 1):
        errors = [out for out in cell.get("outputs", []) if out.output_type == "error"]
        assert not errors, f"{path.name}: code cell {number} holds an error output"
    assert any(cell.get("outputs") for cell in cells), f"{path.name} has no outputs"
    text = nbformat.writes(notebook)
    leaked = re.findall(r"/(?:work|home|tmp|root|usr)/[^\s\"'\\]+", text)
    assert not leaked, f"{path.name}: outputs name paths outside the repository: {leaked[:3]}"
