"""Shear bias of the built-in and ngmix metacal engines on the same stamps, and their paired difference.

The stamps are those of ``bench_metacal.py`` (exponential galaxies, 1 or 2
epochs with their own Moffat PSF and Jacobian, +g/-g pairs sharing their
noise, each pair also rotated by 90 degrees); here every quadruple is drawn
from its own generator (``SeedSequence([seed, index])``), so runs split over
workers are identical. Each engine measures every stamp with the same object
generator; m1, m2 (jackknife errors over quadruples) are printed per engine,
then the difference ``m(engine) - m(builtin)`` computed on the same selected
pairs, with its jackknife error (the pairing cancels shape and pixel noise).

Engines (``--engines``, the first one the reference): ``builtin``;
``builtin-stamp`` (fitting the whole stamp, not the 5-sigma aperture);
``ngmix`` (the ngmix engine as shipped);
``ngmix-default-tol`` (ngmix's default fitter tolerances 1e-5);
``ngmix-noshear-start`` (default tolerances and the sheared fits started
from the noshear solution: the engine before issue 23);
``ngmix-fit-target`` (galaxy fits with a Gaussian fitted to ngmix's noisy
image of the reconvolution PSF); ``ngmix-bounds`` (flat priors passed to
``leastsqbound`` as bounds); ``ngmix-native-target`` (the kernel chosen by
ngmix's own ``psf='gauss'`` code, fitted from its noisy image);
``ngmix-before`` (native target, default tolerances, noshear start: the
engine before issue 23, except that both engines now add the same
correlated-noise image). Without the ngmix package the ngmix columns are
skipped with a message.

Usage::

    python benchmarks/bench_engines.py --n-quads 5000 --workers 2
"""

from __future__ import annotations

import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from shapepipe.arguments import ArgumentParser
from shapepipe_modules.ngmix import engine
from shapepipe_modules.ngmix.metacal import BRANCHES, TARGET_RULES
from shapepipe_modules.ngmix.response import shear_response

from bench_metacal import SHEAR, _jackknife, simulate_quad  # noqa: E402

ENGINES = ("builtin", "builtin-stamp", "ngmix", "ngmix-default-tol", "ngmix-noshear-start", "ngmix-fit-target",
           "ngmix-bounds", "ngmix-native-target", "ngmix-before")
KEYS = ((0, 1), (0, -1), (90, 1), (90, -1))


def _measure_function(name):
    """(measure_raw_object, keyword arguments) of an engine variant."""
    if name == "builtin":
        return engine.measure_raw_object, {}
    if name == "builtin-stamp":
        return _builtin_whole_stamp, {}
    from shapepipe_modules.ngmix import ngmix_engine as ne

    options = {
        "ngmix": {},
        "ngmix-default-tol": {"lm_pars": ne.NGMIX_DEFAULT_LM_PARS},
        "ngmix-noshear-start": {"lm_pars": ne.NGMIX_DEFAULT_LM_PARS, "start": "noshear"},
        "ngmix-fit-target": {"target_gmix": "fit"},
        "ngmix-bounds": {"prior_bounds": True},
        "ngmix-native-target": {"native_target": True},
        "ngmix-before": {"native_target": True, "lm_pars": ne.NGMIX_DEFAULT_LM_PARS, "start": "noshear"},
    }[name]
    return ne.measure_raw_object, options


def _builtin_whole_stamp(raws, object_id, rng, config):
    """The built-in engine fitting the whole stamp, as the ngmix engine does."""
    from dataclasses import replace

    return engine.measure_raw_object(raws, object_id, rng, replace(config, aperture_sigmas=None))


def ngmix_available():
    """None if the ngmix package is importable, else the reason."""
    try:
        from shapepipe_modules.ngmix.ngmix_engine import import_ngmix

        import_ngmix()
    except ImportError as error:
        return str(error)
    return None


def measure_quads(args):
    """Measure quadruples ``indices`` with every engine; returns (results, shears, cpu, object-epochs)."""
    indices, seed, engines, noise, target_psf = args
    config = engine.EngineConfig(prior=engine.ShapePipePrior(cen_sigma=0.187), target_psf=target_psf)
    functions = {name: _measure_function(name) for name in engines}
    results = {name: {key: [] for key in KEYS} for name in engines}
    cpu = {name: 0.0 for name in engines}
    shears, n_object_epochs = [], 0
    for index in indices:
        rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
        stamps, shear, n_epoch = simulate_quad(rng, index, noise)
        shears.append(shear)
        for key, raws in stamps.items():
            object_id = 2 * index + (key[0] == 90)
            n_object_epochs += n_epoch
            for name, (measure, options) in functions.items():
                obj_rng = np.random.default_rng([seed, object_id])
                start = time.process_time()
                res = measure(raws, object_id, obj_rng, config, **options)
                cpu[name] += time.process_time() - start
                results[name][key].append(res)
    return results, shears, cpu, n_object_epochs


def _tables(results):
    """+g and -g branch tables (0 then 90 degrees) of one engine."""
    out = []
    for sign in (1, -1):
        parts = [engine.rows_to_tables(results[(rot, sign)]) for rot in (0, 90)]
        out.append({b: {k: np.concatenate([parts[0][b][k], parts[1][b][k]]) for k in parts[0][b]}
                    for b in BRANCHES})
    return out


