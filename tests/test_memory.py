"""Peak real memory per job: sampled anonymous memory, not file pages; shown by status, used by batch."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from shapepipe import memory
from shapepipe.cluster.batch import memory_from_runs
from shapepipe.cli import main
from shapepipe.cluster.status import format_memory, peak_memory
from test_runner_helpers import make_inputs, write_config

pytestmark = pytest.mark.skipif(not memory.available(), reason="needs Linux /proc RssAnon")

SIZE_MB = 240

CHILD = """
import mmap, sys, time
import numpy as np
mode, size, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if mode == "alloc":
    block = np.ones(size * 2**20 // 8)
    total = float(block.sum())
else:
    with open(path, "rb") as handle:
        pages = np.frombuffer(mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ), np.uint8)
        total = int(pages[::4096].sum())
print("ready", flush=True)
time.sleep(0.6)
"""

MODULES = '''
import mmap
import time
import numpy as np
from pathlib import Path
from shapepipe.module import module
from shapepipe.options import Option


@module(name="t_alloc", version="0.1", file_pattern=("in",), file_ext=".txt", numbering_scheme="-000",
        options=(Option("MB", "int", 10, "megabytes"), Option("MAP", "str", "", "file to map instead")))
def t_alloc(job):
    if job.options["MAP"]:
        with open(job.options["MAP"], "rb") as handle:
            pages = np.frombuffer(mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ), np.uint8)
            total = int(pages[::4096].sum())
    else:
        block = np.ones(job.options["MB"] * 2**20 // 8)
        total = float(block.sum())
        time.sleep(0.3)  # the sampler (every 20 ms) sees arrays that live longer than a few samples
        del block
    job.output_path(f"out{job.number}.txt").write_text(str(total))
'''


@pytest.fixture(scope="module")
def big_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("mapped") / "big.bin"
    with open(path, "wb") as handle:
        handle.write(b"\1" * (SIZE_MB * 2**20))
    return path


def _peak_of_child(mode, path) -> float:
    child = subprocess.Popen([sys.executable, "-c", CHILD, mode, str(SIZE_MB), str(path)], stdout=subprocess.PIPE,
                             text=True)
    sampler = memory.PeakSampler(child.pid, interval=0.01).start()
    assert child.stdout.readline().strip() == "ready"
    child.wait()
    return sampler.stop()


def test_sampler_counts_arrays_not_mapped_file_pages(big_file):
    allocated = _peak_of_child("alloc", big_file)
    mapped = _peak_of_child("map", big_file)
    assert SIZE_MB <= allocated < SIZE_MB + 150  # the array plus the interpreter and numpy
    assert mapped < allocated - 0.8 * SIZE_MB  # the mapped pages were read but are not real memory


def test_sampler_follows_descendants(big_file):
    """A program started by the job (here a shell starting python) is part of the job's memory."""
    shell = subprocess.Popen(["/bin/sh", "-c", f'"{sys.executable}" -c \'{CHILD}\' alloc {SIZE_MB} x'],
                             stdout=subprocess.PIPE, text=True)
    sampler = memory.PeakSampler(shell.pid, interval=0.01).start()
    assert shell.stdout.readline().strip() == "ready"
    shell.wait()
    assert sampler.stop() >= SIZE_MB


