"""Metacalibration response and shear estimate from catalogue tables.

``R_ij = <(g_i[j+] - g_i[j-]) / (2 step)>`` over the selected objects
(shear response); when a selection is applied, the selection response
``Rs_ij = (<g_i>_{S(j+)} - <g_i>_{S(j-)}) / (2 step)`` uses the noshear
shapes of the objects selected on the sheared branches' quantities
(Sheldon & Huff 2017). The shear estimate is ``(R + Rs)^-1 <g>``.

Weights: means are weighted. Weights made from branch quantities (e.g.
:func:`shape_weight`, from each branch's shape errors) are passed as a
callable evaluated on every branch like the selection: ``R`` and ``<g>`` use
the noshear weights, and ``Rs`` the weights of the sheared branches, so the
weights' own response to shear is included.
"""

from __future__ import annotations

import numpy as np

from .flags import FATAL


def _default_selection(table):
    # mcal_flags ORs every branch, so this keeps the same objects in all
    # branches: failures cause no selection response.
    return (table["mcal_flags"] & FATAL) == 0


def shape_weight(table, sigma_e=0.26):
    """Inverse-variance weight ``1 / (sigma_e^2 + (g1_err^2 + g2_err^2) / 2)`` of every object.

    Parameters
    ----------
    table : mapping
        One branch's columns (``g1_err``, ``g2_err``).
    sigma_e : float, optional
        Shape noise per component.

    Returns
    -------
    numpy.ndarray
        Weights (0 where the errors are not finite).
    """
    var = 0.5 * (np.asarray(table["g1_err"], dtype=float) ** 2 + np.asarray(table["g2_err"], dtype=float) ** 2)
    with np.errstate(invalid="ignore"):
        weight = 1.0 / (sigma_e ** 2 + var)
    return np.where(np.isfinite(weight), weight, 0.0)


def shear_response(tables, step=0.01, select=None, weights=None):
    """Mean response and shear estimate of a set of objects.

    Parameters
    ----------
    tables : dict
        Branch name (``noshear``, ``1p``, ``1m``, ``2p``, ``2m``) to a table
        (mapping column name to array) with at least ``g1``, ``g2`` and
        ``mcal_flags``; rows are the same objects in every branch.
    step : float, optional
        Metacal shear step.
    select : callable, optional
        ``select(table) -> bool array`` applied to each branch (default: no
        fatal flag in ``mcal_flags``). Selection on branch quantities gives
        a selection response. Objects whose sheared shapes are not finite
        are left out of the shear response.
    weights : numpy.ndarray or callable, optional
        Per-object weights (default uniform), or ``weights(table) -> array``
        evaluated on each branch (weights from branch quantities, whose
        response then enters ``R_sel``).

    Returns
    -------
    dict
        ``R`` (2x2 shear response), ``R_sel`` (2x2 selection response),
        ``g_mean`` (mean noshear g of the selection), ``shear``
        (``(R + R_sel)^-1 g_mean``) and ``n`` (objects selected).
    """
    select = select or _default_selection
    noshear = tables["noshear"]
    n_obj = len(noshear["g1"])
    if weights is None:
        branch_weights = {name: np.ones(n_obj) for name in tables}
    elif callable(weights):
        branch_weights = {name: np.asarray(weights(table), dtype=float) for name, table in tables.items()}
    else:
        fixed = np.asarray(weights, dtype=float)
        branch_weights = {name: fixed for name in tables}
    masks = {name: np.asarray(select(table), dtype=bool) for name, table in tables.items()}
    sel = masks["noshear"]
    if not sel.any():
        raise ValueError("no object passes the selection")

    def wmean(values, mask, branch="noshear"):
        w = branch_weights[branch][mask]
        return np.sum(w * values[mask]) / np.sum(w)

    g = np.stack([noshear["g1"], noshear["g2"]])
    g_mean = np.array([wmean(g[0], sel), wmean(g[1], sel)])
    R = np.zeros((2, 2))
    R_sel = np.zeros((2, 2))
    for j, (plus, minus) in enumerate((("1p", "1m"), ("2p", "2m"))):
        gp = np.stack([tables[plus]["g1"], tables[plus]["g2"]])
        gm = np.stack([tables[minus]["g1"], tables[minus]["g2"]])
        finite = sel & np.isfinite(gp).all(axis=0) & np.isfinite(gm).all(axis=0)
        for i in range(2):
            R[i, j] = wmean((gp[i] - gm[i]) / (2.0 * step), finite)
            R_sel[i, j] = (wmean(g[i], masks[plus], plus) - wmean(g[i], masks[minus], minus)) / (2.0 * step)
    shear = np.linalg.solve(R + R_sel, g_mean)
    return {"R": R, "R_sel": R_sel, "g_mean": g_mean, "shear": shear, "n": int(sel.sum())}
