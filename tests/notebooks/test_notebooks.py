"""Execute every notebook (nbclient, kernel python3) with its defaults on a fresh folder and check
that it produced its figures. Parameters are injected papermill-style: a cell right after the one
tagged ``parameters`` overrides only where the outputs go."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
EXPECTED = {
    "compare_interventions.ipynb": ["overview", "loss", "delta_loss", "kl", "param_distance", "top1_agreement"],
    "intervention_study.ipynb": ["overview", "delta_loss", "kl", "study_final_delta_loss"],
    "lawa_study.ipynb": ["overview", "loss", "delta_loss", "task_toy_next_word", "task_toy_continuation"],
}


def inject(nb: nbformat.NotebookNode, values: dict[str, object]) -> nbformat.NotebookNode:
    idx = next(i for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", []))
    src = "# injected-parameters\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())
    cell = nbformat.v4.new_code_cell(src)
    cell.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(idx + 1, cell)
    return nb


def test_every_notebook_is_covered():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(EXPECTED)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory):
    """One work folder for both notebooks: the first builds the toy, the second reuses it. The
    kernels inherit BRANCHPOINT_CACHE, which keeps compare's file-hash memo out of ~/.cache."""
    root = tmp_path_factory.mktemp("notebooks")
    old = os.environ.get("BRANCHPOINT_CACHE")
    os.environ["BRANCHPOINT_CACHE"] = str(root / "hash-memo")
    yield root
    if old is None:
        os.environ.pop("BRANCHPOINT_CACHE", None)
    else:
        os.environ["BRANCHPOINT_CACHE"] = old


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_notebook_runs_and_writes_its_figures(name: str, work: Path):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged `parameters`"
    figures = work / "figures" / name.removesuffix(".ipynb")
    inject(nb, {"work_dir": str(work), "figures_dir": str(figures)})
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(work)}})
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    streams = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                      if o.output_type == "stream")
    assert "IProgress" not in streams  # no widget warning from the progress bars (checkpoints_cache.progress)
    for stem in EXPECTED[name]:
        png = figures / f"{stem}.png"
        assert png.is_file(), png
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    # The notebook displayed the overview figure inline.
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert images