@pytest.mark.parametrize("timeout", ["", "TIMEOUT = 60"])
def test_runner_records_real_peak_per_job(tmp_path, big_file, timeout, capsys):
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "alloc_modules.py").write_text(MODULES)
    inputs = make_inputs(tmp_path / "data", ["-001", "-002"])
    out = tmp_path / "out"
    config = write_config(tmp_path / "c.ini", "t_alloc, t_alloc", inputs, out, mods, job=timeout, batch=1,
                          extra=f"[T_ALLOC_RUN_1]\nMB = {SIZE_MB}\n[T_ALLOC_RUN_2]\nMAP = {big_file}\n")
    assert main(["-c", str(config)]) == 0
    run_dir = next(out.glob("test_*"))
    rows = json.loads((run_dir / "jobs.json").read_text())
    allocating = [r for r in rows if r["module_run"] == "t_alloc_run_1"]
    mapping = [r for r in rows if r["module_run"] == "t_alloc_run_2"]
    assert all(r["peak_memory_mb"] >= SIZE_MB for r in allocating)
    # Real memory of the mapping jobs stays at the worker's size, their resident size includes the file.
    assert all(r["peak_rss_mb"] >= SIZE_MB for r in mapping)
    # (A short job can end before the runner's first sample of it on a loaded machine: the job samples itself too.)
    sizes = [(r["module_run"], r["number"], r["peak_memory_mb"], r["peak_rss_mb"]) for r in rows]
    assert all(r["peak_memory_mb"] < r["peak_rss_mb"] - 0.8 * SIZE_MB for r in mapping), sizes
    csv_header = (run_dir / "jobs.csv").read_text().splitlines()[0]
    assert csv_header.endswith("peak_rss_mb")

    table = peak_memory([run_dir])
    assert table["t_alloc_run_1"]["jobs"] == 2
    assert table["t_alloc_run_1"]["peak_memory_mb"] == max(r["peak_memory_mb"] for r in allocating)
    text = "\n".join(format_memory(table))
    assert "t_alloc_run_1" in text and f"{table['t_alloc_run_1']['peak_memory_mb']:.0f}" in text

    mem, note = memory_from_runs(str(out), cpus=2)
    expected = 2 * table["t_alloc_run_1"]["peak_memory_mb"] * 1.25 + 512
    assert mem == f"{int(-(-expected // 1))}M" and "t_alloc_run_1" in note


def test_status_prints_memory_and_batch_sizes_mem(tmp_path, capsys):
    from shapepipe.cluster.batch import main as batch_main
    from shapepipe.cluster.status import main as status_main

    run_dir = tmp_path / "out" / "r_1"
    run_dir.mkdir(parents=True)
    rows = [{"module_run": "ngmix", "module": "ngmix", "number": f"-{k}", "status": "done",
             "peak_memory_mb": 100.0 * k, "peak_rss_mb": 150.0 * k, "started": 0.0, "log": ""} for k in (1, 2, 3)]
    rows.append({"module_run": "ngmix", "module": "ngmix", "number": "-9", "status": "skipped_upstream",
                 "peak_memory_mb": 0.0, "started": 0.0, "log": ""})
    (run_dir / "jobs.json").write_text(json.dumps(rows))
    (run_dir / "run.json").write_text(json.dumps({
        "format": 1, "run_name": "r", "run_dir": str(run_dir), "status": "done", "started": "2024-01-01T00:00:00",
        "modules": [{"module_run": "ngmix", "module": "ngmix", "status": "done"}]}))
    status_main([str(tmp_path / "out")])
    printed = capsys.readouterr().out
    line = next(l for l in printed.splitlines() if l.startswith("ngmix") and "-3" in l)
    assert line.split() == ["ngmix", "3", "300", "450", "-3"]

    config = tmp_path / "c.ini"
    config.write_text("[DEFAULT]\nRUN_NAME = r\n")
    numbers = tmp_path / "n.txt"
    numbers.write_text("-1\n")
    assert batch_main(["--scheduler", "slurm", "-c", str(config), "--numbers", str(numbers), "--mem", "8G",
                       "--mem-from", str(tmp_path / "out"), "-o", str(tmp_path / "b")]) != 0
    assert "--mem and --mem-from" in capsys.readouterr().err
    mem, _ = memory_from_runs(str(tmp_path / "out"), cpus=4)
    assert mem == f"{4 * 300 * 1.25 + 512:.0f}M"


def test_keep_false_deletes_scratch_outputs_after_a_successful_run(tmp_path):
    from test_runner_helpers import make_modules

    mods = make_modules(tmp_path)
    inputs = make_inputs(tmp_path / "data", ["-001", "-002"])
    out = tmp_path / "out"
    config = write_config(tmp_path / "c.ini", "t_copy, t_chain", inputs, out, mods, extra="[T_COPY]\nKEEP = False\n")
    assert main(["-c", str(config)]) == 0
    run_dir = next(out.glob("test_*"))
    record = json.loads((run_dir / "run.json").read_text())
    entries = {m["module_run"]: m for m in record["modules"]}
    # t_chain read t_copy's outputs during the run; then they went, t_chain's stayed.
    assert sorted(p.name for p in (run_dir / "t_chain" / "output").glob("up*.txt")) == ["up-001.txt", "up-002.txt"]
    assert not [p for p in (run_dir / "t_copy" / "output").rglob("*") if p.is_file()]
    # out-00N.txt holds "value-00N" (9 bytes); sub/side-00N.txt a random integer (1 byte or more).
    assert entries["t_copy"]["outputs_deleted"] >= 2 * (9 + 1) and entries["t_copy"]["keep"] is False
    assert entries["t_chain"].get("outputs_deleted") is None and entries["t_chain"]["keep"] is True
    # A later run cannot resolve the deleted outputs: a validation error naming the reference.
    later = write_config(tmp_path / "d.ini", "t_chain", inputs, out, mods, run_name="later",
                         extra="[T_CHAIN]\nINPUT_DIR = last:t_copy\n")
    assert main(["-c", str(later)]) == 2


