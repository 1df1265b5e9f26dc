"""Every notebook runs top to bottom with nbclient in the fast configuration, against a temporary results folder.

The notebooks make their data themselves when it is missing (AICP_NOTEBOOK_FAST=1
picks the smallest configuration), so this also exercises aicp.lab.datagen end to end,
including a short live ``aicp bench`` for notebook 03 and a recorded live run with an
agent killed for notebook 04.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell

from aicp.lab import plots
from aicp.lab import runs as aicp_results

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
#: notebook -> figures it must display (and save under <results>/plots/)
EXPECTED: dict[str, list[str]] = {
    "01_strategy_comparison": ["strategy_latency_baseline.png", "strategy_latency_heterogeneous.png", "sweep_p99_baseline.png"],
    "02_failure_replay": ["failure_timeline_crash_storm.png", "failure_timeline_flapping.png"],
    "03_live_benchmark": ["bench_latency_throughput.png"],
    "04_record_replay": ["record_replay_timeline.png", "record_replay_cdf.png"],
}

pytestmark = [pytest.mark.slow, pytest.mark.load, pytest.mark.timeout(110)]


@pytest.fixture(scope="module")
def fast_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One results folder for the whole module, so data one notebook made is not made twice."""
    return tmp_path_factory.mktemp("notebook-results")


def test_the_notebooks_are_there_and_saved_without_outputs() -> None:
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == sorted(EXPECTED)
    for path in NOTEBOOKS.glob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        assert nb.cells[0].cell_type == "markdown" and "**Question:**" in nb.cells[0].source, path.name
        assert "```" in nb.cells[0].source, f"{path.name}: the intro must show the command that reproduces the data"
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: saved with outputs; clear them"


@pytest.mark.parametrize("name", [pytest.param(n, marks=[pytest.mark.live] if "live" in n or "record" in n else []) for n in sorted(EXPECTED)])
def test_notebook_runs_without_errors(name: str, fast_results: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(aicp_results.RESULTS_ENV, str(fast_results))
    monkeypatch.setenv("AICP_NOTEBOOK_FAST", "1")
    path = NOTEBOOKS / f"{name}.ipynb"
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(new_code_cell("import sys\nprint(sys.executable)"))
    client = NotebookClient(nb, kernel_name="python3", timeout=100, resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()  # raises CellExecutionError on the first cell that fails

    kernel_python = "".join(o.get("text", "") for o in nb.cells[-1].outputs).strip()
    assert kernel_python == sys.executable, "the kernel must be this virtualenv's python"
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) == len(EXPECTED[name]), f"{name}: expected {len(EXPECTED[name])} figures, got {len(images)}"
    for png in EXPECTED[name]:
        saved = aicp_results.plots_dir(fast_results) / png
        assert saved.is_file() and saved.stat().st_size > 10_000, saved


def test_aicp_plots_makes_every_figure_and_reuses_the_data(fast_results: Path) -> None:
    """Whatever the notebooks left (or nothing, when run alone), two runs of ``aicp plots``: the second makes no data."""
    import matplotlib

    matplotlib.use("Agg")
    written, problems = plots.write_all(fast_results, generate=True, fast=True, say=lambda _: None)
    assert problems == []
    assert sorted(p.name for p in written) == sorted(png for pngs in EXPECTED.values() for png in pngs)
    runs_before = sorted(p for p in fast_results.rglob("summary.json"))
    written_again, problems = plots.write_all(fast_results, generate=True, fast=True, say=lambda _: None)
    assert problems == [] and written_again == written
    assert sorted(p for p in fast_results.rglob("summary.json")) == runs_before
