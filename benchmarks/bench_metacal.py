"""Shear bias and speed of the built-in metacal engine on known-PSF stamps.

Simulation: exponential galaxies (half-light radius 0.3-0.8 arcsec,
intrinsic ellipticity of rms 0.2 per component) observed in 1 or 2 epochs,
each with its own Moffat PSF (FWHM 0.6-0.8 arcsec, ellipticity up to 0.03)
and its own local WCS Jacobian (pixel scale about 0.187 arcsec, small
rotation and distortion), on 51x51 stamps with Gaussian noise. Objects come
in quadruples: a galaxy and its copy rotated by 90 degrees (with its
sub-pixel offset and its noise field rotated too; the PSF and the WCS are
not rotated, so PSF leakage does not cancel), each sheared by +g and by -g
with the same noise (and the same object seed). Half of the
quadruples are sheared along g1, half along g2 (|g| = 0.02, or ``--shear``).

m and c are estimated from the +g/-g differences and sums with the mean
metacal response; errors are jackknife errors over quadruples. The CPU time
(process time) of the engine alone is reported per object-epoch.

``--blend ARCSEC`` puts a second galaxy (drawn as the first) at that
separation in a random direction in every stamp, measured as one object
(an unresolved blend, the stamp centred on the first galaxy);
``--blend-separation fixed`` shears each galaxy about its own centre and
leaves their separation as drawn (a simulation that shears shapes only),
``lensed`` (default) shears the pair as one image, as lensing does::

    python benchmarks/bench_metacal.py --n-quads 1500 --seed 3 --shear 0.05 --blend 1.0 --blend-separation fixed

``--errors N`` checks instead the ellipticity errors the catalogue carries
(``g1_err``, ``g2_err``, i.e. ``NGMIX_ELL_ERR``): N galaxies of the same kind
(noise levels 1, 2 or 4 to cover S/N 10-150), each measured on
``--realisations`` independent noise fields (and object streams); per S/N
bin, the ratio of each galaxy's median reported error to the measured
scatter of its noshear ellipticity (shape noise excluded), its median over
the galaxies of the bin and the ratio of the rms values, with bootstrap
errors over galaxies.

Usage::

    python benchmarks/bench_metacal.py --n-quads 10000 --seed 1
    python benchmarks/bench_metacal.py --errors 300 --realisations 30 --seed 1

``--baseline DIR`` measures every object twice, with the installed engine
and with the engine modules found in ``DIR`` (another version of
``modules/ngmix``, e.g. ``git archive <commit> modules/ngmix | tar -x -C
/tmp/base`` then ``--baseline /tmp/base/modules/ngmix``), alternating which
runs first, on the same stamps and object streams; it prints the CPU time
per object-epoch of both, m and c of both, their paired differences
(jackknife errors) and the largest per-object change of g::

    python benchmarks/bench_metacal.py --n-quads 100 --seed 1 --baseline /tmp/base/modules/ngmix
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np

from shapepipe_modules.ngmix import engine
from shapepipe_modules.ngmix.metacal import BRANCHES
from shapepipe_modules.ngmix.response import shape_weight, shear_response  # noqa: F401

STAMP = 51
SHEAR = 0.02


def _epoch_setup(rng):
    import galsim

    fwhm = rng.uniform(0.6, 0.8)
    g_psf = rng.uniform(-0.03, 0.03, 2)
    psf = galsim.Moffat(beta=3.5, fwhm=fwhm).shear(g1=g_psf[0], g2=g_psf[1])
    scale = 0.187 * (1 + rng.uniform(-0.01, 0.01))
    angle = rng.uniform(-0.05, 0.05)
    distort = rng.uniform(-0.01, 0.01, 2)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    jac = scale * rot @ np.array([[1 + distort[0], distort[1]], [distort[1], 1 - distort[0]]])
    # Sub-pixel offset of the object from the stamp centre (known position).
    offset = rng.uniform(-0.5, 0.5, 2)
    return psf, jac, offset


def simulate_quad(rng, index, noise_sigma=1.0, jacobian=None, star=False, shear=SHEAR, blend=None):
    """Stamps of one quadruple: {0, 90 deg} x {+g, -g}.

    Parameters
    ----------
    rng : numpy.random.Generator
    index : int
        Quadruple index (even: shear along g1, odd: along g2).
    noise_sigma : float, optional
    jacobian : array_like, optional
        2x2 Jacobian of every epoch instead of the random near-diagonal ones
        (the random draws are made all the same, so the galaxies, PSFs and
        noise are those of the default run).
    star : bool, optional
        A point source (the PSF alone) instead of the galaxy.
    blend : tuple (float, bool), optional
        ``(separation, lensed)``: a second galaxy (drawn as the first) at
        ``separation`` arcsec in a random direction from the first, in the
        same stamp. ``lensed``: the shear moves it too (the pair is sheared
        as one image, as lensing does); otherwise each galaxy is sheared
        about its own centre and their separation is not (a simulation that
        shears shapes only).

    Returns
    -------
    dict
        (rotation, sign) -> list of RawEpoch; plus the applied shear.
    """
    import galsim

    hlr = rng.uniform(0.3, 0.8)
    flux = rng.uniform(600.0, 2000.0)
    e = rng.normal(0.0, 0.2, 2)
    while np.hypot(*e) > 0.7:
        e = rng.normal(0.0, 0.2, 2)
    shear = np.array([shear, 0.0]) if index % 2 == 0 else np.array([0.0, shear])
    n_epoch = 1 + int(rng.integers(0, 2))
    setups = [_epoch_setup(rng) for _ in range(n_epoch)]
    if jacobian is not None:
        setups = [(psf, np.asarray(jacobian, dtype=float), offset) for psf, _, offset in setups]
    noises = [rng.normal(0.0, noise_sigma, (STAMP, STAMP)) for _ in range(n_epoch)]
    if blend is not None:
        separation, lensed = blend
        second_hlr, second_flux = rng.uniform(0.3, 0.8), rng.uniform(600.0, 2000.0)
        second_e = rng.normal(0.0, 0.2, 2)
        while np.hypot(*second_e) > 0.7:
            second_e = rng.normal(0.0, 0.2, 2)
        angle = rng.uniform(0.0, 2.0 * np.pi)
        second_shift = separation * np.array([np.cos(angle), np.sin(angle)])
    out = {}
    for rotation in (0, 90):
        base = (galsim.DeltaFunction(flux=flux) if star
                else galsim.Exponential(half_light_radius=hlr, flux=flux).shear(e1=e[0], e2=e[1]))
        # np.rot90(k=1) maps pixel offsets (x, y) to (y, -x): a rotation by
        # -90 degrees, applied to galaxy, offset and noise alike.
        base = base.rotate(-rotation * galsim.degrees)
        if blend is not None:
            second = galsim.Exponential(half_light_radius=second_hlr, flux=second_flux).shear(
                e1=second_e[0], e2=second_e[1]).rotate(-rotation * galsim.degrees)
            turn = np.radians(-rotation)
            shift = np.array([[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]]) @ second_shift
        for sign in (1, -1):
            applied = {"g1": sign * shear[0], "g2": sign * shear[1]}
            if blend is None:
                gal = base.shear(**applied)
            elif lensed:  # the pair as one image: its separation is sheared too
                gal = galsim.Add(base, second.shift(*shift)).shear(**applied)
            else:
                gal = galsim.Add(base.shear(**applied), second.shear(**applied).shift(*shift))
            raws = []
            for k, ((psf, jac, offset), noise) in enumerate(zip(setups, noises)):
                if rotation:
                    offset = np.array([offset[1], -offset[0]])
                    noise = np.rot90(noise, k=1)
                wcs = galsim.JacobianWCS(*jac.ravel())
                image = galsim.Convolve(gal, psf).drawImage(
                    nx=STAMP, ny=STAMP, wcs=wcs, offset=offset).array
                psf_image = psf.drawImage(nx=STAMP, ny=STAMP, wcs=wcs).array
                centre = (STAMP // 2 + offset[1], STAMP // 2 + offset[0])
                background = np.full((STAMP, STAMP), 100.0)
                raws.append(engine.RawEpoch(
                    image=image + noise + background, background=background,
                    weight=np.full((STAMP, STAMP), 1.0 / noise_sigma ** 2),
                    flag=np.zeros((STAMP, STAMP), dtype=np.int64),
                    psf_image=psf_image, jacobian=jac, name=f"e{k}",
                    centre=centre))
            out[(rotation, sign)] = raws
    return out, shear, n_epoch


def _jackknife(values_fn, groups, n_blocks=100):
    """Jackknife over blocks of groups (a quadruple is never split)."""
    unique = np.unique(groups)
    blocks = np.array_split(unique, min(n_blocks, unique.size))
    full = values_fn(np.ones(groups.size, dtype=bool))
    samples = []
    for block in blocks:
        keep = ~np.isin(groups, block)
        samples.append(values_fn(keep))
    samples = np.array(samples)
    nb = len(blocks)
    err = np.sqrt((nb - 1) / nb * np.sum((samples - samples.mean(axis=0)) ** 2, axis=0))
    return full, err


def bias_function(tables_plus, tables_minus, shears):
    """``compute(keep) -> [m1, m2, c1, c2, R11, R22]`` on the kept objects, and the usable-object mask.

    The function :func:`estimate_bias` jackknifes; exposed so that a
    benchmark can jackknife differences between two measurements of the same
    objects.
    """
    n = len(shears)
    ok = np.ones(n, dtype=bool)
    for tables in (tables_plus, tables_minus):
        ok &= (tables["noshear"]["mcal_flags"] & engine.fl.FATAL) == 0
    axis1 = shears[:, 0] != 0

    def compute(keep):
        sel = keep & ok
        tp = {b: {k: v[sel] for k, v in t.items()} for b, t in tables_plus.items()}
        tm = {b: {k: v[sel] for k, v in t.items()} for b, t in tables_minus.items()}
        rp = shear_response(tp)
        rm = shear_response(tm)
        R = 0.5 * (rp["R"] + rm["R"])
        gp = np.stack([tp["noshear"]["g1"], tp["noshear"]["g2"]], axis=1)
        gm = np.stack([tm["noshear"]["g1"], tm["noshear"]["g2"]], axis=1)
        a1 = axis1[sel]
        diff = 0.5 * (gp - gm)
        summ = 0.5 * (gp + gm)
        applied = shears[sel]
        m1 = diff[a1, 0].mean() / (R[0, 0] * applied[a1, 0].mean()) - 1.0
        m2 = diff[~a1, 1].mean() / (R[1, 1] * applied[~a1, 1].mean()) - 1.0
        c1 = summ[:, 0].mean() / R[0, 0]
        c2 = summ[:, 1].mean() / R[1, 1]
        return np.array([m1, m2, c1, c2, R[0, 0], R[1, 1]])

    return compute, ok


def estimate_bias(tables_plus, tables_minus, shears, groups):
    """m and c per component with jackknife errors over objects.

    Parameters
    ----------
    tables_plus, tables_minus : dict
        Branch tables (see :func:`engine.rows_to_tables`) of the +g and -g
        objects, row i of both being the same object.
    shears : numpy.ndarray
        (n, 2) applied shear of each object (the +g one).
    groups : numpy.ndarray
        Quadruple index of each row (jackknife unit).

    Returns
    -------
    dict
        ``m1, m2, c1, c2`` and their errors, ``R`` (mean response).
    """
    compute, ok = bias_function(tables_plus, tables_minus, shears)

    values, errors = _jackknife(compute, np.asarray(groups))
    names = ["m1", "m2", "c1", "c2", "R11", "R22"]
    out = {name: float(v) for name, v in zip(names, values)}
    out.update({f"{name}_err": float(e) for name, e in zip(names, errors)})
    out["n_used"] = int(ok.sum())
    out["n_failed"] = int((~ok).sum())
    return out


def paired_shear_bias(tables_plus, tables_minus, shears, weights=None, sel=None):
    """m and c per component from +g/-g tables with the library's estimator (no errors).

    Each run's shear is ``(R + R_sel)^-1 <g>`` (:func:`shear_response`, with
    the same ``weights`` callable in every branch, so the weights' response
    enters ``R_sel``); ``m_i = (shear_plus - shear_minus)_i / (2 g) - 1`` over
    the objects sheared along ``i``, ``c_i = (shear_plus + shear_minus)_i / 2``
    over all.

    Parameters
    ----------
    tables_plus, tables_minus : dict
        Branch tables of the +g and -g objects (row i: the same object).
    shears : numpy.ndarray
        (n, 2) applied +g shear of each object.
    weights : callable, optional
        ``weights(table) -> array`` (e.g. :func:`shape_weight`); None: uniform.
    sel : numpy.ndarray of bool, optional
        Objects to use (default all).

    Returns
    -------
    numpy.ndarray
        ``[m1, m2, c1, c2]``.
    """
    sel = np.ones(len(shears), dtype=bool) if sel is None else sel
    axis1 = shears[:, 0] != 0

    def shear_of(tables, mask):
        sub = {b: {k: v[mask] for k, v in t.items()} for b, t in tables.items()}
        return shear_response(sub, weights=weights)["shear"]

    g1, g2 = shears[sel & axis1, 0].mean(), shears[sel & ~axis1, 1].mean()
    m1 = (shear_of(tables_plus, sel & axis1)[0] - shear_of(tables_minus, sel & axis1)[0]) / (2 * g1) - 1
    m2 = (shear_of(tables_plus, sel & ~axis1)[1] - shear_of(tables_minus, sel & ~axis1)[1]) / (2 * g2) - 1
    c = 0.5 * (shear_of(tables_plus, sel) + shear_of(tables_minus, sel))
    return np.array([m1, m2, c[0], c[1]])


def measure_quads(n_quads, seed, noise_sigma=1.0, jacobian=None, star=False, progress=False, minus=True, shear=SHEAR,
                  blend=None):
    """Simulate and measure quadruples (with ``minus=False``, only the +g objects: pairs).

    Returns
    -------
    tables_plus, tables_minus : dict
        Branch tables of the +g and -g objects (row i: the same object);
        ``tables_minus`` is None with ``minus=False``.
    shears : numpy.ndarray
        (n, 2) applied +g shear per object.
    groups : numpy.ndarray
        Quadruple of each object (jackknife unit).
    timing : dict
    """
    rng = np.random.default_rng(seed)
    config = engine.EngineConfig(prior=engine.ShapePipePrior(cen_sigma=0.187))
    results = {key: [] for key in ((0, 1), (0, -1), (90, 1), (90, -1))}
    shears = []
    cpu = 0.0
    n_object_epochs = 0
    for index in range(n_quads):
        stamps, applied, n_epoch = simulate_quad(rng, index, noise_sigma, jacobian=jacobian, star=star, shear=shear,
                                                 blend=blend)
        for key, raws in stamps.items():
            if key[1] < 0 and not minus:
                continue
            # Same object id (so same metacal noise) for +g and -g.
            object_id = 2 * index + (key[0] == 90)
            obj_rng = engine.sky_rng(seed, 244.0, 0.001 * object_id)
            start = time.process_time()
            res = engine.measure_raw_object(raws, object_id, obj_rng, config)
            cpu += time.process_time() - start
            n_object_epochs += n_epoch
            results[key].append(res)
        shears.append(applied)
        if progress and (index + 1) % 500 == 0:
            print(f"  {index + 1}/{n_quads} quadruples, "
                  f"{1e3 * cpu / n_object_epochs:.2f} ms per object-epoch", flush=True)
    shears = np.array(shears)
    plus = {rot: engine.rows_to_tables(results[(rot, 1)]) for rot in (0, 90)}
    tables_plus = {b: {k: np.concatenate([plus[0][b][k], plus[90][b][k]])
                       for k in plus[0][b]} for b in BRANCHES}
    tables_minus = None
    if minus:
        neg = {rot: engine.rows_to_tables(results[(rot, -1)]) for rot in (0, 90)}
        tables_minus = {b: {k: np.concatenate([neg[0][b][k], neg[90][b][k]])
                            for k in neg[0][b]} for b in BRANCHES}
    all_shears = np.concatenate([shears, shears])
    groups = np.concatenate([np.arange(n_quads), np.arange(n_quads)])
    timing = {"cpu_s": cpu, "object_epochs": n_object_epochs,
              "ms_per_object_epoch": 1e3 * cpu / n_object_epochs,
              "objects": (4 if minus else 2) * n_quads}
    return tables_plus, tables_minus, all_shears, groups, timing


def load_engine(directory, name="bench_baseline_ngmix"):
    """Import the engine package held in ``directory`` (a copy of ``modules/ngmix``) under ``name``."""
    directory = Path(directory)
    init = directory / "__init__.py"
    if not init.is_file():
        raise SystemExit(f"--baseline: {init} not found (give a directory holding the engine's modules)")
    spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(directory)])
    package = importlib.util.module_from_spec(spec)
    sys.modules[name] = package
    spec.loader.exec_module(package)
    return importlib.import_module(f"{name}.engine")


def compare_engines(n_quads, seed, baseline_engine, noise_sigma=1.0, progress=False):
    """Measure the same stamps with the installed engine and ``baseline_engine``, alternately.

    Returns
    -------
    dict
        ``timing`` (CPU ms per object-epoch of ``new`` and ``baseline``),
        ``bias`` (:func:`estimate_bias` of each), ``diff`` (paired
        differences of m, c, R with jackknife errors), ``max_dg`` (largest
        |g| change over objects, branches and components, fit failures
        excluded), ``max_rel_err`` (largest relative change of ``g1_err``,
        ``g2_err``) and ``n_object_epochs``.
    """
    rng = np.random.default_rng(seed)
    engines = {"new": engine, "baseline": baseline_engine}
    configs = {label: mod.EngineConfig(prior=mod.ShapePipePrior(cen_sigma=0.187))
               for label, mod in engines.items()}
    results = {label: {key: [] for key in ((0, 1), (0, -1), (90, 1), (90, -1))} for label in engines}
    cpu = {label: 0.0 for label in engines}
    # Warm-up outside the timing (numba compilation or cache loading of both).
    warm, _, _ = simulate_quad(np.random.default_rng(seed + 1), 0, noise_sigma)
    for mod in engines.values():
        mod.measure_raw_object([mod.RawEpoch(**vars(raw)) for raw in warm[(0, 1)]], 0,
                               mod.sky_rng(seed, 0.0, 0.0), configs[[k for k in engines if engines[k] is mod][0]])
    shears = []
    n_object_epochs = 0
    turn = 0
    for index in range(n_quads):
        stamps, shear, n_epoch = simulate_quad(rng, index, noise_sigma)
        for key, raws in stamps.items():
            object_id = 2 * index + (key[0] == 90)
            order = ("new", "baseline") if turn % 2 == 0 else ("baseline", "new")
            turn += 1
            for label in order:
                mod = engines[label]
                obj_rng = mod.sky_rng(seed, 244.0, 0.001 * object_id)
                raws_mod = [mod.RawEpoch(**vars(raw)) for raw in raws] if mod is not engine else raws
                start = time.process_time()
                res = mod.measure_raw_object(raws_mod, object_id, obj_rng, configs[label])
                cpu[label] += time.process_time() - start
                results[label][key].append(res)
            n_object_epochs += n_epoch
        shears.append(shear)
        if progress and (index + 1) % 100 == 0:
            print(f"  {index + 1}/{n_quads} quadruples, new {1e3 * cpu['new'] / n_object_epochs:.2f}, "
                  f"baseline {1e3 * cpu['baseline'] / n_object_epochs:.2f} ms per object-epoch", flush=True)
    shears = np.concatenate([shears, shears])
    groups = np.concatenate([np.arange(n_quads), np.arange(n_quads)])

    def tables(label, sign):
        per_rot = {rot: engine.rows_to_tables(results[label][(rot, sign)]) for rot in (0, 90)}
        return {b: {k: np.concatenate([per_rot[0][b][k], per_rot[90][b][k]]) for k in per_rot[0][b]}
                for b in BRANCHES}

    tabs = {label: (tables(label, 1), tables(label, -1)) for label in engines}
    bias = {label: estimate_bias(*tabs[label], shears, groups) for label in engines}
    new_fn, new_ok = bias_function(*tabs["new"], shears)
    base_fn, base_ok = bias_function(*tabs["baseline"], shears)
    diff_values, diff_errors = _jackknife(lambda keep: new_fn(keep & base_ok) - base_fn(keep & new_ok), groups)
    max_dg = max_rel_err = 0.0
    for i in range(2):
        for b in BRANCHES:
            for column in ("g1", "g2"):
                delta = np.abs(tabs["new"][i][b][column] - tabs["baseline"][i][b][column])
                if np.isfinite(delta).any():
                    max_dg = max(max_dg, float(np.nanmax(delta)))
                err_new, err_base = tabs["new"][i][b][column + "_err"], tabs["baseline"][i][b][column + "_err"]
                rel = np.abs(err_new / err_base - 1.0)
                if np.isfinite(rel).any():
                    max_rel_err = max(max_rel_err, float(np.nanmax(rel)))
    names = ["m1", "m2", "c1", "c2", "R11", "R22"]
    return {"timing": {label: 1e3 * cpu[label] / n_object_epochs for label in engines},
            "bias": bias, "diff": {name: (float(v), float(e)) for name, v, e in zip(names, diff_values, diff_errors)},
            "max_dg": max_dg, "max_rel_err": max_rel_err, "n_object_epochs": n_object_epochs}


def print_comparison(out, baseline_label):
    """Print the table of :func:`compare_engines`."""
    bias = out["bias"]
    print(f"object-epochs: {out['n_object_epochs']} (each measured by both engines, alternately); "
          f"max |dg| over objects and branches: {out['max_dg']:.1e}; "
          f"max relative change of g1_err, g2_err: {out['max_rel_err']:.1e}")
    print()
    print(f"| quantity | new (installed) | baseline ({baseline_label}) | new - baseline |")
    print("|---|---|---|---|")
    print(f"| CPU ms per object-epoch | {out['timing']['new']:.2f} | {out['timing']['baseline']:.2f} | "
          f"{out['timing']['new'] - out['timing']['baseline']:+.2f} |")
    for name in ("m1", "m2", "c1", "c2", "R11", "R22"):
        value, error = out["diff"][name]
        print(f"| {name} | {bias['new'][name]:+.2e} +- {bias['new'][name + '_err']:.1e} | "
              f"{bias['baseline'][name]:+.2e} +- {bias['baseline'][name + '_err']:.1e} | "
              f"{value:+.1e} +- {error:.1e} |")


def run(n_quads, seed, noise_sigma=1.0, progress=False, shear=SHEAR, blend=None):
    """Simulate, measure and return (bias dict, timing dict, s2n array)."""
    tables_plus, tables_minus, all_shears, groups, timing = measure_quads(
        n_quads, seed, noise_sigma, progress=progress, shear=shear, blend=blend)
    bias = estimate_bias(tables_plus, tables_minus, all_shears, groups)
    return bias, timing, tables_plus["noshear"]["s2n"]


def simulate_galaxy(rng, noise_sigmas=(1.0, 2.0, 4.0)):
    """Noiseless stamps of one galaxy (1 or 2 epochs) and its noise level.

    Returns
    -------
    clean : list of tuple
        Per epoch ``(image, psf_image, jacobian, centre)``.
    sigma : float
    """
    import galsim

    hlr = rng.uniform(0.3, 0.8)
    flux = rng.uniform(600.0, 2000.0)
    e = rng.normal(0.0, 0.2, 2)
    while np.hypot(*e) > 0.7:
        e = rng.normal(0.0, 0.2, 2)
    sigma = float(rng.choice(noise_sigmas))
    gal = galsim.Exponential(half_light_radius=hlr, flux=flux).shear(e1=e[0], e2=e[1])
    clean = []
    for _ in range(1 + int(rng.integers(0, 2))):
        psf, jac, offset = _epoch_setup(rng)
        wcs = galsim.JacobianWCS(*jac.ravel())
        image = galsim.Convolve(gal, psf).drawImage(nx=STAMP, ny=STAMP, wcs=wcs, offset=offset).array
        clean.append((image, psf.drawImage(nx=STAMP, ny=STAMP, wcs=wcs).array, jac,
                      (STAMP // 2 + offset[1], STAMP // 2 + offset[0])))
    return clean, sigma


def noisy_epochs(clean, sigma, rng):
    """RawEpochs of one noise realisation of :func:`simulate_galaxy`'s stamps."""
    background = np.full((STAMP, STAMP), 100.0)
    return [engine.RawEpoch(image=image + rng.normal(0.0, sigma, image.shape) + background,
                            background=background, weight=np.full((STAMP, STAMP), 1.0 / sigma ** 2),
                            flag=np.zeros((STAMP, STAMP), dtype=np.int64), psf_image=psf_image,
                            jacobian=jac, name=f"e{k}", centre=centre)
            for k, (image, psf_image, jac, centre) in enumerate(clean)]