def test_failed_run_keeps_scratch_outputs(tmp_path):
    from test_runner_helpers import make_modules

    mods = make_modules(tmp_path)
    inputs = make_inputs(tmp_path / "data", ["-001", "-002"])
    out = tmp_path / "out"
    config = write_config(tmp_path / "c.ini", "t_copy", inputs, out, mods,
                          extra="[T_COPY]\nKEEP = False\nFAIL_ON = -002\n")
    assert main(["-c", str(config)]) == 1
    run_dir = next(out.glob("test_*"))
    assert (run_dir / "t_copy" / "output" / "out-001.txt").is_file()  # kept for the resume


def test_gold_keep_final_deletes_all_but_the_kept_module_runs(tmp_path):
    from shapepipe.errors import ShapePipeError
    from shapepipe.records import parse_reference, resolve_reference
    from shapepipe_modules.gold.chain import delete_intermediates

    run_dir = tmp_path / "output" / "run_sp_Mc_1"
    entries = []
    for name, size in (("split_exp", 3000), ("make_catalog", 500)):
        output = run_dir / name / "output"
        (output / "sub").mkdir(parents=True)
        (output / "a.fits").write_bytes(b"x" * size)
        (output / "sub" / "b.fits").write_bytes(b"y" * size)
        entries.append({"module_run": name, "module": name, "status": "done", "output_dir": str(output)})
    (run_dir / "run.json").write_text(json.dumps({"run_dir": str(run_dir), "run_name": "run_sp_Mc",
                                                  "status": "done", "modules": entries}))
    freed, kept = delete_intermediates([run_dir], log=lambda *_: None)
    assert (freed, kept) == (6000, 1000)
    assert not list((run_dir / "split_exp" / "output").rglob("*.fits"))
    assert (run_dir / "make_catalog" / "output" / "sub" / "b.fits").is_file()
    record = json.loads((run_dir / "run.json").read_text())
    assert [m.get("outputs_deleted") for m in record["modules"]] == [6000, None]
    def reference(name):
        return parse_reference(f"last:{name}", lambda module: module)

    assert resolve_reference(reference("make_catalog"), [record], tmp_path / "output")
    with pytest.raises(ShapePipeError):
        resolve_reference(reference("split_exp"), [record], tmp_path / "output")


def test_forked_job_reports_its_own_peak_when_the_runner_samples_nothing(tmp_path, big_file, monkeypatch):
    """A short forked job can end before the runner's first sample (a loaded machine): its own samples count."""
    import os

    from shapepipe import jobs

    (tmp_path / "map_module.py").write_text(textwrap.dedent('''
        import mmap
        import numpy as np

        def map_file(job):
            with open(job.options["MAP"], "rb") as handle:
                pages = np.frombuffer(mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ), np.uint8)
                return {"total": int(pages[::4096].sum())}
        '''))
    runner_pid = os.getpid()

    class BlindInRunner(memory.PeakSampler):
        def sample(self):
            return 0 if os.getpid() == runner_pid else super().sample()

    monkeypatch.setattr(jobs, "PeakSampler", BlindInRunner)
    task = jobs.Task(module="t", module_run="t", number="-001", inputs=[], input_table={},
                     options={"MAP": str(big_file)}, function=("map_module", "map_file"),
                     module_dirs=(str(tmp_path),), output_dir=str(tmp_path / "output"),
                     log_dir=str(tmp_path / "logs"), run_dir=str(tmp_path), timeout=60)
    row = jobs.run_task(task)
    assert row["status"] == "done", row
    # Without the job's own samples the runner would fall back to the resident size, file pages included.
    assert row["peak_rss_mb"] >= SIZE_MB
    assert 0 < row["peak_memory_mb"] < row["peak_rss_mb"] - 0.8 * SIZE_MB, row
