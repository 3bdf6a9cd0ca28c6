"""merge_starcat: psfinterp VALIDATION catalogues merged with exposure and CCD columns."""

import logging
import tempfile
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table

from shapepipe.errors import JobError
from shapepipe.job import Job
from shapepipe_modules.io.ldac import read_ldac, write_ldac
from shapepipe_modules.merge_starcat.merge import REQUIRED, split_number
from shapepipe_modules.merge_starcat.runner import merge_starcat
from shapepipe_modules.psfinterp.synthetic import ccd_header


def validation_table(rng, count, ccd):
    table = Table({name: rng.normal(0, 0.01, count) for name in REQUIRED})
    table["NUMBER"] = np.arange(1, count + 1, dtype=np.int32)
    table["X"] = rng.uniform(1, 256, count)
    table["SIGMA_STAR_HSM"] = np.full(count, 2.0 + 0.1 * ccd)
    for name in ("FLAG_PSF_HSM", "FLAG_STAR_HSM", "ACCEPTED"):
        table[name] = np.zeros(count, dtype=np.int16)
    table["PSF_FLAG"] = np.zeros(count, dtype=np.int16)
    return table


def make_job(tmp_path, input_table, **options):
    from shapepipe_modules.merge_starcat.runner import OPTIONS

    output = Path(tempfile.mkdtemp(prefix="out", dir=tmp_path))
    values = {option.name: option.default for option in OPTIONS}
    values.update(options)
    return Job(module="merge_starcat", module_run="merge_starcat", number="",
               inputs=[p for paths in input_table.values() for p in paths], input_table=input_table,
               output_dir=output, log_dir=tmp_path, options=values,
               logger=logging.getLogger("test_merge_starcat"), run_dir=tmp_path)


def test_split_number():
    assert split_number("-2113737-12") == ("2113737", 12)
    with pytest.raises(ValueError, match="not -<exposure>-<ccd>"):
        split_number("-244-252-1x")


def test_merge(tmp_path):
    rng = np.random.default_rng(1)
    input_table, expected = {}, []
    for exposure in ("2113737", "2113840"):
        for ccd, count in ((0, 5), (11, 7)):
            number = f"-{exposure}-{ccd}"
            path = tmp_path / f"validation_psf{number}.fits"
            table = validation_table(rng, count, ccd)
            write_ldac(path, table, ccd_header(0))
            input_table[number] = [path]
            expected.append((exposure, ccd, table))
    job = make_job(tmp_path, input_table)
    assert merge_starcat(job) == {"stars": 24, "catalogues": 4, "exposures": 2}
    merged, header = read_ldac(job.output_dir / "full_starcat-0000000.fits")
    assert header["NCATS"] == 4 and len(merged) == 24
    start = 0
    for exposure, ccd, table in expected:
        rows = merged[start:start + len(table)]
        assert (rows["EXP_NAME"] == exposure).all() and (rows["CCD_NB"] == ccd).all()
        np.testing.assert_array_equal(rows["X"], table["X"])
        np.testing.assert_array_equal(rows["SIGMA_STAR_HSM"], table["SIGMA_STAR_HSM"])
        start += len(table)


def test_merge_names_bad_file(tmp_path):
    path = tmp_path / "validation_psf-2113737-1.fits"
    write_ldac(path, Table({"NUMBER": [1], "X": [2.0]}), ccd_header(0))
    with pytest.raises(JobError, match="validation_psf-2113737-1.fits: missing column"):
        merge_starcat(make_job(tmp_path, {"-2113737-1": [path]}))


def test_merge_setools_star_selections_from_an_hdu(tmp_path):
    """PSF_MODEL = setools: any columns (those every catalogue has), read from HDU."""
    from astropy.io import fits

    input_table = {}
    for ccd, count in ((3, 4), (7, 6)):
        number = f"-2113737-{ccd}"
        path = tmp_path / f"star_selection{number}.fits"
        columns = {"X_WORLD": np.arange(count, dtype=float) + ccd, "MAG": np.full(count, 20.0 + ccd)}
        if ccd == 7:
            columns["EXTRA"] = np.zeros(count)
        fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU(Table(columns))]).writeto(path)
        input_table[number] = [path]
    job = make_job(tmp_path, input_table, PSF_MODEL="setools", HDU=1)
    assert merge_starcat(job) == {"stars": 10, "catalogues": 2, "exposures": 1}
    merged, _ = read_ldac(job.output_dir / "full_starcat-0000000.fits")
    assert set(merged.colnames) == {"X_WORLD", "MAG", "EXP_NAME", "CCD_NB"}
    np.testing.assert_array_equal(merged["CCD_NB"], [3] * 4 + [7] * 6)
    np.testing.assert_array_equal(merged["MAG"], [23.0] * 4 + [27.0] * 6)
    with pytest.raises(JobError, match="HDU 3 is not a table"):
        merge_starcat(make_job(tmp_path, input_table, PSF_MODEL="setools", HDU=3))
