"""Job selection on the command line and worker counts from the allocation."""

from __future__ import annotations

import pytest

from shapepipe.errors import ConfigError
from shapepipe.selection import allocation_cpus, make_selection, worker_count


def test_numbers_from_comma_list_and_file(tmp_path):
    selection = make_selection(numbers="-001,-003")
    assert selection.numbers == ["-001", "-003"] and selection.label.startswith("n")
    listing = tmp_path / "tiles.txt"
    listing.write_text("# tiles\n-244-252\n\n-245-252  # second\n")
    selection = make_selection(numbers=str(listing))
    assert selection.numbers == ["-244-252", "-245-252"]
    with pytest.raises(ConfigError, match="not found"):
        make_selection(numbers=str(tmp_path / "absent.txt"))


def test_array_index_slices_the_list(tmp_path):
    listing = tmp_path / "n.txt"
    listing.write_text("\n".join(f"-{i:03d}" for i in range(7)))
    chunks = [make_selection(numbers=str(listing), array_index=k, per_task=3).numbers for k in range(3)]
    assert chunks == [["-000", "-001", "-002"], ["-003", "-004", "-005"], ["-006"]]
    assert make_selection(numbers=str(listing), array_index=2, per_task=3).label == "task2"
    with pytest.raises(ConfigError, match="selects nothing.*indices run from 0 to 2"):
        make_selection(numbers=str(listing), array_index=3, per_task=3)
    # The index comes from SLURM, then PBS Pro, then Torque, then Grid Engine.
    for variable in ("SLURM_ARRAY_TASK_ID", "PBS_ARRAY_INDEX", "PBS_ARRAYID"):
        chosen = make_selection(numbers=str(listing), array_index="env", environ={variable: "5"})
        assert chosen.numbers == ["-005"] and chosen.array_index == 5
    # Grid Engine numbers its tasks from 1 and says "undefined" outside an array.
    chosen = make_selection(numbers=str(listing), array_index="env", environ={"SGE_TASK_ID": "6"})
    assert chosen.numbers == ["-005"] and chosen.array_index == 5
    with pytest.raises(ConfigError, match="SLURM_ARRAY_TASK_ID"):
        make_selection(numbers=str(listing), array_index="env", environ={})
    with pytest.raises(ConfigError, match="SGE_TASK_ID"):
        make_selection(numbers=str(listing), array_index="env", environ={"SGE_TASK_ID": "undefined"})
    # Without --numbers, the configuration's NUMBER_LIST is sliced.
    assert make_selection(array_index=1, config_numbers=["-a", "-b"]).numbers == ["-b"]
    with pytest.raises(ConfigError, match="needs a number list"):
        make_selection(array_index=0)
    with pytest.raises(ConfigError, match="cannot be combined"):
        make_selection(exclusive="-001", numbers="-002")


def test_worker_count_follows_the_allocation():
    assert allocation_cpus({}) == (None, "")
    assert allocation_cpus({"SLURM_CPUS_PER_TASK": "4"}) == (4, "SLURM_CPUS_PER_TASK")
    assert allocation_cpus({"PBS_NCPUS": "2(x3)"})[0] == 2
    assert allocation_cpus({"NSLOTS": "8"}) == (8, "NSLOTS")
    assert worker_count(None, {}) == (1, "")
    count, note = worker_count(None, {"SLURM_CPUS_PER_TASK": "3"})
    assert count == 3 and "SLURM_CPUS_PER_TASK" in note
    count, note = worker_count(16, {"PBS_NCPUS": "4"})
    assert count == 4 and "capped" in note
    assert worker_count(2, {"PBS_NCPUS": "4"}) == (2, "")
