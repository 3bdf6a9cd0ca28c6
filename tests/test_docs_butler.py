"""The example of docs/butler.md runs as written on a tiny GOLD run."""

import re
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "butler.md"


def run_page(output_dir) -> dict:
    """Execute the page's ``python`` blocks in order in one namespace; return it."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) >= 3
    namespace = {"OUTPUT_DIR": Path(output_dir)}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), namespace)
    return namespace


def test_butler_page_example(tiny_gold_run, capsys):
    from astropy.table import Table

    names = run_page(tiny_gold_run)
    out = capsys.readouterr().out
    final = Table.read(next(tiny_gold_run.glob("run_sp_Mc_*/make_catalog/output/final_cat-244-252.fits")))
    assert names["tile"] == "244.252" and len(names["catalogue"]) == len(final)
    assert f"244.252 {len(final)} objects in final_cat-244-252.fits" in out
    assert (tiny_gold_run / "tile_objects.png").stat().st_size > 10_000
    assert abs(names["stamp"].sum() - 1) < 1e-9
    assert names["header"]["FILTER"] == "r.MP9602"
    (tiny_gold_run / "tile_objects.png").unlink()