def _m_values(plus, minus, shears, sel):
    """m1, m2, R11, R22 on the selected rows."""
    tp = {b: {k: v[sel] for k, v in t.items()} for b, t in plus.items()}
    tm = {b: {k: v[sel] for k, v in t.items()} for b, t in minus.items()}
    R = 0.5 * (shear_response(tp)["R"] + shear_response(tm)["R"])
    axis1 = shears[sel, 0] != 0
    d1 = 0.5 * (tp["noshear"]["g1"] - tm["noshear"]["g1"])
    d2 = 0.5 * (tp["noshear"]["g2"] - tm["noshear"]["g2"])
    m1 = d1[axis1].mean() / (R[0, 0] * SHEAR) - 1.0
    m2 = d2[~axis1].mean() / (R[1, 1] * SHEAR) - 1.0
    return np.array([m1, m2, R[0, 0], R[1, 1]])


def analyse(results, shears, engines):
    """m per engine and the paired differences with the built-in engine, jackknife errors."""
    n_quads = len(shears)
    shears = np.concatenate([shears, shears])
    groups = np.concatenate([np.arange(n_quads), np.arange(n_quads)])
    tables = {name: _tables(results[name]) for name in engines}
    ok = np.ones(2 * n_quads, dtype=bool)
    for plus, minus in tables.values():
        for t in (plus, minus):
            ok &= (t["noshear"]["mcal_flags"] & engine.fl.FATAL) == 0

    def values(keep):
        sel = keep & ok
        per = [_m_values(*tables[name], shears, sel) for name in engines]
        ref = per[0]
        return np.concatenate(per + [p[:2] - ref[:2] for p in per[1:]])

    vals, errs = _jackknife(values, groups)
    out = {}
    for i, name in enumerate(engines):
        out[name] = {q: (vals[4 * i + j], errs[4 * i + j]) for j, q in enumerate(("m1", "m2", "R11", "R22"))}
    base = 4 * len(engines)
    for i, name in enumerate(engines[1:]):
        out[name]["dm1"] = (vals[base + 2 * i], errs[base + 2 * i])
        out[name]["dm2"] = (vals[base + 2 * i + 1], errs[base + 2 * i + 1])
    return out, int(ok.sum()), int((~ok).sum())


def main(argv=None):
    """Run the benchmark and print the table."""
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-quads", type=int, default=5000,
                        help="quadruples (2 +g/-g pairs each); default 5000 = 10,000 pairs")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--noise", type=float, default=1.0)
    parser.add_argument("--engines", default="builtin,ngmix",
                        help=f"comma-separated, a builtin one first; among {', '.join(ENGINES)}")
    parser.add_argument("--target-psf", default="gauss_nopix", choices=TARGET_RULES)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--chunk", type=int, default=50, help="quadruples per task")
    parser.add_argument("--report-every", type=int, default=0,
                        help="also print the table every this many tasks (0: at the end only)")
    args = parser.parse_args(argv)
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = sorted(set(engines) - set(ENGINES))
    if unknown or not engines[0].startswith("builtin"):
        parser.error(f"--engines must start with a builtin one and use {', '.join(ENGINES)}; "
                     f"got {args.engines}")
    reason = ngmix_available() if any(e.startswith("ngmix") for e in engines) else None
    if reason:
        print(f"ngmix engine skipped: {reason}")
        engines = [e for e in engines if e.startswith("builtin")]
    chunks = [range(i, min(i + args.chunk, args.n_quads)) for i in range(0, args.n_quads, args.chunk)]
    tasks = [(list(c), args.seed, engines, args.noise, args.target_psf) for c in chunks]
    results = {name: {key: [] for key in KEYS} for name in engines}
    shears, cpu, n_object_epochs = [], dict.fromkeys(engines, 0.0), 0
    wall = time.time()
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        for done, (res, sh, c, ne) in enumerate(pool.map(measure_quads, tasks), 1):
            for name in engines:
                for key in KEYS:
                    results[name][key].extend(res[name][key])
                cpu[name] += c[name]
            shears.extend(sh)
            n_object_epochs += ne
            if args.report_every and done % args.report_every == 0 and done < len(tasks):
                print(f"  {done}/{len(tasks)} tasks, {time.time() - wall:.0f} s wall", flush=True)
                report(results, shears, engines, cpu, n_object_epochs, args)
    print(f"  {len(tasks)} tasks, {time.time() - wall:.0f} s wall", flush=True)
    return report(results, shears, engines, cpu, n_object_epochs, args)


def report(results, shears, engines, cpu, n_object_epochs, args):
    """Print the table of the quadruples measured so far; return the measurements."""
    out, n_used, n_failed = analyse(results, np.array(shears), engines)
    print()
    print(f"{len(shears)} quadruples: {n_used} +g/-g pairs used by every engine, {n_failed} with fatal "
          f"flags; target PSF rule {args.target_psf}; seed {args.seed}")
    print()
    ref = engines[0]
    print(f"| engine | m1 | m2 | m1 - m1({ref}) | m2 - m2({ref}) | R11 | CPU ms/object-epoch |")
    print("|---|---|---|---|---|---|---|")
    for name in engines:
        row = out[name]
        diff = ["", ""] if name == engines[0] else [
            f"{row[k][0]:+.5f} +- {row[k][1]:.5f}" for k in ("dm1", "dm2")]
        print(f"| {name} | {row['m1'][0]:+.4f} +- {row['m1'][1]:.4f} | {row['m2'][0]:+.4f} +- {row['m2'][1]:.4f}"
              f" | {diff[0]} | {diff[1]} | {row['R11'][0]:.4f} | {1e3 * cpu[name] / n_object_epochs:.1f} |")
    print(flush=True)
    return out


if __name__ == "__main__":
    main()
