"""shapepipe_batch: golden SLURM, PBS and Grid Engine scripts, their shell syntax, and the checks made before writing.

The golden files in tests/data/batch/ hold the scripts written for a fixed
configuration and number list, with the temporary folder shown as <ROOT>.
After an intended change of the scripts, rewrite them with
SHAPEPIPE_UPDATE_GOLDEN=1 and review the difference.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from shapepipe.cluster.batch import main, pbs_memory, pbs_walltime, sge_memory
from test_runner_helpers import make_inputs, make_modules, write_config

GOLDEN = Path(__file__).parent / "data" / "batch"
NUMBERS = ["-001", "-002", "-003", "-004", "-005"]


@pytest.fixture
def campaign(tmp_path):
    """Test modules, five inputs, a per-number config (OUTPUT_DIR from $SP_OUT) and a merge config."""
    mods = make_modules(tmp_path)
    inputs = make_inputs(tmp_path / "data", NUMBERS)
    listing = tmp_path / "numbers.txt"
    listing.write_text("# tiles of the campaign\n" + "\n".join(NUMBERS) + "\n")
    task = write_config(tmp_path / "task.ini", "t_copy", inputs, "$SP_OUT", mods, run_name="copy")
    merge = write_config(tmp_path / "merge.ini", "t_sum", inputs, "$SP_OUT", mods, run_name="total",
                         extra="[T_SUM]\nINPUT_DIR = all:t_copy\n")
    activate = tmp_path / "env" / "bin" / "activate"
    activate.parent.mkdir(parents=True)
    activate.write_text("# a virtual environment\n")
    return {"root": tmp_path, "task": task, "merge": merge, "numbers": listing, "activate": activate,
            "out": tmp_path / "scripts"}


def _arguments(c, scheduler, *extra):
    return ["--scheduler", scheduler, "-c", str(c["task"]), "--numbers", str(c["numbers"]), "--per-task", "2",
            "--throttle", "2", "--time", "1-02:00:00", "--mem", "8G", "--cpus", "4", "--partition", "long",
            "--account", "lensing", "--env", str(c["activate"]), "--env", "module load fftw",
            "--export", f"SP_OUT={c['root'] / 'output'}", "--chdir", str(c["root"]), "--merge-config",
            str(c["merge"]), "--merge-time", "00:30:00", "--merge-mem", "2G", "-o", str(c["out"]), *extra]


def _normalised(path: Path, root: Path) -> str:
    return path.read_text().replace(str(root), "<ROOT>")


@pytest.mark.parametrize("scheduler, extension", [("slurm", ".slurm"), ("pbs", ".pbs"), ("sge", ".sge")])
def test_scripts_match_golden_files(campaign, scheduler, extension, capsys):
    assert main(_arguments(campaign, scheduler)) == 0
    printed = capsys.readouterr()
    assert "3 task(s) over 5 number(s), 2 per task" in printed.out
    assert "reads outputs of t_copy, which the array will produce" in printed.err
    written = sorted(p.name for p in campaign["out"].iterdir())
    assert written == sorted(["copy_array" + extension, "copy_merge" + extension, "copy_submit.sh", "logs"])
    for kind in ("array", "merge", "submit"):
        name = f"copy_{kind}{'.sh' if kind == 'submit' else extension}"
        path = campaign["out"] / name
        assert os.access(path, os.X_OK)
        syntax = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert syntax.returncode == 0, f"{name}: {syntax.stderr}"
        golden = GOLDEN / f"{scheduler}_{kind}{'.sh' if kind == 'submit' else extension}"
        text = _normalised(path, campaign["root"])
        if os.environ.get("SHAPEPIPE_UPDATE_GOLDEN") == "1":
            golden.parent.mkdir(parents=True, exist_ok=True)
            golden.write_text(text)
        assert text == golden.read_text(), f"{name} differs from {golden}"


def test_slurm_array_details(campaign):
    """The facts the golden files encode, stated once more for the reader."""
    assert main(_arguments(campaign, "slurm")) == 0
    text = (campaign["out"] / "copy_array.slurm").read_text()
    assert "#SBATCH --array=0-2%2\n" in text  # ceil(5 / 2) = 3 tasks
    assert "#SBATCH --cpus-per-task=4\n#SBATCH --mem=8G\n#SBATCH --time=1-02:00:00\n" in text
    assert f"#SBATCH --output={campaign['out']}/logs/copy_%A_%a.out" in text
    assert f"export SHAPEPIPE_BATCH_SCRIPT={campaign['out']}/copy_array.slurm\n" in text
    assert f"export SP_OUT={campaign['root']}/output\n" in text
    assert text.rstrip().endswith(f"exec shapepipe_run -c {campaign['task']} --numbers {campaign['numbers']} "
                                  "--array-index --per-task 2 --resume-if-any")
    assert text.index("set -euo pipefail") < text.index(f"source {campaign['activate']}")
    submit = (campaign["out"] / "copy_submit.sh").read_text()
    assert "sbatch --parsable --dependency=afterany:$array_job" in submit


def test_pbs_array_details(campaign):
    assert main(_arguments(campaign, "pbs", "--dependency", "afterok")) == 0
    text = (campaign["out"] / "copy_array.pbs").read_text()
    assert "#PBS -J 0-2%2\n" in text
    assert "#PBS -l select=1:ncpus=4:mem=8gb\n#PBS -l walltime=26:00:00\n" in text
    assert f"cd {campaign['root']}\n" in text  # PBS jobs start in the home folder
    merge = (campaign["out"] / "copy_merge.pbs").read_text()
    assert "#PBS -l select=1:ncpus=1:mem=2gb\n#PBS -l walltime=00:30:00\n" in merge
    assert "qsub -W depend=afterok:$array_job" in (campaign["out"] / "copy_submit.sh").read_text()


def test_sge_array_details(campaign):
    """Grid Engine numbers tasks from 1; 4 CPUs come from a parallel environment; h_vmem is per slot."""
    assert main(_arguments(campaign, "sge", "--pe", "threads")) == 0
    text = (campaign["out"] / "copy_array.sge").read_text()
    assert "#$ -t 1-3\n#$ -tc 2\n#$ -S /bin/bash\n#$ -pe threads 4\n" in text  # ceil(5 / 2) = 3 tasks
    assert "#$ -l h_rt=26:00:00\n#$ -l h_vmem=2048M\n#$ -q long\n#$ -P lensing\n" in text  # 8G over 4 slots
    assert f"#$ -o {campaign['out']}/logs/copy.$JOB_ID.$TASK_ID.out" in text
    assert f"cd {campaign['root']}\n" in text
    assert "--array-index --per-task 2 --resume-if-any" in text  # the runner reads SGE_TASK_ID - 1
    merge = (campaign["out"] / "copy_merge.sge").read_text()
    assert "#$ -pe" not in merge and "#$ -l h_rt=00:30:00\n#$ -l h_vmem=2048M\n" in merge
    assert "qsub -terse -hold_jid $array_job" in (campaign["out"] / "copy_submit.sh").read_text()


def test_sge_refuses_afterok(campaign, capsys):
    error = _fails(_arguments(campaign, "sge", "--dependency", "afterok"), capsys)
    assert "--dependency afterok with --scheduler sge" in error and "-hold_jid" in error
    assert not campaign["out"].exists()


def test_sge_memory_per_slot():
    assert sge_memory("8G", 4) == "2048M"
    assert sge_memory("1000", 3) == "334M"  # rounded up: a task never gets less than asked
    assert sge_memory("1T", 1) == f"{1024 * 1024}M"
    assert sge_memory("512K", 1) == "1M"


def test_single_task_pbs_job_is_no_array(campaign):
    """PBS Pro arrays need two sub-jobs: one task is a plain job with an explicit index."""
    assert main(["--scheduler", "pbs", "-c", str(campaign["task"]), "--numbers", str(campaign["numbers"]),
                 "--per-task", "5", "--export", f"SP_OUT={campaign['root']}", "-o", str(campaign["out"])]) == 0
    text = (campaign["out"] / "copy_array.pbs").read_text()
    assert not [line for line in text.splitlines() if line.startswith(("#PBS -J", "#PBS -t"))]
    assert "--array-index 0 --per-task 5 --resume-if-any" in text
    assert not (campaign["out"] / "copy_merge.pbs").exists()


def test_default_environment_and_exported_config_variables(campaign, monkeypatch):
    """Without --env the Python's own environment is activated; config variables keep their values."""
    monkeypatch.setenv("SP_OUT", str(campaign["root"] / "elsewhere"))
    assert main(["--scheduler", "slurm", "-c", str(campaign["task"]), "--numbers", str(campaign["numbers"]),
                 "-o", str(campaign["out"]), "--job-name", "tiles"]) == 0
    text = (campaign["out"] / "tiles_array.slurm").read_text()
    activate = Path(sys.prefix) / "bin" / "activate"
    expected = f"source {activate}" if activate.is_file() else f"export PATH={Path(sys.executable).parent}:"
    assert expected in text
    assert f"export SP_OUT={campaign['root'] / 'elsewhere'}\n" in text
    assert "#SBATCH --array=0-4\n" in text and "--mem" not in text


