"""One seed of a calibration campaign: simulate the +g/-g pair, run the GOLD chain on both, join the galaxies.

:func:`run_seed` is a plain function (the ``calibration_seed`` module calls
it once per file number = seed). Its CPU time is measured, not estimated:
the process's own CPU time (simulation, joins) plus that of every
``shapepipe_run`` stage it started and waited for (``RUSAGE_CHILDREN``,
which includes the stages' worker processes), and, for comparison, the
summed job CPU times recorded in the stages' run records.
"""

from __future__ import annotations

import json
import resource
import shutil
import time
from pathlib import Path


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _records_cpu(run_root) -> float:
    """Summed job CPU time of every run record under ``run_root/output``."""
    total = 0.0
    for jobs in sorted((Path(run_root) / "output").glob("*/jobs.json")):
        rows = json.loads(jobs.read_text())
        rows = rows["jobs"] if isinstance(rows, dict) else rows
        total += sum(float(row.get("cpu_s") or 0.0) for row in rows)
    return total


def seed_parameters(preset, overrides=None) -> dict:
    """The resolved simulation parameters of a campaign (checked; raises ConfigError)."""
    from shapepipe_modules.gold.cli import wanted_parameters

    return wanted_parameters(preset, overrides)


def run_seed(seed, preset, work_dir, config_dir, overrides=None, chain_workers=1, ng_splits=1, selection=None,
             n_boot=100, keep_work=False, log=print) -> tuple[dict, dict]:
    """Simulate, run and join one paired seed.

    Parameters
    ----------
    seed : int
        Simulation seed (the same for the +g and -g members).
    preset : str
        Simulation preset; ``overrides`` change its parameters by name.
    work_dir : path-like
        Scratch folder of this seed (``data/plus``, ``data/minus``,
        ``run/plus``, ``run/minus``); emptied first, so that a seed killed
        earlier is redone from the start, and removed at the end unless
        ``keep_work``.
    config_dir : path-like
        The GOLD configurations (``example/GOLD``).
    chain_workers : int
        Workers of each stage of the chains (``SLURM_CPUS_PER_TASK`` of the
        stages, which caps ``SMP_BATCH_SIZE``).
    selection : shapepipe_modules.validate.shear.Selection, optional
        Selection of the per-seed estimate (the pair table keeps every
        matched galaxy).
    n_boot : int
        Bootstrap draws of the per-seed estimate.

    Returns
    -------
    pairs : dict
        :func:`shapepipe_modules.validate.paired.join_pairs` of the two runs.
    info : dict
        ``seed``, ``preset``, ``parameters``, the per-seed ``m``, ``m_err``,
        ``c``, ``c_err``, counts, ``cpu_s`` (total) with its parts, ``wall_s``.

    Raises
    ------
    shapepipe_modules.gold.chain.ChainError
        A stage of a chain failed (the message names it).
    """
    from shapepipe_modules.gold.chain import run_chain
    from shapepipe_modules.gold.cli import simulate_pair
    from shapepipe_modules.validate.cli import find_final_catalogues, read_truth, truth_for
    from shapepipe_modules.validate.paired import join_pairs, member_table, paired_estimate
    from shapepipe_modules.validate.shear import Selection, read_final_catalogue

    seed = int(seed)
    work = Path(work_dir)
    parameters = seed_parameters(preset, overrides)
    if work.exists():
        log(f"seed {seed}: removing the unfinished work of an earlier attempt in {work}")
        shutil.rmtree(work)
    work.mkdir(parents=True)
    wall0, own0, children0 = time.perf_counter(), time.process_time(), _children_cpu()

    log(f"seed {seed}: simulating preset {preset} +g and -g into {work / 'data'}")
    plus_data, minus_data = simulate_pair(preset, work / "data", seed, 1, overrides)
    simulation_cpu = time.process_time() - own0 + _children_cpu() - children0

    extra_env = {"SLURM_CPUS_PER_TASK": str(max(int(chain_workers), 1))}
    chain_cpu, records_cpu, members = {}, {}, {}
    for sign, data in (("plus", plus_data), ("minus", minus_data)):
        log(f"seed {seed}: chain on {sign}")
        before = _children_cpu()
        run_root = work / "run" / sign
        run_chain(data, run_root, config_dir, ng_splits=ng_splits, log=log, extra_env=extra_env)
        chain_cpu[sign] = _children_cpu() - before
        records_cpu[sign] = _records_cpu(run_root)
        from shapepipe_modules.gold.chain import module_output, newest_run

        folder = module_output(newest_run(run_root.resolve() / "output", "run_sp_Mc"), "make_catalog")
        paths = find_final_catalogues([folder])
        catalogues = [(path.name, read_final_catalogue(path)) for path in paths]
        truths = [read_truth(truth_for(path, data)) for path in paths]
        members[sign] = member_table(catalogues, truths)
    pairs = join_pairs(members["plus"], members["minus"])
    estimate = paired_estimate(pairs, selection or Selection(), n_boot=n_boot, seed=seed, bins=(),
                               ring=bool(parameters.get("ring", False)))
    own_cpu = time.process_time() - own0
    total_cpu = own_cpu + _children_cpu() - children0
    info = {
        "seed": seed, "preset": preset, "overrides": overrides or {}, "parameters": parameters,
        "m": estimate["m"].tolist(), "m_err": estimate["m_err"].tolist(),
        "c": estimate["c"].tolist(), "c_err": estimate["c_err"].tolist(),
        "n_pairs": estimate["n_pairs"], "n_selected": estimate["n_selected"], "n_m": estimate["n_m"].tolist(),
        "n_plus": pairs["n_plus"], "n_minus": pairs["n_minus"],
        "cpu_s": total_cpu, "cpu_simulation_s": simulation_cpu, "cpu_chain_s": chain_cpu,
        "cpu_chain_records_s": records_cpu, "wall_s": time.perf_counter() - wall0,
        "chain_workers": int(chain_workers),
    }
    if not keep_work:
        shutil.rmtree(work, ignore_errors=True)
    log(f"seed {seed}: {info['n_selected']} pairs selected, m1 {info['m'][0]:+.4f} +- {info['m_err'][0]:.4f}, "
        f"m2 {info['m'][1]:+.4f} +- {info['m_err'][1]:.4f}; CPU {total_cpu:.0f} s")
    return pairs, info
