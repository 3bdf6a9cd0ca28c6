"""Fault-injection campaign: a GOLD chain stage on the tiny survey, killed at random moments, resumed.

Prepares the tiny survey and the GOLD stages before the target stage
(default ``Sx_exp_psfex``: sextractor on the tile and the exposure CCDs,
setools, psfex, psfinterp; CCDs with too few stars end unprocessable), runs
the target once uninterrupted (the reference), then N times with faults:
at a random moment the runner gets SIGTERM, SIGINT or SIGKILL, or a worker
gets SIGKILL (its PID taken from a running job's staging folder); after a
runner fault the run is resumed with ``--resume`` (and may be hit again, up
to ``--max-faults`` times). At the end of each run it checks that the
published outputs are byte-identical to the reference, that no process of
any attempt is left (after 5 s) and that no ``.staging`` folder is left.

    python benchmarks/fault_campaign.py -n 10            # prints the table

Exit status 0 when every run matched the reference with nothing left over.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from shapepipe_modules.gold.chain import STAGES, environment, gold_folder, newest_run, run_chain

FAULTS = ("runner SIGTERM", "runner SIGINT", "runner SIGKILL", "worker SIGKILL")


def outputs(run_dir: Path) -> dict:
    """Relative path -> bytes of every published output of a run folder."""
    return {p.relative_to(run_dir).as_posix(): p.read_bytes()
            for p in sorted(run_dir.glob("*/output/**/*")) if p.is_file()}


def run_folder_of(output_dir: Path, run_name: str, before: set) -> Path | None:
    new = [d for d in output_dir.glob(f"{run_name}_*") if d not in before and (d / "run.json").is_file()]
    return max(new, key=lambda d: json.loads((d / "run.json").read_text())["started"]) if new else None


def staged_worker(run_dir: Path) -> int | None:
    """PID of a worker holding a job now (from a staging folder name ``<label>.<pid>.<n>``)."""
    for folder in run_dir.glob("*/output/.staging/*"):
        try:
            return int(folder.name.rsplit(".", 2)[1])
        except (IndexError, ValueError):
            continue
    return None


def attempt(command, env, cwd, fault, delay, seen: set, output_dir, run_name, before):
    """Run once; inject ``fault`` after ``delay`` s unless the run ended. Returns (exit status, injected)."""
    process = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started = time.monotonic()
    injected = None
    while process.poll() is None:
        try:
            seen.update(c.pid for c in psutil.Process(process.pid).children(recursive=True))
        except psutil.Error:
            pass
        if fault and injected is None and time.monotonic() - started >= delay:
            if fault.startswith("runner"):
                process.send_signal(getattr(signal, fault.split()[1]))
                injected = fault
            else:
                run_dir = run_folder_of(output_dir, run_name, before)
                pid = staged_worker(run_dir) if run_dir else None
                if pid is not None and pid != process.pid:
                    try:
                        os.kill(pid, signal.SIGKILL)
                        injected = fault
                    except ProcessLookupError:
                        pass
        time.sleep(0.05)
    return process.returncode, injected


def leftover_processes(pids) -> int:
    deadline = time.monotonic() + 5.0
    alive = list(pids)
    while time.monotonic() < deadline:
        alive = [p for p in alive if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        if not alive:
            break
        time.sleep(0.1)
    return len(alive)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--runs", type=int, default=10, help="faulted runs (default 10)")
    parser.add_argument("--stage", default="Sx_exp_psfex", choices=[s.name for s in STAGES],
                        help="GOLD stage under test (earlier stages are run once to prepare)")
    parser.add_argument("--root", default="fault_campaign", help="work folder (default ./fault_campaign)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the fault schedule")
    parser.add_argument("--max-faults", type=int, default=2, help="faults per run at most (default 2)")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    root = Path(args.root).resolve()
    data, run_root = root / "data", root / "run"
    config_dir = Path(__file__).resolve().parents[1] / "example" / "GOLD"
    if not (config_dir / STAGES[0].config).is_file():
        config_dir = gold_folder()
    if not (data / "simulation.json").is_file():
        from shapepipe_modules.simulate import simulate

        simulate(preset="tiny", output_dir=data, seed=1, n_workers=1)
    names = [s.name for s in STAGES]
    index = names.index(args.stage)
    output_dir = run_root / "output"
    stage = STAGES[index]
    run_name = next(line.split("=", 1)[1].strip() for line in (config_dir / stage.config).read_text().splitlines()
                    if line.replace(" ", "").startswith("RUN_NAME="))
    if index and not list(output_dir.glob(f"{run_name}_*")):
        run_chain(data, run_root, config_dir, first=None, last=names[index - 1], log=lambda *a: None)
    env = {**os.environ, **environment(data, run_root, config_dir)}
    command = [sys.executable, "-m", "shapepipe.cli", "-c", str(config_dir / stage.config)]
    before = set(output_dir.glob(f"{run_name}_*"))
    clock = time.perf_counter()
    status = subprocess.run(command, env=env, cwd=root, capture_output=True, text=True)
    reference_wall = time.perf_counter() - clock
    if status.returncode != 0:
        print(status.stderr[-2000:])
        return 1
    reference = outputs(run_folder_of(output_dir, run_name, before))
    rows = []
    for trial in range(args.runs):
        before = set(output_dir.glob(f"{run_name}_*"))
        seen: set = set()
        injected = []
        faults_left = args.max_faults
        clock = time.perf_counter()
        code, hit = attempt(command, env, root, rng.choice(FAULTS), rng.uniform(0.3, 0.9 * reference_wall),
                            seen, output_dir, run_name, before)
        injected += [hit] if hit else []
        faults_left -= 1
        resumes = 0
        while code != 0 and resumes < args.max_faults + 2:
            time.sleep(0.5)
            fault = None
            if faults_left > 0 and rng.random() < 0.5:
                fault, faults_left = rng.choice(FAULTS[:3]), faults_left - 1
            code, hit = attempt(command + ["--resume"], env, root, fault,
                                rng.uniform(0.3, 0.9 * reference_wall), seen, output_dir, run_name, before)
            injected += [hit] if hit else []
            resumes += 1
        run_dir = run_folder_of(output_dir, run_name, before)
        found = outputs(run_dir) if run_dir else {}
        rows.append({
            "faults": injected, "resumes": resumes, "exit": code, "wall_s": time.perf_counter() - clock,
            "identical": found == reference,
            "differing": sorted(k for k in set(found) | set(reference) if found.get(k) != reference.get(k))[:3],
            "leftover_processes": leftover_processes(seen),
            "leftover_staging": len(list(run_dir.rglob(".staging*"))) if run_dir else -1,
        })
        row = rows[-1]
        print(f"run {trial + 1:>2}: faults {', '.join(injected) or 'none (finished first)'}; resumes {resumes}; "
              f"exit {code}; identical {row['identical']}; leftover processes {row['leftover_processes']}; "
              f"staging {row['leftover_staging']}; {row['wall_s']:.1f} s"
              + (f"; differing {row['differing']}" if not row["identical"] else ""), flush=True)
    counts = {kind: sum(r["faults"].count(kind) for r in rows) for kind in FAULTS}
    print()
    print(f"fault campaign: GOLD stage {args.stage} on the tiny survey ({len(reference)} output files, "
          f"reference run {reference_wall:.1f} s)")
    print(f"{'runs':<34} {len(rows)}")
    print(f"{'faults injected':<34} {sum(counts.values())} (" + ", ".join(f"{k} {v}" for k, v in counts.items()) + ")")
    print(f"{'outputs identical to the reference':<34} {sum(r['identical'] for r in rows)}/{len(rows)}")
    print(f"{'leftover processes':<34} {sum(r['leftover_processes'] for r in rows)}")
    print(f"{'leftover staging folders':<34} {sum(max(r['leftover_staging'], 0) for r in rows)}")
    print(f"{'resumes':<34} {sum(r['resumes'] for r in rows)}")
    ok = all(r["identical"] and r["exit"] == 0 and not r["leftover_processes"] and not r["leftover_staging"]
             for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
