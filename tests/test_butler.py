"""shapepipe_butler ingest: the products of a GOLD run on tiny in a real LSST data butler.

Needs the optional extra ``.[butler]`` (lsst-daf-butler); CI installs it and
sets SHAPEPIPE_REQUIRE_BUTLER, so there the test fails instead of skipping.
"""

import os
from collections import Counter

import numpy as np
import pytest

if os.environ.get("SHAPEPIPE_REQUIRE_BUTLER"):
    import lsst.daf.butler  # noqa: F401  (must be installed where CI runs)
else:
    pytest.importorskip("lsst.daf.butler")

from shapepipe import Repository


def _datasets_per_type(butler):
    from shapepipe_modules.butler.ingest import LATEST

    chain = butler.registry.getCollectionChain(LATEST)
    refs = set()
    for dataset_type in butler.registry.queryDatasetTypes():
        refs.update(butler.registry.queryDatasets(dataset_type, collections=list(chain)))
    return refs


def test_ingest_matches_the_repository(tiny_gold_run, tmp_path):
    from lsst.daf.butler import Butler

    from shapepipe_modules.butler.cli import main
    from shapepipe_modules.butler.ingest import run_collection

    root = tmp_path / "butler"
    assert main(["ingest", str(tiny_gold_run), str(root)]) == 0
    repo = Repository(tiny_gold_run)
    butler = Butler.from_config(str(root))
    refs = _datasets_per_type(butler)

    # Same number of datasets per type: a butler type is the ShapePipe type, or
    # <type>_<id scheme>[_<extra key value>] for types with several key sets or extra keys.
    expected = repo.counts()
    names = sorted(expected, key=len, reverse=True)
    per_type = Counter()
    for ref in refs:
        butler_type = ref.datasetType.name
        per_type[next(n for n in names if butler_type == n or butler_type.startswith(n + "_"))] += 1
    assert dict(per_type) == expected
    assert sum(expected.values()) == len(refs) > 100

    # Files registered in place, one RUN collection per ShapePipe run.
    tile = repo.find("sexcat", tile="244.252")
    uri = butler.getURI("sexcat_tile", skymap="cfis_tiles", tract=244, patch=252,
                        collections=run_collection(tile.run))
    assert uri.ospath == str(tile.path.resolve())

    # Butler.get of a catalogue equals Repository.get of it (tile and CCD catalogues, the final catalogue).
    for butler_type, data_id, dataset, ours in (
            ("sexcat_tile", dict(skymap="cfis_tiles", tract=244, patch=252), "sexcat", dict(tile="244.252")),
            ("sexcat_exposure_ccd", dict(instrument="MegaPrime", exposure=2100002, detector=1), "sexcat",
             dict(exposure=2100002, ccd=1)),
            ("final_cat", dict(skymap="cfis_tiles", tract=244, patch=252), "final_cat", dict(tile="244.252"))):
        got = butler.get(butler_type, data_id, collections="shapepipe/latest")
        expected_table = repo.get(dataset, **ours)
        assert got.colnames == expected_table.colnames and len(got) == len(expected_table) > 0
        for name in got.colnames:
            assert np.array_equal(np.asarray(got[name]), np.asarray(expected_table[name]), equal_nan=
                                  np.asarray(got[name]).dtype.kind == "f"), name
    psf = butler.get("psf", instrument="MegaPrime", exposure=2100001, detector=0, collections="shapepipe/latest")
    assert np.array_equal(psf.evaluate(50.0, 60.0), repo.get("psf", exposure=2100001, ccd=0).evaluate(50.0, 60.0))
    record = next(iter(butler.registry.queryDimensionRecords("exposure", instrument="MegaPrime", exposure=2100001)))
    assert record.physical_filter == "r.MP9602" and record.exposure_time == 200.0

    # Ingesting again registers nothing twice.
    assert main(["ingest", str(tiny_gold_run), str(root)]) == 0
    assert _datasets_per_type(Butler.from_config(str(root))) == refs
