"""The README's SLURM recipe and RELION qsub template, run on a real one-node SLURM cluster.

The cluster is the ``slurm_cluster`` fixture (tests/slurm_cluster.py: slurmctld + slurmd of
Debian's slurm-wlm on 127.0.0.1, started for the session, skipped when not installed). The recipe
and the template are read from README.md when it holds them, else from docs/slurm.md, and run
exactly as written:

1. the recipe (``sbatch --array`` of ``deeppicker pick --shard i/n`` + a dependent ``deeppicker
   merge``) on four 256 px micrographs in 2 shards must give the coordinate files, summary and
   RELION node of an unsharded run;
2. the template, filled in as RELION fills it (``RelionJob::saveJobSubmissionScript`` of RELION 3.1
   / 4.0, including its rule for the ``XXXcommandXXX`` line), submitted with ``sbatch`` like
   RELION's "Submit to queue", must run the External pick job to RELION_JOB_EXIT_SUCCESS.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import starfile
import torch

from deeppicker_relion.cli.main import main as cli
from deeppicker_relion.io import relion_nodes
from deeppicker_relion.model import build_model, save_model
from deeppicker_relion.jobs.pick import read_summary
from deeppicker_relion.simulation.simulate import simulate_dataset
from slurm_cluster import slurm_cluster  # noqa: F401  (pytest fixture)

pytestmark = pytest.mark.slurm

ROOT = Path(__file__).resolve().parents[1]
RECIPE_MARK = "# deeppicker SLURM recipe"
TEMPLATE_MARK = "# deeppicker RELION qsub template"


def doc_block(mark: str) -> str:
    """The fenced code block holding ``mark``: from README.md if it is there, else docs/slurm.md."""
    for doc in (ROOT / "README.md", ROOT / "docs" / "slurm.md"):
        if doc.is_file():
            for block in re.findall(r"^```[^\n]*\n(.*?)^```", doc.read_text(), flags=re.S | re.M):
                if mark in block:
                    return block
    raise AssertionError(f"no code block with {mark!r} in README.md or docs/slurm.md")


def relion_submit_script(template: str, commands: list[str], outputname: str, queue: str, nr_threads: int,
                         min_dedicated: int = 1, nr_mpi: int = 1, extras: dict[int, str] | None = None) -> str:
    """``run_submit.script`` as RELION writes it (src/pipeline_jobs.cpp, saveJobSubmissionScript):
    every variable replaced line by line; a line with XXXcommandXXX is repeated with each command
    in its place when the command contains ``relion_`` and there is one MPI process (or it is an
    ``_mpi`` program), else the bare command replaces the line. Extras exist only when defined."""
    ncores = nr_mpi * nr_threads
    replacing = {
        "XXXmpinodesXXX": str(nr_mpi), "XXXthreadsXXX": str(nr_threads), "XXXcoresXXX": str(ncores),
        "XXXdedicatedXXX": str(min_dedicated), "XXXnodesXXX": str(math.ceil(ncores / min_dedicated)),
        "XXXnameXXX": outputname, "XXXerrfileXXX": outputname + "run.err", "XXXoutfileXXX": outputname + "run.out",
        "XXXqueueXXX": queue,
    }
    replacing.update({f"XXXextra{i}XXX": value for i, value in (extras or {}).items()})
    out = []
    for line in template.splitlines():
        for key in sorted(replacing):  # std::map order
            line = line.replace(key, replacing[key])
        if "XXXcommandXXX" not in line:
            out.append(line)
            continue
        for command in commands:
            if "relion_" in command and ("_mpi`" in command or nr_mpi == 1):
                out.append(line.replace("XXXcommandXXX", command, 1))
            else:
                out.append(command)
    return "\n".join(out) + "\n\n"


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A RELION-style project: Micrographs/ (4 x 256 px), micrographs.star, a random model."""
    base = tmp_path_factory.mktemp("slurm_project")
    sim = simulate_dataset(base / "sim", n_micrographs=4, shape=(256, 256), pixel_size_A=5.0, maps=["proteasome"],
                           seed=21, particles_per_micrograph=(4, 6), empty_fraction=0.0, snr=(0.5, 1.0),
                           contamination_fraction=0.0, carbon_fraction=0.0)
    root = base / "project"
    (root / "Micrographs").mkdir(parents=True)
    names = []
    for i, path in enumerate(sim["micrograph_path"]):
        shutil.copy(base / "sim" / path, root / "Micrographs" / f"mic{i}.mrc")
        names.append(f"Micrographs/mic{i}.mrc")
    optics = pd.DataFrame({"rlnOpticsGroupName": ["g1"], "rlnOpticsGroup": [1], "rlnMicrographPixelSize": [5.0]})
    starfile.write({"optics": optics, "micrographs": pd.DataFrame({"rlnMicrographName": names, "rlnOpticsGroup": 1})},
                   root / "micrographs.star")
    torch.manual_seed(2)
    save_model(build_model(), root / "model.safetensors", {"recipe": "random, for tests"})
    return root


def run_cli(root: Path, *argv: str) -> None:
    old = os.getcwd()
    os.chdir(root)
    try:
        assert cli(list(argv)) == 0
    finally:
        os.chdir(old)


