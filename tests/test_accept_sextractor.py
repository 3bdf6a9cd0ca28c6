"""Acceptance (issue 4): the sep engine against the SExtractor binary on the
simulated ``tiny`` CCDs, and the completeness of both against the truth.

Both engines run the sextractor module with its default exposure
configuration on the CCD files written by split_exp (image, weight, flag).
"""

import shutil

import numpy as np
import pytest
from astropy.table import Table
from scipy.spatial import cKDTree

from conftest import extract_ccds
from shapepipe_modules.io.ldac import read_ldac

#: Magnitude bins of the completeness table.
MAG_EDGES = np.array([14.0, 18.0, 19.0, 20.0, 21.0, 22.0, 23.0, 24.0, 25.5])
#: A truth object is found when a detection lies within this distance (pixels).
FOUND_RADIUS = 1.5
#: Truth objects closer than this to a CCD edge (pixels) are left out of the
#: completeness: half of them is off the CCD and the centroid moves inward.
EDGE = 2.0
#: Pixel scale of the simulation, arcsec.
PIXEL_SCALE = 0.187


def _columns(table, names):
    return {name: np.asarray(table[name]) for name in names}


def compare_engines(sim_dir, sep_catalogues, binary_catalogues):
    """Measured agreement of the two engines over all CCDs.

    Returns
    -------
    dict
        ``matched_fraction`` (binary detections with SNR_WIN > 10 that sep
        detects within 0.5 pixel), ``median_dmag`` (sep - binary MAG_AUTO of
        matched objects), ``flags_agree`` (fraction of matched objects with
        equal FLAGS), ``fwhm_ratio`` (median sep / binary FWHM_IMAGE of
        truth stars, unflagged, unsaturated, SNR_WIN > 20), ``fwhm_truth``
        (median binary FWHM_IMAGE over the true FWHM of those stars),
        ``n_stars``, ``n_bright``, and ``per_ccd`` rows of the same numbers.
    """
    names = ["X_IMAGE", "Y_IMAGE", "MAG_AUTO", "FLAGS", "FWHM_IMAGE", "SNR_WIN"]
    total_bright = total_matched = 0
    dmag, flags_equal, fwhm_ratio, fwhm_truth, per_ccd = [], [], [], [], []
    for key in sorted(binary_catalogues):
        exposure, ccd = key
        sep = _columns(read_ldac(sep_catalogues[key])[0], names)
        binary = _columns(read_ldac(binary_catalogues[key])[0], names)
        distance, index = cKDTree(np.c_[sep["X_IMAGE"], sep["Y_IMAGE"]]).query(
            np.c_[binary["X_IMAGE"], binary["Y_IMAGE"]])
        matched = distance < 0.5
        bright = binary["SNR_WIN"] > 10
        total_bright += int(bright.sum())
        total_matched += int((matched & bright).sum())
        pair = index[matched]
        these_dmag = sep["MAG_AUTO"][pair] - binary["MAG_AUTO"][matched]
        these_flags = sep["FLAGS"][pair] == binary["FLAGS"][matched]
        dmag.append(these_dmag)
        flags_equal.append(these_flags)

        truth = Table.read(sim_dir / "truth" / f"truth_exp-{exposure}.fits")
        truth = truth[truth["ccd"] == ccd]
        tdist, tindex = cKDTree(np.c_[truth["x"], truth["y"]]).query(
            np.c_[binary["X_IMAGE"][matched], binary["Y_IMAGE"][matched]])
        star = ((tdist < 1.0) & np.asarray(truth["is_star"])[tindex] & ~np.asarray(truth["saturated"])[tindex]
                & (binary["FLAGS"][matched] == 0) & (sep["FLAGS"][pair] == 0) & (binary["SNR_WIN"][matched] > 20))
        ratio = sep["FWHM_IMAGE"][pair][star] / binary["FWHM_IMAGE"][matched][star]
        true_fwhm = np.asarray(truth["psf_fwhm"])[tindex][star] / PIXEL_SCALE
        fwhm_ratio.append(ratio)
        fwhm_truth.append(binary["FWHM_IMAGE"][matched][star] / true_fwhm)
        per_ccd.append({"ccd": f"{exposure}-{ccd}", "n_bright": int(bright.sum()),
                        "matched_fraction": float((matched & bright).sum() / max(bright.sum(), 1)),
                        "median_dmag": float(np.median(these_dmag)), "flags_agree": float(these_flags.mean()),
                        "fwhm_ratio": float(np.median(ratio)) if ratio.size else np.nan, "n_stars": int(ratio.size)})
    fwhm_ratio = np.concatenate(fwhm_ratio)
    return {
        "matched_fraction": total_matched / total_bright,
        "n_bright": total_bright,
        "median_dmag": float(np.median(np.concatenate(dmag))),
        "flags_agree": float(np.concatenate(flags_equal).mean()),
        "fwhm_ratio": float(np.median(fwhm_ratio)),
        "fwhm_truth": float(np.median(np.concatenate(fwhm_truth))),
        "n_stars": int(fwhm_ratio.size),
        "per_ccd": per_ccd,
    }


