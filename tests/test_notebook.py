"""notebooks/colab.ipynb runs top to bottom (install, ingest, train, chat, eval, GGUF export), on this CPU with
the embedded model and a few steps, its parameters cell replaced as papermill would."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "colab.ipynb"


@pytest.mark.slow
def test_colab_notebook_runs_top_to_bottom(embedded_home: Path, tmp_path: Path) -> None:
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    (params,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    params.source = (f'MODEL = "embedded"\nQUANTIZE = None\nMAX_STEPS = 2\nEVAL_LIMIT = 4\nEXPORT = None\n'
                     f'WORK = {str(tmp_path / "work")!r}\nSOURCE = None')
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    work = tmp_path / "work"
    assert (work / "clone" / "clone.json").is_file() and (work / "report" / "report.json").is_file()
    assert (work / "clone.gguf").stat().st_size > 10_000_000
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "running on cpu" in outputs and "> привет! как дела?" in outputs