def _fails(arguments, capsys):
    status = main(arguments)
    error = capsys.readouterr().err
    assert status == 2
    return error


def test_number_fitting_no_scheme_is_named_with_its_line(campaign, capsys):
    bad = campaign["root"] / "bad_numbers.txt"
    bad.write_text("-001\n-002\n# comment\n-03a\n")
    error = _fails(["--scheduler", "slurm", "-c", str(campaign["task"]), "--numbers", str(bad),
                    "--export", f"SP_OUT={campaign['root']}", "-o", str(campaign["out"])], capsys)
    assert f"{bad}:4: number -03a fits no numbering scheme of {campaign['task']}" in error
    assert "t_copy '-000'" in error
    assert not campaign["out"].exists()


def test_repeated_number_and_empty_list(campaign, capsys):
    twice = campaign["root"] / "twice.txt"
    twice.write_text("-001\n-002\n-001\n")
    error = _fails(["--scheduler", "slurm", "-c", str(campaign["task"]), "--numbers", str(twice),
                    "--export", f"SP_OUT={campaign['root']}"], capsys)
    assert f"{twice}:3: number -001 repeated (first on line 1)" in error
    empty = campaign["root"] / "empty.txt"
    empty.write_text("# nothing yet\n")
    error = _fails(["--scheduler", "slurm", "-c", str(campaign["task"]), "--numbers", str(empty)], capsys)
    assert f"--numbers {empty}: the number list holds no number" in error