def texts(folder: Path) -> dict[str, str]:
    """Coordinate and candidate files (time-stamp comment left out)."""
    return {
        p.relative_to(folder).as_posix(): "\n".join(ln for ln in p.read_text().splitlines() if not ln.startswith("#"))
        for p in sorted(folder.rglob("*.star"))
        if p.relative_to(folder).parts[0] in ("Micrographs", "candidates")
    }


def summary_rows(path: Path) -> list[tuple]:
    table = read_summary(path)
    return list(zip(table["rlnMicrographName"], table["status"], table["n_picks"], table["n_candidates"]))


def test_readme_recipe_array_then_merge_equals_unsharded(slurm_cluster, project: Path) -> None:  # noqa: F811
    pick_args = "--diameter 180 --weights model.safetensors --no-report"
    run_cli(project, "pick", "micrographs.star", *pick_args.split(), "-o", "reference", "-j", "1")
    run_cli(project, "merge", "reference", "--in-mics", "micrographs.star", "--no-report")

    recipe = project / "deeppicker_slurm.sh"
    recipe.write_text(doc_block(RECIPE_MARK))
    env = {**slurm_cluster.env, "MICS": "micrographs.star", "OUT": "External/job010/", "SHARDS": "2",
           "PICK_ARGS": pick_args, "MERGE_ARGS": "--cs --no-report"}
    res = subprocess.run(["bash", str(recipe)], cwd=project, env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    ids = re.search(r"pick array job (\d+) .* merge job (\d+)", res.stdout)
    assert ids, res.stdout
    out = project / "External/job010"
    logs = lambda: "\n".join(f"--- {p.name}\n{p.read_text()}" for p in sorted(out.glob("slurm-*.out")))  # noqa: E731
    assert slurm_cluster.wait(ids.group(2), timeout=150) == "COMPLETED", logs()
    assert slurm_cluster.wait(ids.group(1), timeout=5) == "COMPLETED", logs()

    ref = project / "reference"
    assert texts(out) == texts(ref) and len(texts(out)) == 8
    assert summary_rows(out / "picking_summary.star") == summary_rows(ref / "picking_summary.star")
    assert (out / "coords_suffix_deeppicker.star").read_text() == (ref / "coords_suffix_deeppicker.star").read_text()
    assert relion_nodes.read_output_nodes("External/job010/", project) == [
        ("External/job010/coords_suffix_deeppicker.star", 2), ("External/job010/micrographs_with_particles.star", 1)]
    assert relion_nodes.read_output_nodes("reference/", project) == [
        ("reference/coords_suffix_deeppicker.star", 2), ("reference/micrographs_with_particles.star", 1)]
    assert (out / "micrographs_with_particles.star").read_text().split("\n", 2)[2] == \
        (ref / "micrographs_with_particles.star").read_text().split("\n", 2)[2]  # past starfile's dated header
    assert (out / "particles.cs").is_file()
    assert sorted(p.name for p in out.glob("slurm-*.out")) == ["slurm-merge.out", "slurm-pick-0.out", "slurm-pick-1.out"]


def test_relion_qsub_template_runs_the_external_job(slurm_cluster, project: Path) -> None:  # noqa: F811
    template = doc_block(TEMPLATE_MARK)
    exe = shutil.which("deeppicker_relion_pick", path=slurm_cluster.env["PATH"])
    jobs = {}
    for job, enable_extras in (("External/job002/", False), ("External/job003/", True)):
        (project / job).mkdir(parents=True, exist_ok=True)  # RELION makes the job directory first
        if exe:
            command = (f"{exe} --o {job} --in_mics micrographs.star --particle_diameter 180 "
                       "--weights model.safetensors --j 1")
        else:
            command = f"deeppicker pick micrographs.star --diameter 180 --weights model.safetensors -o {job} -j 1"
        if "relion_" in command:
            command += f" --pipeline_control {job}"
        text = template.replace("##SBATCH", "#SBATCH") if enable_extras else template
        script = relion_submit_script(text, [command], job, queue="debug", nr_threads=1,
                                      extras={1: "0:10:00", 2: "--mem=1G"} if enable_extras else None)
        live = [ln for ln in script.splitlines() if not ln.startswith("#") or ln.startswith("#SBATCH")]
        assert not any("XXX" in ln for ln in live), script  # left only in disabled '##SBATCH' lines
        (project / job / "run_submit.script").write_text(script)
        res = slurm_cluster.run("sbatch", "--parsable", f"{job}run_submit.script", cwd=project, check=False)
        assert res.returncode == 0, res.stderr
        jobs[job] = res.stdout.strip().split(";")[0]
    for job, job_id in jobs.items():
        state = slurm_cluster.wait(job_id, timeout=150)
        run_out = project / job / "run.out"
        run_err = project / job / "run.err"
        logs = f"{run_out.read_text() if run_out.exists() else ''}\n{run_err.read_text() if run_err.exists() else ''}"
        assert state == "COMPLETED", logs
        assert run_out.is_file() and run_out.stat().st_size > 0, logs
        coords = sorted((project / job / "Micrographs").glob("*_deeppicker.star"))
        assert len(coords) == 4, logs
        if exe:
            assert (project / job / "RELION_JOB_EXIT_SUCCESS").exists(), logs
            assert (project / job / "coords_suffix_deeppicker.star").read_text() == "micrographs.star\n"
            show = slurm_cluster.run("scontrol", "show", "job", job_id).stdout
            assert f"JobName={job}" in show