def completeness(sim_dir, catalogues, edges=MAG_EDGES):
    """Fraction of truth objects detected per magnitude bin, over all CCDs.

    Truth objects within :data:`EDGE` pixels of a CCD edge are left out;
    blended neighbours and objects on the bad column count as missed when
    no detection lies within :data:`FOUND_RADIUS`.

    Returns
    -------
    fraction : ndarray (n_bins + 1,)
        Per bin (NaN for an empty bin), then all objects brighter than 22.
    counts : ndarray (n_bins + 1,)
        Truth objects per bin, then brighter than 22.
    """
    from conftest import ccd_shape

    nx, ny = ccd_shape(sim_dir)
    found, mags = [], []
    for (exposure, ccd), path in sorted(catalogues.items()):
        table = read_ldac(path)[0]
        truth = Table.read(sim_dir / "truth" / f"truth_exp-{exposure}.fits")
        x, y = np.asarray(truth["x"]), np.asarray(truth["y"])
        inside = (x > 0.5 + EDGE) & (x < nx + 0.5 - EDGE) & (y > 0.5 + EDGE) & (y < ny + 0.5 - EDGE)
        truth = truth[(truth["ccd"] == ccd) & inside]
        distance, _ = cKDTree(np.c_[table["X_IMAGE"], table["Y_IMAGE"]]).query(np.c_[truth["x"], truth["y"]])
        found.append(distance < FOUND_RADIUS)
        mags.append(np.asarray(truth["mag"]))
    found, mags = np.concatenate(found), np.concatenate(mags)
    which = np.digitize(mags, edges) - 1
    counts = np.bincount(which[(which >= 0) & (which < len(edges) - 1)], minlength=len(edges) - 1)
    fraction = [found[which == k].mean() if counts[k] else np.nan for k in range(len(edges) - 1)]
    bright = mags < 22.0
    return np.array(fraction + [found[bright].mean()]), np.append(counts, bright.sum())


def completeness_table(rows, edges=MAG_EDGES) -> str:
    """Text table of completeness per bin: ``rows = {engine: (fraction, counts)}``."""
    engines = list(rows)
    lines = ["mag bin      n_truth  " + "  ".join(f"{e:>10s}" for e in engines)]
    counts = rows[engines[0]][1]
    labels = [f"{edges[k]:4.1f}-{edges[k + 1]:4.1f}" for k in range(len(edges) - 1)] + ["    < 22.0"]
    for k, label in enumerate(labels):
        values = "  ".join(f"{rows[e][0][k]:10.3f}" for e in engines)
        lines.append(f"{label}  {counts[k]:8d}  {values}")
    return "\n".join(lines)


def test_sep_completeness_against_truth(tiny_sim, tiny_sep_catalogues):
    fraction, counts = completeness(tiny_sim, tiny_sep_catalogues)
    print("\n" + completeness_table({"sep": (fraction, counts)}))
    assert counts[:-1].sum() > 1000
    # Bright objects (mag < 22) are all but always found (the misses are close
    # blends and objects on the bad column); the faint end falls off.
    bright_bins = np.append(MAG_EDGES[1:] <= 22.0, False)
    assert np.all(fraction[bright_bins] >= 0.93)
    assert fraction[-1] >= 0.97
    assert fraction[-2] < 0.5


@pytest.mark.external
@pytest.mark.skipif(shutil.which("source-extractor") is None and shutil.which("sex") is None,
                    reason="SExtractor binary not installed")
def test_sep_agrees_with_the_sextractor_binary(tiny_sim, tiny_split, tiny_sep_catalogues, tmp_path):
    ccds, _ = tiny_split
    binary = extract_ccds(ccds, tmp_path, engine="sextractor")
    result = compare_engines(tiny_sim, tiny_sep_catalogues, binary)
    sep_rows = completeness(tiny_sim, tiny_sep_catalogues)
    binary_rows = completeness(tiny_sim, binary)
    print("\nsep vs SExtractor on the tiny CCDs:", {k: v for k, v in result.items() if k != "per_ccd"})
    print(completeness_table({"sep": sep_rows, "sextractor": binary_rows}))
    assert result["n_bright"] > 500 and result["n_stars"] > 100
    assert result["matched_fraction"] >= 0.98
    assert abs(result["median_dmag"]) < 0.02
    assert abs(result["fwhm_ratio"] - 1.0) < 0.03
    assert result["flags_agree"] >= 0.95
    # Completeness: the engines agree within a few percent in every bin with
    # enough objects, and both are complete for bright objects.
    populated = sep_rows[1] >= 30
    assert np.all(np.abs(sep_rows[0] - binary_rows[0])[populated] < 0.04)
    assert binary_rows[0][-1] >= 0.97