def test_bad_config_is_named(campaign, capsys):
    broken = campaign["root"] / "broken.ini"
    broken.write_text(campaign["task"].read_text().replace("[JOB]", "[JOB]\nSMP_BATCH_SIZ = 2"))
    error = _fails(["--scheduler", "pbs", "-c", str(broken), "--numbers", str(campaign["numbers"]),
                    "--export", f"SP_OUT={campaign['root']}", "-o", str(campaign["out"])], capsys)
    assert f"-c {broken}" in error and "SMP_BATCH_SIZ" in error and "unknown key" in error
    assert not campaign["out"].exists()
    missing = _fails(["--scheduler", "pbs", "-c", str(campaign["root"] / "nope.ini"), "--numbers",
                      str(campaign["numbers"])], capsys)
    assert "nope.ini: file not found" in missing


def test_merge_config_checks(campaign, capsys):
    """Deferred all: references need the array's OUTPUT_DIR; other merge problems are errors."""
    elsewhere = campaign["root"] / "merge_elsewhere.ini"
    elsewhere.write_text(campaign["merge"].read_text().replace("$SP_OUT", str(campaign["root"] / "other")))
    error = _fails(["--scheduler", "slurm", "-c", str(campaign["task"]), "--numbers", str(campaign["numbers"]),
                    "--export", f"SP_OUT={campaign['root'] / 'output'}", "--merge-config", str(elsewhere)], capsys)
    assert f"--merge-config {elsewhere}" in error and "will find no run of the array" in error
    wrong = campaign["root"] / "merge_wrong.ini"
    wrong.write_text(campaign["merge"].read_text().replace("all:t_copy", "all:t_chain"))
    error = _fails(["--scheduler", "slurm", "-c", str(campaign["task"]), "--numbers", str(campaign["numbers"]),
                    "--export", f"SP_OUT={campaign['root'] / 'output'}", "--merge-config", str(wrong)], capsys)
    assert f"--merge-config {wrong}" in error and "all:t_chain" in error


@pytest.mark.parametrize("option, value, message", [
    ("--time", "4h", "HH:MM:SS"), ("--mem", "lots", "K, M, G or T"), ("--per-task", "0", "at least 1"),
    ("--throttle", "0", "at least 1"), ("--job-name", "2fast", "starting with a letter"),
    ("--export", "SP_OUT", "NAME=VALUE"),
])
def test_bad_options(campaign, capsys, option, value, message):
    error = _fails(["--scheduler", "slurm", "-c", str(campaign["task"]), "--numbers", str(campaign["numbers"]),
                    option, value, "-o", str(campaign["out"])], capsys)
    assert f"{option} " in error and message in error


def test_submit_without_scheduler_fails_clearly(campaign, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(campaign["root"] / "empty_path"))
    status = main(["--scheduler", "slurm", "-c", str(campaign["task"]), "--numbers", str(campaign["numbers"]),
                   "--export", f"SP_OUT={campaign['root']}", "-o", str(campaign["out"]), "--submit"])
    assert status == 1
    assert "sbatch not found on PATH" in capsys.readouterr().err
    assert (campaign["out"] / "copy_array.slurm").is_file()  # written, then not submitted


def test_unit_conversions_for_pbs():
    assert pbs_memory("8G") == "8gb" and pbs_memory("500M") == "500mb" and pbs_memory("2000") == "2000mb"
    assert pbs_walltime("04:00:00") == "04:00:00" and pbs_walltime("2-01:30:00") == "49:30:00"


def test_example_scripts_are_valid_and_consistent():
    """example/cluster: every script parses; the arrays match their number lists."""
    folder = Path(__file__).resolve().parents[1] / "example" / "cluster"
    scripts = sorted(folder.glob("*/*"))
    assert {p.suffix for p in scripts} == {".slurm", ".pbs", ".sh"}
    for path in scripts:
        syntax = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert syntax.returncode == 0, f"{path}: {syntax.stderr}"
    exposures = [line for line in (folder / "exposures.txt").read_text().splitlines()
                 if line.strip() and not line.startswith("#")]
    n_tasks = -(-len(exposures) // 2)  # --per-task 2
    assert f"#SBATCH --array=0-{n_tasks - 1}%4\n" in (folder / "slurm" / "exposures_array.slurm").read_text()
    assert f"#PBS -J 0-{n_tasks - 1}%4\n" in (folder / "pbs" / "exposures_array.pbs").read_text()
