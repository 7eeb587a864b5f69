"""Proves the ``slurm_cluster`` fixture: a job array, then an ``afterok`` job.

Same shape as the README recipe (``sbatch --array=0-3`` shards, then a merge
job with ``--dependency=afterok:<id>``). Skipped unless ``slurm-wlm`` is installed.
"""

from slurm_cluster import slurm_cluster  # noqa: F401  (pytest fixture)


def test_array_then_dependent_job(slurm_cluster, tmp_path):  # noqa: F811
    array_id = slurm_cluster.sbatch(
        "#!/bin/bash\necho $SLURM_ARRAY_TASK_ID > part_$SLURM_ARRAY_TASK_ID.txt\n",
        "--array=0-2", "--output=array_%A_%a.log", cwd=tmp_path)
    merge_id = slurm_cluster.sbatch(
        "#!/bin/bash\ncat part_0.txt part_1.txt part_2.txt > merged.txt\n",
        f"--dependency=afterok:{array_id}", "--output=merge.log", cwd=tmp_path)

    assert slurm_cluster.wait(merge_id, timeout=60) == "COMPLETED"
    assert slurm_cluster.wait(array_id, timeout=5) == "COMPLETED"
    assert (tmp_path / "merged.txt").read_text().split() == ["0", "1", "2"]


def test_failed_dependency_cancels_dependent_job(slurm_cluster, tmp_path):  # noqa: F811
    failing = slurm_cluster.sbatch("#!/bin/bash\nexit 3\n", "--output=fail.log", cwd=tmp_path)
    dependent = slurm_cluster.sbatch(
        "#!/bin/bash\ntouch ran\n", f"--dependency=afterok:{failing}",
        "--output=dep.log", cwd=tmp_path)

    assert slurm_cluster.wait(failing, timeout=60) == "FAILED"
    assert slurm_cluster.wait(dependent, timeout=60) == "CANCELLED"
    assert not (tmp_path / "ran").exists()
