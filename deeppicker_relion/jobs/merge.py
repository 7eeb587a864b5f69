"""Merging the shards of a pick job (``deeppicker pick --shard i/n``, one process, array task or GPU
each) into the outputs of one job.

Each shard ``i`` of ``n`` writes, into the SAME output folder, its micrographs' coordinate and
candidate files (their names do not depend on the shard) plus
``picking_summary.shard-i-of-n.star`` and, if some micrographs failed,
``failed_micrographs.shard-i-of-n.star``. :func:`merge_shards` checks that every shard finished,
then writes ``picking_summary.star`` and ``failed_micrographs.star`` for the whole job;
:func:`write_relion_nodes` adds the coordinate node of the chosen RELION version and
``RELION_OUTPUT_NODES.star``. Merging again gives the same files (shard files are kept unless
asked otherwise).
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..errors import JobError
from ..io import relion_nodes
from ..io.atomic import write_text_atomic
from ..io.star import read_star, write_star

log = logging.getLogger(__name__)

SUMMARY = "picking_summary.star"
FAILED = "failed_micrographs.star"
_SHARD_FILE = re.compile(r"^(picking_summary|failed_micrographs)\.shard-(\d+)-of-(\d+)\.star$")
_FAILED_COLUMNS = ["rlnMicrographName", "reason"]
# Settings the RELION pick job records per shard (deeppicker_settings.shard-i-of-n.json) that must
# agree between shards of one job.
_SETTINGS_KEYS = ("particle_diameter", "box_px", "weights_sha256", "pickname", "threshold", "max_picks", "augment", "dark_sigma", "recentre", "size_check",
                  "micrographs")


@dataclass
class Merged:
    """The merged tables: ``table`` one row per micrograph (as in a pick job's summary), ``failed``
    the micrographs that could not be picked with the reason, ``n_shards`` how many were merged."""

    table: pd.DataFrame
    failed: pd.DataFrame
    n_shards: int

    @property
    def picked(self) -> list[str]:
        """Names of the micrographs that have a coordinate file (picked now or before)."""
        return self.table.loc[self.table["status"] != "failed", "rlnMicrographName"].astype(str).tolist()

    @property
    def n_particles(self) -> int:
        return int(pd.to_numeric(self.table["n_picks"]).sum()) if len(self.table) else 0


def shard_files(outdir: Path, kind: str = "picking_summary") -> dict[int, dict[int, Path]]:
    """``{n: {i: path}}`` of the shard files of ``kind`` (``picking_summary`` or
    ``failed_micrographs``) in ``outdir``."""
    found: dict[int, dict[int, Path]] = {}
    for path in Path(outdir).glob(f"{kind}.shard-*-of-*.star"):
        match = _SHARD_FILE.match(path.name)
        if match and match.group(1) == kind:
            i, n = int(match.group(2)), int(match.group(3))
            if 0 <= i < n:
                found.setdefault(n, {})[i] = path
    return found


def find_shards(outdir: Path, n_shards: int | None = None) -> dict[int, Path]:
    """The summaries ``{i: path}`` of all ``n_shards`` shards in ``outdir`` (``n_shards`` None: the
    one shard count found there). Raises :class:`JobError` listing the missing shards."""
    outdir = Path(outdir)
    found = shard_files(outdir)
    if n_shards is None:
        if not found:
            raise JobError(
                "holds no shard summaries (picking_summary.shard-I-of-N.star): run deeppicker pick --shard I/N "
                "into this folder first", outdir)
        if len(found) > 1:
            counts = ", ".join(str(n) for n in sorted(found))
            raise JobError(f"holds shard summaries of several shard counts ({counts}): give the count with --shards N",
                           outdir)
        n_shards = next(iter(found))
    if n_shards < 1:
        raise JobError(f"the number of shards must be at least 1 (got {n_shards})")
    have = found.get(n_shards, {})
    missing = [i for i in range(n_shards) if i not in have]
    if missing:
        listed = ", ".join(f"{i}/{n_shards}" for i in missing)
        raise JobError(
            f"{len(missing)} of {n_shards} shards have not finished (no picking_summary.shard-I-of-{n_shards}.star): "
            f"shard {listed}; run them (deeppicker pick ... --shard I/{n_shards}), then merge again", outdir)
    return {i: have[i] for i in range(n_shards)}


def settings_path(outdir: Path, shard: tuple[int, int]) -> Path:
    """Where shard ``(i, n)`` records its settings (the RELION pick job uses the same file)."""
    return Path(outdir) / f"deeppicker_settings.shard-{shard[0]}-of-{shard[1]}.json"


def write_shard_settings(outdir: Path, shard: tuple[int, int], settings: dict) -> None:
    """Record what shard ``(i, n)`` was picked with (``particle_diameter`` or ``box_px``,
    ``weights_sha256``, ``pickname``, ``threshold``, ``max_picks``, ``micrographs``: the inputs as
    given), for :func:`merge_shards`'s consistency check, the merged report and the default
    micrographs list of ``deeppicker merge``."""
    write_text_atomic(settings_path(outdir, shard), json.dumps(settings, indent=1, sort_keys=True) + "\n")


def read_shard_settings(outdir: Path, n_shards: int, i: int = 0) -> dict:
    """The settings shard ``i`` of ``n_shards`` recorded, or {} if none."""
    path = settings_path(outdir, (i, n_shards))
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def _check_settings(outdir: Path, n_shards: int) -> None:
    """Shards of one job must have been picked with the same settings (when they recorded them)."""
    settings = {i: read_shard_settings(outdir, n_shards, i) for i in range(n_shards)}
    settings = {i: s for i, s in settings.items() if s}
    if len(settings) < 2:
        return
    first_i, first = next(iter(settings.items()))
    for i, other in settings.items():
        for key in _SETTINGS_KEYS:
            if key in first and key in other and first[key] != other[key]:
                raise JobError(
                    f"shards {first_i}/{n_shards} and {i}/{n_shards} were picked with different {key} "
                    f"({first[key]} and {other[key]}); pick them again with the same settings", outdir)


def merge_shards(outdir: str | Path, n_shards: int | None = None, micrographs: pd.DataFrame | None = None,
                 remove_shard_files: bool = False) -> Merged:
    """Merge the shard summaries in ``outdir`` and write ``picking_summary.star`` and
    ``failed_micrographs.star`` (removed when nothing failed), atomically.

    ``micrographs`` (the job's micrograph list, column ``name``): rows come out in its order and
    every micrograph must be in exactly one shard (else :class:`JobError`: the shards were run on
    another list). Without it, rows are in the order the shards picked (i, i + n, ...). With a
    single, unsharded summary (``picking_summary.star`` and no shard files) it is read as is.
    """
    outdir = Path(outdir)
    found = shard_files(outdir)
    if n_shards is None and not found and (outdir / SUMMARY).is_file():
        tables = [_read_table(outdir / SUMMARY)]
        failed_tables = [_read_failed(outdir / FAILED)] if (outdir / FAILED).is_file() else []
        n_shards = 1
        shard_paths: list[Path] = []
    else:
        summaries = find_shards(outdir, n_shards)
        n_shards = len(summaries)
        _check_settings(outdir, n_shards)
        tables = [_read_table(summaries[i]) for i in range(n_shards)]
        failed_found = shard_files(outdir, "failed_micrographs").get(n_shards, {})
        failed_tables = [_read_failed(failed_found[i]) for i in sorted(failed_found)]
        shard_paths = list(summaries.values()) + list(failed_found.values())
    tables = [t for t in tables if len(t)] or tables[:1]  # a shard may have had no micrographs
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=["rlnMicrographName", "status"])
    if "flag" in table.columns:
        table["flag"] = table["flag"].astype(str)
    for column in ("n_picks", "n_candidates", "rows", "cols"):
        if column in table.columns:
            table[column] = pd.to_numeric(table[column], errors="coerce").fillna(0).astype(int)
    names = table["rlnMicrographName"].astype(str) if len(table) else pd.Series([], dtype=str)
    if names.duplicated().any():
        dup = names[names.duplicated()].iloc[0]
        raise JobError(f"micrograph {dup} is in more than one shard summary: were shards of different runs mixed?", outdir)
    if micrographs is not None:
        wanted = micrographs["name"].astype(str)
        absent = wanted[~wanted.isin(set(names))].tolist()
        if absent:
            raise JobError(
                f"{len(absent)} micrographs of the input are in no shard summary (e.g. {', '.join(absent[:3])}): "
                "were the shards run on another micrographs list?", outdir)
        position = {name: k for k, name in enumerate(wanted)}
        table = table.assign(_order=names.map(position)).sort_values("_order", kind="stable").drop(columns="_order")
        table = table[table["rlnMicrographName"].astype(str).isin(position)].reset_index(drop=True)
    failed = pd.concat(failed_tables, ignore_index=True) if failed_tables else pd.DataFrame(columns=_FAILED_COLUMNS)
    failed_names = set(table.loc[table["status"] == "failed", "rlnMicrographName"].astype(str))
    failed = failed[failed["rlnMicrographName"].astype(str).isin(failed_names)]
    if len(table):
        order = {name: k for k, name in enumerate(table["rlnMicrographName"].astype(str))}
        failed = failed.assign(_o=failed["rlnMicrographName"].astype(str).map(order)).sort_values("_o").drop(columns="_o")
    failed = failed.reset_index(drop=True)
    write_star(outdir / SUMMARY, {"picking_summary": table})
    if len(failed):
        write_star(outdir / FAILED, {"failed_micrographs": failed})
    else:
        (outdir / FAILED).unlink(missing_ok=True)
    if remove_shard_files:
        for path in shard_paths:
            path.unlink(missing_ok=True)
    merged = Merged(table, failed, n_shards)
    log.info("merged %d shard%s: %d micrographs, %d particles, %d failed", n_shards, "s" if n_shards > 1 else "",
             len(table), merged.n_particles, len(failed))
    return merged


def write_relion_nodes(outdir: str | Path, merged: Merged, pickname: str, in_mics_star: str | Path,
                       version: str, project_dir: str | Path = ".") -> str:
    """Write the RELION coordinate node (3.1: ``coords_suffix_<pickname>.star``; 4, 5:
    ``autopick.star``) listing the picked micrographs, and ``RELION_OUTPUT_NODES.star``, into
    ``outdir``; returns the node's name relative to ``project_dir`` (RELION's project directory,
    where the names in the micrographs STAR are relative to)."""
    job_dir = Path(os.path.relpath(Path(outdir).resolve(), Path(project_dir).resolve())).as_posix() + "/"
    if job_dir.startswith("../"):
        log.warning("%s is outside the RELION project %s: RELION will not find the node", outdir, project_dir)
    node = relion_nodes.write_coordinate_node(job_dir, merged.picked, pickname, str(in_mics_star), version, project_dir)
    nodes = [(node, relion_nodes.COORDINATES)]
    if "flag" in merged.table.columns:  # the micrographs that hold particles: a second node
        from .pick import PARTICLE_MICROGRAPHS, flags_message, write_particle_micrographs

        star = Path(in_mics_star) if Path(in_mics_star).is_file() else Path(project_dir) / in_mics_star
        n_kept = write_particle_micrographs(star, merged.table, Path(outdir) / PARTICLE_MICROGRAPHS)
        nodes.append((job_dir + PARTICLE_MICROGRAPHS, relion_nodes.MICROGRAPHS))
        log.info("%s", flags_message(merged.table, job_dir + PARTICLE_MICROGRAPHS, n_kept))
    relion_nodes.write_output_nodes(job_dir, nodes, version, project_dir)
    return node


def _read_table(path: Path) -> pd.DataFrame:
    table = next(iter(read_star(path).values()))
    if "rlnMicrographName" not in table.columns or "status" not in table.columns:
        if len(table) == 0:  # a shard without micrographs (more shards than micrographs)
            return pd.DataFrame(columns=["rlnMicrographName", "status", "n_picks"])
        raise JobError("is not a picking summary (no rlnMicrographName / status columns)", path)
    table["rlnMicrographName"] = table["rlnMicrographName"].astype(str)
    return table


def _read_failed(path: Path) -> pd.DataFrame:
    table = next(iter(read_star(path).values()))
    if not set(_FAILED_COLUMNS) <= set(table.columns):
        return pd.DataFrame(columns=_FAILED_COLUMNS)
    return table[_FAILED_COLUMNS].astype(str)
