"""Several labelled data sets for one training run: what a facility already has from solved projects.

One data set per molecule, each with its own micrographs, particle centres and particle diameter.
A data set is written as ``SOURCE DIAMETER [key=value ...]``, the same on the command line
(``deeppicker train --data SOURCE DIAMETER ...``, repeatable) and in a list file (one per line,
``#`` comments; ``--datasets list.txt``)::

    # source                                    diameter  options
    /data/P1/Refine3D/job020/run_data.star      180       mics=/data/P1/CtfFind/job004/micrographs_ctf.star
    /data/P2/Select/job031/particles.star       240
    /data/P3/ManualPick/job005/coords_suffix_manualpick.star 120 labels=complete
    /data/cs/P4/J42/J42_particles.cs            300A      root=/data/cs/P4
    empiar:10028                                300       coords=data/Particles/*.star max_mics=20
    simulated                                   -         n=24

DIAMETER is the particle diameter in Angstrom (``180`` or ``180A``) or the box in micrograph pixels
(``56px``); ``-`` for ``simulated`` (each simulated micrograph has its own). SOURCE is one of:

- a RELION particles STAR (Extract, Select, Class2D/3D, Refine3D; 3.0 or 3.1+): centres are the
  coordinates minus the refined origin shifts (:mod:`.io.particles`);
- a RELION coordinate node: ``coords_suffix_<name>.star`` (3.1), ``autopick.star`` /
  ``manualpick.star`` (4/5);
- a micrographs STAR, MRC folder or glob with ``coords=`` (coordinate files, globs or folders);
- a CryoSPARC particle ``.cs`` file (``root=`` the CryoSPARC project folder its micrograph paths
  are relative to);
- ``empiar:NNNNN``: an EMPIAR entry, downloaded into a local cache (:mod:`.empiar`);
- ``simulated``: micrographs of random simulated molecules (a new molecule on each), generated
  once into the cache (:mod:`..simulation.sets`).

Options: ``mics=`` micrographs STAR (pixel sizes, and the micrographs of a coordinate set);
``coords=`` coordinates; ``root=`` folder that relative micrograph names start from (default: the
RELION project holding the STAR, i.e. the folder above ``Type/jobNNN/``, then the current folder);
``angpix=`` micrograph pixel size in Angstrom (overrides every other source); ``max_mics=N`` use
the first N micrographs that have particles; ``labels=complete|incomplete`` (default: incomplete
for everything but ``simulated``: curated particle sets leave out many true particles, see
train.py); ``name=`` a label for logs; for ``empiar:``: ``url=`` base URL, ``mics=`` glob of
micrographs inside the entry; for ``simulated``: ``n=`` micrographs (default 12), ``seed=``.
Relative paths in a list file are relative to the list file's folder.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..errors import JobError

log = logging.getLogger(__name__)

OPTIONS = ("mics", "coords", "root", "angpix", "max_mics", "labels", "name", "url", "n", "seed")
_JOB_DIR = re.compile(r"^[A-Za-z0-9_]+$")


@dataclass
class DataSpec:
    """One data set as written by the user (not yet read). ``diameter_A`` / ``box_px``: the particle
    size (Angstrom / micrograph pixels; both None for ``simulated``)."""

    source: str
    diameter_A: float | None = None
    box_px: float | None = None
    options: dict[str, str] = field(default_factory=dict)
    where: str = "--data"

    @property
    def name(self) -> str:
        return self.options.get("name") or self.source


@dataclass
class LabelledSet:
    """A data set read from disk: ``micrographs`` (columns ``name``, ``path``, ``pixel_size`` in
    Angstrom (NaN: the MRC header's), ``box_px`` (NaN: from the diameter)), ``centres`` (micrograph
    name -> (n, 2) particle centres x, y in micrograph pixels), ``diameter_A`` / ``box_px`` (the
    particle size), ``complete`` (whether every particle of a micrograph is labelled)."""

    name: str
    micrographs: pd.DataFrame
    centres: dict[str, np.ndarray]
    diameter_A: float | None
    box_px: float | None
    complete: bool

    @property
    def n_particles(self) -> int:
        return int(sum(len(c) for c in self.centres.values()))


def parse_size(text: str, where: str) -> tuple[float | None, float | None]:
    """``"180"`` / ``"180A"`` -> (180 Angstrom, None); ``"56px"`` -> (None, 56 px); ``"-"`` -> (None, None)."""
    t = text.strip()
    if t == "-":
        return None, None
    m = re.fullmatch(r"([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(A|Å|px)?", t)
    if not m or not float(m.group(1)) > 0 or not math.isfinite(float(m.group(1))):
        raise JobError(f"particle diameter {text!r} is not a positive number (Angstrom, e.g. 180, or pixels, e.g. 56px)", where)
    value = float(m.group(1))
    return (None, value) if m.group(2) == "px" else (value, None)


def parse_spec(tokens: Sequence[str], where: str = "--data", base: Path | None = None) -> DataSpec:
    """``[SOURCE, DIAMETER, key=value, ...]`` -> :class:`DataSpec`. With ``base`` (a list file's
    folder), relative paths (the source and ``mics``/``coords``/``root``) are relative to it."""
    tokens = list(tokens)
    if not tokens:
        raise JobError("empty data set: give SOURCE DIAMETER [key=value ...]", where)
    source = tokens[0]
    rest = tokens[1:]
    simulated = source == "simulated" or source.startswith("simulated:")
    if rest and "=" not in rest[0]:
        diameter_A, box_px = parse_size(rest[0], where)
        rest = rest[1:]
    elif simulated:
        diameter_A, box_px = None, None
    else:
        raise JobError(f"data set {source} has no particle diameter: write SOURCE DIAMETER [key=value ...]", where)
    if not simulated and diameter_A is None and box_px is None:
        raise JobError(f"data set {source} needs a particle diameter ('-' is only for simulated)", where)
    options: dict[str, str] = {}
    for item in rest:
        key, eq, value = item.partition("=")
        if not eq or key not in OPTIONS:
            raise JobError(f"unknown data set option {item!r} (known: {', '.join(k + '=' for k in OPTIONS)})", where)
        options[key] = value
    if base is not None:
        if not simulated and not source.startswith("empiar:"):
            source = _relative_to(source, base)
        for key in ("mics", "root"):
            if key in options:
                options[key] = _relative_to(options[key], base)
        if "coords" in options and not source.startswith("empiar:"):
            options["coords"] = _relative_to(options["coords"], base)
    if "labels" in options and options["labels"] not in ("complete", "incomplete"):
        raise JobError(f"labels= must be complete or incomplete, not {options['labels']!r}", where)
    for key in ("max_mics", "n", "seed"):
        if key in options and not options[key].isdigit():
            raise JobError(f"{key}= must be a whole number, not {options[key]!r}", where)
    if "angpix" in options:
        try:
            ok = float(options["angpix"]) > 0
        except ValueError:
            ok = False
        if not ok:
            raise JobError(f"angpix= must be a positive number (Angstrom per pixel), not {options['angpix']!r}", where)
    return DataSpec(source, diameter_A, box_px, options, where)


def _relative_to(path: str, base: Path) -> str:
    """``path`` (a file, folder or glob) taken relative to ``base`` unless it is absolute."""
    return path if Path(path).is_absolute() else str(base / path)


def read_list(path: str | Path) -> list[DataSpec]:
    """A data-set list file: one ``SOURCE DIAMETER [key=value ...]`` per line (shell quoting,
    ``#`` comments). Raises :class:`JobError` naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise JobError("data-set list not found", path)
    specs = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError as err:
            raise JobError(f"line {number}: {err}", path) from None
        if tokens:
            specs.append(parse_spec(tokens, f"{path} line {number}", path.parent.resolve()))
    if not specs:
        raise JobError("data-set list holds no data set", path)
    return specs


# --------------------------------------------------------------------------------------------------
# Reading a data set
# --------------------------------------------------------------------------------------------------


def project_dir(star: Path) -> Path | None:
    """The RELION project folder of a file at ``<project>/<Type>/jobNNN/<file>``, else None."""
    star = Path(star).resolve()
    job, kind = star.parent, star.parent.parent
    if re.fullmatch(r"job\d+", job.name) and _JOB_DIR.fullmatch(kind.name):
        return kind.parent
    return None


def _locate(name: str, roots: Sequence[Path], by_name: dict[str, str] | None = None) -> str:
    """Where micrograph ``name`` lives: as given if it exists, else below the first root holding it,
    else (downloaded entries, ``by_name``: file name -> local path) the local file of that name."""
    p = Path(name)
    if p.is_absolute() or p.exists():
        return str(p)
    for root in roots:
        if (root / p).exists():
            return str(root / p)
    if by_name and p.name in by_name:
        return by_name[p.name]
    return str(roots[0] / p) if roots else name


def _local_files(spec: DataSpec) -> dict[str, str]:
    """File name -> local path of the micrographs an EMPIAR download fetched (else empty)."""
    return {Path(f).name: f for f in spec.options.get("_files", "").splitlines() if f}


def _roots(spec: DataSpec, source: Path | None) -> list[Path]:
    roots: list[Path] = []
    if "root" in spec.options:
        roots.append(Path(spec.options["root"]))
    if source is not None:
        proj = project_dir(source)
        if proj is not None:
            roots.append(proj)
    roots.append(Path.cwd())
    if source is not None:
        roots.append(source.parent)
    return roots


def _header_pixel_size(path: str) -> float:
    from ..io.mrc import read_header

    try:
        return float(read_header(path)[1] or np.nan)
    except Exception:  # unreadable micrographs are reported when they are used
        return float("nan")


def _mics_pixel_sizes(spec: DataSpec) -> dict[str, float]:
    """Micrograph name -> pixel size from the ``mics=`` micrographs STAR (empty if none given)."""
    if "mics" not in spec.options or not spec.options["mics"].endswith(".star"):
        return {}
    from ..io.star import micrograph_table

    table = micrograph_table(spec.options["mics"])
    return {n: float(p) for n, p in zip(table["rlnMicrographName"], table["pixel_size"]) if p > 0}


def _from_particles(spec: DataSpec, table: pd.DataFrame, source: Path, shifts: bool) -> LabelledSet:
    """A data set from a per-particle table (``micrograph``, ``x``/``y`` or coord/shift columns,
    ``pixel_size``)."""
    from ..io.particles import refined_centres

    roots = _roots(spec, source)
    names = list(dict.fromkeys(table["micrograph"]))
    local = _local_files(spec)
    paths = {n: _locate(n, roots, local) for n in names}
    known = _mics_pixel_sizes(spec)
    if "angpix" in spec.options:
        known = {n: float(spec.options["angpix"]) for n in names}
    else:
        px = table.groupby("micrograph", sort=False)["pixel_size"].first()
        for n in names:  # the STAR's own, then the MRC header, for the names mics= does not give
            if n not in known and not (px.get(n, np.nan) > 0):
                header = _header_pixel_size(paths[n])
                if header > 0:
                    known[n] = header
    centres = refined_centres(table, known) if shifts else table.assign(
        pixel_size=table["micrograph"].map(lambda m: known.get(m, np.nan)).fillna(table["pixel_size"]))
    mics = pd.DataFrame({"name": names, "path": [paths[n] for n in names]})
    per_px = centres.groupby("micrograph", sort=False)["pixel_size"].first()
    mics["pixel_size"] = [float(per_px.get(n, np.nan)) for n in names]
    mics["box_px"] = np.nan
    by_mic = {n: g[["x", "y"]].to_numpy(float) for n, g in centres.groupby("micrograph", sort=False)}
    return _finish(spec, mics, by_mic, complete=False)


def _finish(spec: DataSpec, mics: pd.DataFrame, centres: dict[str, np.ndarray], complete: bool) -> LabelledSet:
    """Apply ``max_mics``/``angpix``/``labels``; keep the micrographs that have particles."""
    mics = mics[mics["name"].isin([n for n, c in centres.items() if len(c)])].reset_index(drop=True)
    local = set(_local_files(spec).values())
    if local:  # a downloaded entry: the micrographs fetched (max_mics of them)
        mics = mics[mics["path"].isin(local)].reset_index(drop=True)
    if mics.empty:
        raise JobError("no micrograph of this data set has particles", spec.source)
    if "max_mics" in spec.options:
        mics = mics.head(int(spec.options["max_mics"]))
    if "angpix" in spec.options:
        mics["pixel_size"] = float(spec.options["angpix"])
    missing = [p for p in mics["path"] if not Path(p).is_file()]
    if missing:
        raise JobError(f"{len(missing)} of {len(mics)} micrographs not found, e.g. {missing[0]} "
                       "(give root= the folder their names are relative to)", spec.source)
    if "labels" in spec.options:
        complete = spec.options["labels"] == "complete"
    return LabelledSet(spec.name, mics, {n: centres[n] for n in mics["name"]}, spec.diameter_A, spec.box_px, complete)


def _from_coordinate_files(spec: DataSpec, mics: pd.DataFrame, coords: dict[str, Path], source: Path | None) -> LabelledSet:
    from ..io.coords import read_coordinates

    roots = _roots(spec, source)
    mics = mics.copy()
    local = _local_files(spec)
    mics["path"] = [p if Path(p).exists() else _locate(n, roots, local) for n, p in zip(mics["name"], mics["path"])]
    known = _mics_pixel_sizes(spec)
    mics["pixel_size"] = [known.get(n, p) for n, p in zip(mics["name"], mics["pixel_size"])]
    mics["box_px"] = np.nan
    centres = {}
    for name, path in coords.items():
        c = read_coordinates(path)
        centres[name] = c[["x", "y"]].to_numpy(float).reshape(-1, 2)
    if not centres:
        raise JobError("no coordinate file matches a micrograph", spec.options.get("coords", spec.source))
    return _finish(spec, mics, centres, complete=False)


def _micrographs_of_node(node: Path, roots: list[Path]) -> pd.DataFrame:
    """The micrographs a RELION 3.1 coords_suffix node names (its one line: a micrographs STAR)."""
    from ..io.micrographs import micrograph_list

    text = node.read_text().strip().splitlines()
    if not text:
        raise JobError("coords_suffix node is empty (it should name the micrographs STAR)", node)
    star = _locate(text[0].strip(), roots)
    if not Path(star).is_file():
        raise JobError(f"names micrographs STAR {text[0].strip()}, which is not found (give mics= or root=)", node)
    return micrograph_list([star])


def read_dataset(spec: DataSpec, cache: Path | None = None, progress: bool = False) -> LabelledSet:
    """Read (download or simulate when needed) one data set. Raises :class:`JobError` naming the
    file and the problem."""
    from ..io.micrographs import coordinate_files, micrograph_list

    src = spec.source
    if src == "simulated" or src.startswith("simulated:"):
        from ..simulation.sets import simulated_set

        n = int(spec.options.get("n", src.partition(":")[2] or 12))
        folder = simulated_set(n, int(spec.options.get("seed", 0)), cache_dir(cache) / "simulated", progress=progress)
        mics = pd.read_csv(folder / "index.csv")
        inner = DataSpec(str(folder / "index.csv"), None, None, {"labels": "complete", **spec.options}, spec.where)
        table = pd.DataFrame({"name": mics["name"], "path": [str(folder / p) for p in mics["file"]],
                              "pixel_size": mics["pixel_size"], "box_px": mics["diameter_px"]})  # fmt: skip
        from ..io.coords import read_coordinates

        centres = {n: read_coordinates(folder / c)[["x", "y"]].to_numpy(float).reshape(-1, 2)
                   for n, c in zip(mics["name"], mics["coords"])}  # fmt: skip
        out = _finish(inner, table, centres, complete=True)
        out.name = spec.name
        return out
    if src.startswith("empiar:"):
        from .empiar import fetch_dataset

        local = fetch_dataset(spec, cache_dir(cache), progress=progress)
        return read_dataset(local, cache, progress)
    path = Path(src)
    if src.endswith(".cs"):
        from ..io.particles import read_particles_cs

        return _from_particles(spec, read_particles_cs(path), path, shifts=False)
    if src.endswith(".star") and "coords" not in spec.options:
        # (micrographs of a downloaded entry are found by file name when the STAR's names differ)
        if not path.is_file():
            raise JobError("data set file not found", path)
        if path.name.startswith("coords_suffix_"):
            mics = (micrograph_list([spec.options["mics"]]) if "mics" in spec.options
                    else _micrographs_of_node(path, _roots(spec, path)))  # fmt: skip
            return _from_coordinate_files(spec, mics, coordinate_files(mics, [path]), path)
        from ..io.particles import is_particles_star, read_particles_star
        from ..io.star import read_star

        blocks = read_star(path)
        if is_particles_star(blocks):
            return _from_particles(spec, read_particles_star(path), path, shifts=True)
        if any({"rlnMicrographName", "rlnMicrographCoordinates"} <= set(df.columns) for df in blocks.values()):
            table = next(df for df in blocks.values() if "rlnMicrographCoordinates" in df.columns)
            if "mics" in spec.options:
                mics = micrograph_list([spec.options["mics"]])
            else:
                names = table["rlnMicrographName"].astype(str)
                mics = pd.DataFrame({"name": names, "path": names, "pixel_size": np.nan})
            return _from_coordinate_files(spec, mics, coordinate_files(mics, [path]), path)
        raise JobError("is neither a particles STAR nor a coordinate node; for a micrographs STAR add "
                       "coords=<coordinate files>", path)
    if "coords" not in spec.options:
        raise JobError("micrographs without coordinates: add coords=<files, glob or folder>", src)
    mics = micrograph_list(list(_local_files(spec).values()) or [src])
    coords = coordinate_files(mics, [spec.options["coords"]])
    return _from_coordinate_files(spec, mics, coords, path if src.endswith(".star") else None)


def cache_dir(cache: str | Path | None = None) -> Path:
    """The download and simulation cache: ``cache``, else $DEEPPICKER_CACHE, else
    ``~/.cache/deeppicker``."""
    if cache:
        return Path(cache)
    env = os.environ.get("DEEPPICKER_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "deeppicker"


def read_datasets(specs: Sequence[DataSpec], cache: Path | None = None, progress: bool = False) -> list[LabelledSet]:
    """Read every data set; logs one line per set."""
    if not specs:
        raise JobError("no data sets given: use --data SOURCE DIAMETER (repeatable) or --datasets LIST")
    sets = []
    for spec in specs:
        s = read_dataset(spec, cache, progress)
        size = f"{s.diameter_A:g} A" if s.diameter_A else (f"{s.box_px:g} px" if s.box_px else "per micrograph")
        log.info("data set %s: %d micrographs, %d particles, diameter %s, labels %s", s.name, len(s.micrographs),
                 s.n_particles, size, "complete" if s.complete else "incomplete")
        sets.append(s)
    return sets
