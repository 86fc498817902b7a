"""Array job scripts for SLURM and PBS Pro, and submission through fake sbatch / qsub on PATH."""

import json
import os
import stat
import subprocess
import sys

import pytest

from denoisefeat.jobs import SubmitError, job_scripts, parse_spec, submit

RUN = {"model": "tiny-class-unet", "store": "o.zarr", "samples": 10, "steps": 2, "batch_size": 4}
CLUSTER = {"walltime": "1-02:00:00", "cpus": 4, "mem": "16gb", "gpus": 1, "max_parallel": 2, "queue": "gpu",
           "account": "proj7", "venv": "/opt/venv", "setup": ["module load cuda/12"],
           "extra_header": ["#SBATCH --qos=low", "#PBS -l place=scatter"]}


def _spec(tmp_path, **extra):
    data = {"run": RUN, "features": {"metrics": ["edge_density"]}, "cluster": CLUSTER, **extra}
    return parse_spec(data, path=tmp_path / "study.toml", check_model=False)


def test_slurm_scripts(tmp_path):
    spec = _spec(tmp_path)
    scripts = job_scripts(spec, scheduler="slurm")
    assert list(scripts) == ["stage0", "stage1", "merge"]
    s0, s1, merge = scripts["stage0"], scripts["stage1"], scripts["merge"]
    logs = spec.jobs_dir / "logs"
    for line in ["#SBATCH --array=0-2%2", "#SBATCH --time=1-02:00:00", "#SBATCH --cpus-per-task=4",
                 "#SBATCH --mem=16G", "#SBATCH --gres=gpu:1", "#SBATCH --partition=gpu", "#SBATCH --account=proj7",
                 "#SBATCH --qos=low", f"#SBATCH --output={logs}/%x-%A_%a.out", ". /opt/venv/bin/activate",
                 "module load cuda/12", f"denoisefeat jobs run {spec.path} --offset 0"]:
        assert line in s0.splitlines() or any(li.startswith(line) for li in s0.splitlines()), line
    assert "#PBS" not in s0 and s0.startswith("#!/bin/bash\n")
    assert any(li.startswith(f"denoisefeat jobs run {spec.path} --offset 3") for li in s1.splitlines())
    assert "#SBATCH --array" not in merge and "--gres" not in merge and "#SBATCH --cpus-per-task=1" in merge
    assert f"denoisefeat jobs merge {spec.path}" in merge
    for text in scripts.values():  # valid bash
        subprocess.run(["bash", "-n"], input=text, text=True, check=True)


def test_pbs_scripts(tmp_path):
    spec = _spec(tmp_path)
    scripts = job_scripts(spec, scheduler="pbs")
    s0 = scripts["stage0"].splitlines()
    logs = spec.jobs_dir / "logs"
    for line in ["#PBS -J 0-2", "#PBS -l select=1:ncpus=4:mem=16gb:ngpus=1", "#PBS -l walltime=26:00:00",
                 "#PBS -q gpu", "#PBS -A proj7", "#PBS -W max_run_subjobs=2", "#PBS -l place=scatter",
                 f"#PBS -o {logs}/dft-study-s0.^array_index^.out"]:
        assert line in s0, line
    assert not any(li.startswith("#SBATCH") for li in s0)
    merge = scripts["merge"]
    assert "#PBS -J" not in merge and "#PBS -l select=1:ncpus=1:mem=16gb\n" in merge
    # PBS Pro has no array of one subjob: a single task is a plain job with its index
    one = parse_spec({"run": {**RUN, "samples": 4}, "cluster": {"conda_env": "dft"}}, path=tmp_path / "one.toml",
                     check_model=False)
    text = job_scripts(one, scheduler="pbs")["stage0"]
    assert "#PBS -J" not in text and f"jobs run {one.path} --task 0" in text and "conda activate dft" in text
    with pytest.raises(ValueError, match="pbs, slurm"):
        job_scripts(spec, scheduler="lsf")


def _fake(bin_dir, name, output):
    """A fake sbatch/qsub: appends its arguments to calls.jsonl, prints a job id."""
    script = bin_dir / name
    counter = bin_dir / f"{name}.count"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, pathlib, sys\n"
        f"c = pathlib.Path({str(counter)!r}); n = int(c.read_text()) + 1 if c.exists() else 1; c.write_text(str(n))\n"
        f"calls = open({str(bin_dir / 'calls.jsonl')!r}, 'a')\n"
        "calls.write(json.dumps([sys.argv[0].rsplit('/', 1)[-1], *sys.argv[1:]]) + '\\n')\n"
        f"print({output!r}.format(n=n))\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)


