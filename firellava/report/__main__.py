"""`python -m firellava.report [SUMMARY_JSON]` (make notebooks): run the notebooks on a pipeline run's outputs
(default outputs/demo/summary.json) and write them, with their outputs, beside it under `notebooks/`. The stored
notebooks in notebooks/ stay without outputs."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from firellava.report.run import REPO, SUMMARY_ENV, load_summary, summary_path

log = logging.getLogger("firellava.report")
NOTEBOOKS = REPO / "notebooks"
NEEDS = {
    "toy_world": ("toy_world",),
    "data": ("datagen", "mix"),
    "results": ("eval",),
}  # summary entries read


def run_notebooks(summary: Path, out_dir: Path, names: list[str] | None = None) -> list[Path]:
    import nbformat
    from nbclient import NotebookClient

    available = load_summary(summary)
    os.environ[SUMMARY_ENV] = str(summary.resolve())
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        if names and path.stem not in names:
            continue
        missing = [stage for stage in NEEDS.get(path.stem, ()) if stage not in available]
        if missing:
            log.info("%s: skipped, %s has no entry for %s", path.name, summary, ", ".join(missing))
            continue
        nb = nbformat.read(path, as_version=4)
        NotebookClient(
            nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
        ).execute()
        nbformat.write(nb, out_dir / path.name)
        written.append(out_dir / path.name)
        log.info("%s -> %s", path.name, out_dir / path.name)
    return written


def main(argv: list[str]) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    summary = Path(argv[0]) if argv else summary_path()
    run_notebooks(summary, summary.parent / "notebooks")


if __name__ == "__main__":
    main(sys.argv[1:])