def error_calibration(n_galaxies, n_realisations, seed, config=None):
    """Reported ellipticity error against the measured scatter, per galaxy.

    Returns
    -------
    dict of numpy.ndarray
        Per galaxy: ``s2n`` (median over realisations), ``reported`` (median
        of ``g1_err`` and ``g2_err`` over realisations, mean of the two),
        ``scatter`` (standard deviation of ``g1`` and ``g2`` over
        realisations, rms of the two).
    """
    rng = np.random.default_rng(seed)
    config = config or engine.EngineConfig(prior=engine.ShapePipePrior(cen_sigma=0.187))
    out = {"s2n": [], "reported": [], "scatter": []}
    for index in range(n_galaxies):
        clean, sigma = simulate_galaxy(rng)
        g, err, s2n = [], [], []
        for realisation in range(n_realisations):
            obj_rng = engine.sky_rng(seed, 10.0 + 0.01 * realisation, 0.01 * index)
            row = engine.measure_raw_object(noisy_epochs(clean, sigma, rng), index, obj_rng, config)["noshear"]
            if row["mcal_flags"] & engine.fl.FATAL:
                continue
            g.append((row["g1"], row["g2"]))
            err.append((row["g1_err"], row["g2_err"]))
            s2n.append(row["s2n"])
        if len(g) < max(5, n_realisations // 2):
            continue
        g, err = np.array(g), np.array(err)
        out["s2n"].append(np.median(s2n))
        out["reported"].append(np.mean(np.median(err, axis=0)))
        out["scatter"].append(np.sqrt(np.mean(np.var(g, axis=0, ddof=1))))
    return {key: np.array(val) for key, val in out.items()}


def print_error_table(calib, bins=(0, 20, 40, 80, np.inf), seed=0):
    """Print the error ratio per S/N bin (bootstrap errors over galaxies)."""
    rng = np.random.default_rng(seed)
    print("| S/N | galaxies | median over galaxies of (median reported / scatter) | rms reported / rms scatter |")
    print("|---|---|---|---|")
    rows = []
    for low, high in zip(bins[:-1], bins[1:]):
        sel = (calib["s2n"] >= low) & (calib["s2n"] < high)
        if sel.sum() < 3:
            continue
        rep, sca = calib["reported"][sel], calib["scatter"][sel]

        def ratios(index):
            return (np.median(rep[index] / sca[index]),
                    np.sqrt(np.mean(rep[index] ** 2) / np.mean(sca[index] ** 2)))

        value = ratios(np.arange(rep.size))
        boot = np.array([ratios(rng.integers(0, rep.size, rep.size)) for _ in range(500)])
        spread = boot.std(axis=0)
        label = f"{low:g}-{high:g}" if np.isfinite(high) else f">= {low:g}"
        print(f"| {label} | {rep.size} | {value[0]:.3f} +- {spread[0]:.3f} | {value[1]:.3f} +- {spread[1]:.3f} |")
        rows.append((low, high, rep.size, *value, *spread))
    return rows


def main(argv=None):
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-quads", type=int, default=10000,
                        help="quadruples (4 objects each); default 10000 = 40000 objects")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--noise", type=float, default=1.0)
    parser.add_argument("--shear", type=float, default=SHEAR,
                        help=f"|g| applied (default {SHEAR}; e.g. 0.12, a cluster core's reduced shear)")
    parser.add_argument("--blend", type=float, default=None, metavar="ARCSEC",
                        help="a second galaxy at this separation in every stamp (an unresolved blend)")
    parser.add_argument("--blend-separation", choices=("lensed", "fixed"), default="lensed",
                        help="with --blend: lensed (the shear moves the second galaxy too, as lensing does) or fixed "
                             "(each galaxy sheared about its own centre, their separation not)")
    parser.add_argument("--errors", type=int, default=0, metavar="N",
                        help="check the reported ellipticity errors on N galaxies instead")
    parser.add_argument("--realisations", type=int, default=30,
                        help="noise realisations per galaxy with --errors")
    parser.add_argument("--baseline", metavar="DIR",
                        help="also measure every object with the engine modules in DIR and compare")
    args = parser.parse_args(argv)
    if args.baseline:
        baseline_engine = load_engine(args.baseline)
        out = compare_engines(args.n_quads, args.seed, baseline_engine, args.noise, progress=True)
        print()
        print_comparison(out, args.baseline)
        return out
    if args.errors:
        start = time.process_time()
        calib = error_calibration(args.errors, args.realisations, args.seed)
        print(f"{calib['s2n'].size} galaxies x {args.realisations} noise realisations, "
              f"{time.process_time() - start:.0f} s CPU")
        print_error_table(calib, seed=args.seed)
        return calib
    blend = None if args.blend is None else (args.blend, args.blend_separation == "lensed")
    bias, timing, s2n = run(args.n_quads, args.seed, args.noise, progress=True, shear=args.shear, blend=blend)
    print()
    print(f"objects: {timing['objects']} ({bias['n_used']} +g/-g pairs used, "
          f"{bias['n_failed']} pairs with fatal flags); "
          f"object-epochs: {timing['object_epochs']}")
    print(f"s2n (noshear) median {np.nanmedian(s2n):.1f}, "
          f"10-90%: {np.nanpercentile(s2n, 10):.1f}-{np.nanpercentile(s2n, 90):.1f}")
    print()
    print("| quantity | value | 1-sigma |")
    print("|---|---|---|")
    for name in ("m1", "m2", "c1", "c2", "R11", "R22"):
        print(f"| {name} | {bias[name]:+.2e} | {bias[name + '_err']:.2e} |")
    print(f"| CPU per object-epoch | {timing['ms_per_object_epoch']:.2f} ms | |")
    return bias, timing


if __name__ == "__main__":
    main()