def _calls(bin_dir):
    return [json.loads(line) for line in (bin_dir / "calls.jsonl").read_text().splitlines()]


@pytest.fixture
def fake_bin(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))  # only the fakes: a real sbatch/qsub here must not be called
    return bin_dir


def test_sbatch_is_called_with_dependencies_and_ids_recorded(tmp_path, fake_bin):
    _fake(fake_bin, "sbatch", "{n}00;cluster1")
    spec = _spec(tmp_path)
    record = submit(spec, scheduler="slurm")
    assert record["jobs"] == {"stage0": "100", "stage1": "200", "merge": "300"}
    scripts = record["scripts"]
    assert _calls(fake_bin) == [
        ["sbatch", "--parsable", scripts["stage0"]],
        ["sbatch", "--parsable", "--dependency=afterok:100", scripts["stage1"]],
        ["sbatch", "--parsable", "--dependency=afterok:100:200", scripts["merge"]],
    ]
    history = json.loads((spec.jobs_dir / "submitted.json").read_text())
    assert history[-1]["jobs"] == record["jobs"] and history[-1]["scheduler"] == "slurm"
    assert os.access(scripts["stage0"], os.X_OK)


def test_qsub_is_called_with_pbs_dependencies(tmp_path, fake_bin):
    _fake(fake_bin, "qsub", "{n}[].pbsserver")
    spec = _spec(tmp_path)
    record = submit(spec, scheduler="pbs")
    assert record["jobs"] == {"stage0": "1[].pbsserver", "stage1": "2[].pbsserver", "merge": "3[].pbsserver"}
    assert _calls(fake_bin)[1:] == [
        ["qsub", "-W", "depend=afterok:1[].pbsserver", record["scripts"]["stage1"]],
        ["qsub", "-W", "depend=afterok:1[].pbsserver:2[].pbsserver", record["scripts"]["merge"]],
    ]


def test_dry_run_and_submission_errors(tmp_path, fake_bin):
    spec = _spec(tmp_path)
    dry = submit(spec, scheduler="slurm", dry_run=True)
    assert dry["jobs"] == {} and dry["commands"][2][2] == "--dependency=afterok:<stage0>:<stage1>"
    assert not (spec.jobs_dir / "submitted.json").exists()
    with pytest.raises(SubmitError, match="sbatch is not on PATH"):
        submit(spec, scheduler="slurm")
    _fake(fake_bin, "qsub", "qsub: Unknown queue")
    with pytest.raises(SubmitError, match="Could not read a job id"):
        submit(spec, scheduler="pbs")


def test_hpc_wrappers_parse_and_call_existing_commands():
    import re
    from pathlib import Path

    from typer.testing import CliRunner

    from denoisefeat.cli import app

    hpc = Path(__file__).parents[1] / "hpc"
    scripts = sorted((hpc / "pbs").glob("*.pbs")) + sorted((hpc / "slurm").glob("*.sbatch"))
    assert {p.stem for p in scripts} >= {"setup", "extract", "analyze", "report", "ablation", "merge"}
    helps = {}
    for script in [*scripts, *hpc.glob("*.sh")]:
        text = script.read_text()
        subprocess.run(["bash", "-n", str(script)], check=True)
        if script.suffix in (".pbs", ".sbatch"):
            prefix = "#PBS" if script.suffix == ".pbs" else "#SBATCH"
            assert any(line.startswith(prefix) for line in text.splitlines()), script
            assert ("#SBATCH" in text) != ("#PBS " in text), script
        code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
        for command, options in re.findall(r"(?:^|&&|\|\|)\s*denoisefeat ((?:jobs )?[a-z]+)(.*)$", code, re.M):
            args = command.split()
            if args[0] == "jobs" and len(args) == 1:
                continue
            if command not in helps:
                res = CliRunner().invoke(app, [*args, "--help"], terminal_width=200)
                assert res.exit_code == 0, (script, command, res.output)
                helps[command] = res.output
            for option in re.findall(r"(--[a-z][a-z-]+)", options):
                assert option in helps[command], (script, command, option)
    assert set(helps) >= {"extract", "analyze", "report", "jobs run", "jobs merge", "jobs validate", "jobs submit"}
