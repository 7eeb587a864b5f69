"""Put DeepPicker picks into a running CryoSPARC as the output of an External job.

Everything that does not need the server is a separate function and is tested offline:

* :func:`load_particles_for_import` -- load and validate a particle ``.cs`` written by
  :func:`deeppicker_relion.io.cryosparc.write_particles_cs`;
* :func:`match_exposures` -- point every particle at the CryoSPARC exposure (micrograph) it was
  picked on: ``location/micrograph_uid`` := the exposure's ``uid`` (the key particles and
  micrographs are joined on: the crYOLO example of cryosparc-tools sets it so, helicon's
  extraction joins on it), ``micrograph_path`` := the exposure's ``micrograph_blob/path``;
* :func:`fill_output` -- copy our fields into the dataset the server allocates for the output.

:func:`import_to_cryosparc` then talks to the server with cryosparc-tools 5 (API checked against
the installed ``cryosparc/tools.py`` and ``cryosparc/controllers/job.py``, cryosparc-tools'
``tests/controllers/test_job.py`` and its crYOLO External-job example,
tools.cryosparc.com/examples/cryolo.html -- the notebook is stored as Git LFS, read here through
its copy in ``Poko18/Cryosparc-tools-scripts`` ``crYOLO_particlepicker.py``)::

    cs = CryoSPARC(base_url | host + base_port, email=..., password=...)
    exposures = cs.find_job(P, J).load_output(name)             # optional: --micrographs J:name
    job = cs.create_external_job(P, W, title=..., desc=...)
    job.connect("micrographs", J, name, slots=["micrograph_blob"])   # optional, lineage only
    job.add_output("particle", "particles", slots=["location", "pick_stats"])
    with job.run():                     # mark running; completed on success, failed on error
        out = job.alloc_output("particles", particles)   # server's fields, our particle uids
        job.save_output("particles", fill_output(out, particles))
    return job.uid

Not testable here (no server): authentication, the server's field list for a ``particle`` output
with ``location`` + ``pick_stats`` slots, and whether CryoSPARC accepts the saved output.  The
server is reached only inside :func:`import_to_cryosparc`, via the ``client`` object, for which
tests pass a fake.  cryosparc-tools 5.0 warns when the server's major.minor version differs.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from ..errors import JobError
from ..io.cryosparc import PARTICLE_FIELDS

__all__ = [
    "REQUIRED_FIELDS",
    "load_particles_for_import",
    "match_exposures",
    "fill_output",
    "parse_output_ref",
    "connect",
    "import_to_cryosparc",
]

REQUIRED_FIELDS: tuple[str, ...] = (
    "location/micrograph_uid",
    "location/micrograph_path",
    "location/micrograph_shape",
    "location/center_x_frac",
    "location/center_y_frac",
    "pick_stats/ncc_score",
)
_DTYPES = {f[0]: f[1:] for f in PARTICLE_FIELDS}
_CS_UID_PREFIX = re.compile(r"^(?:\d{21}_)+")
_EXP_GROUP_FIELDS = ("mscope_params/exp_group_id", "ctf/exp_group_id")


def load_particles_for_import(cs_path: str | Path):
    """Load a particle ``.cs``, check it, and return it with CryoSPARC's field dtypes.

    Keeps ``uid`` and the fields of :data:`deeppicker_relion.io.cryosparc.PARTICLE_FIELDS` that are
    present (all of :data:`REQUIRED_FIELDS` must be).  Raises :class:`JobError` on a missing or
    unreadable file, missing fields, no particles, repeated uids, fractions outside [0, 1] or
    non-positive micrograph shapes.
    """
    from cryosparc.dataset import Dataset

    cs_path = Path(cs_path)
    if not cs_path.is_file():
        raise JobError("file not found", cs_path)
    try:
        loaded = Dataset.load(cs_path)
    except Exception as err:  # numpy / cryosparc raise many kinds of errors on bad files
        raise JobError(f"not a readable CryoSPARC dataset ({err})", cs_path) from None
    missing = [f for f in REQUIRED_FIELDS if f not in loaded]
    if missing:
        raise JobError(f"missing field(s) {', '.join(missing)}", cs_path)
    n = len(loaded)
    if n == 0:
        raise JobError("contains no particles; nothing to import", cs_path)
    uids = np.asarray(loaded["uid"])
    if len(np.unique(uids)) != n:
        raise JobError("particle uids are not unique", cs_path)

    names = [f[0] for f in PARTICLE_FIELDS if f[0] in loaded]
    fields = [(name, *_DTYPES[name]) for name in names]
    particles = Dataset({"uid": uids}).add_fields(fields)
    for name in names:
        particles[name] = np.asarray(loaded[name])

    frac = np.column_stack([particles["location/center_x_frac"], particles["location/center_y_frac"]])
    if not np.all(np.isfinite(frac)) or frac.min() < 0 or frac.max() > 1:
        raise JobError("center_x_frac / center_y_frac must lie in [0, 1]", cs_path)
    shape = np.asarray(particles["location/micrograph_shape"])
    if shape.ndim != 2 or shape.shape[1] != 2 or (shape <= 0).any():
        raise JobError("location/micrograph_shape must be positive (rows, cols)", cs_path)
    score = np.asarray(particles["pick_stats/ncc_score"])
    if not np.all(np.isfinite(score)):
        raise JobError("pick_stats/ncc_score has NaN or infinite values", cs_path)
    return particles


def _match_key(path: str) -> str:
    """Basename without CryoSPARC's ``<21-digit uid>_`` prefix(es): what survives import."""
    return _CS_UID_PREFIX.sub("", PurePosixPath(str(path).replace("\\", "/")).name)


def match_exposures(particles, exposures):
    """Re-point particles at CryoSPARC exposures, matching micrographs by file name.

    ``exposures`` is the dataset of a CryoSPARC micrographs output (``uid``,
    ``micrograph_blob/path``, ``micrograph_blob/shape``, optional ``micrograph_blob/psize_A``
    and ``mscope_params/exp_group_id`` / ``ctf/exp_group_id``).  A particle's micrograph matches
    the exposure with the same file name once CryoSPARC's 21-digit uid prefix is removed (Import
    Micrographs stores ``J3/imported/<uid>_<name>``).  Returns a copy with
    ``location/micrograph_uid``, ``micrograph_path``, ``exp_group_id`` (if the exposures have one)
    and ``micrograph_psize_A`` (if both have one) taken from the exposure.  Fractions are not
    changed, so the shapes must agree.  Raises :class:`JobError` if a micrograph has no match,
    matches more than one exposure, or has a different shape.
    """
    for field in ("uid", "micrograph_blob/path", "micrograph_blob/shape"):
        if field not in exposures:
            raise JobError(f"the CryoSPARC micrographs have no '{field}' field")
    by_key: dict[str, list[int]] = {}
    for i, path in enumerate(exposures["micrograph_blob/path"]):
        by_key.setdefault(_match_key(path), []).append(i)

    result = particles.copy()
    paths = np.asarray(particles["location/micrograph_path"], dtype=object)
    mic_names, inverse = np.unique(paths.astype(str), return_inverse=True)
    new_uid = np.asarray(result["location/micrograph_uid"]).copy()
    new_path = paths.copy()
    exp_field = next((f for f in _EXP_GROUP_FIELDS if f in exposures), None)
    new_group = np.asarray(result["location/exp_group_id"]).copy() if "location/exp_group_id" in result else None
    psize_field = "location/micrograph_psize_A"
    new_psize = np.asarray(result[psize_field]).copy() if psize_field in result else None

    unmatched, ambiguous, claimed = [], [], {}
    for m, name in enumerate(mic_names):
        rows = inverse == m
        hits = by_key.get(_match_key(name), [])
        if not hits:
            unmatched.append(name)
            continue
        if len(hits) > 1:
            ambiguous.append(name)
            continue
        j = hits[0]
        if j in claimed:
            raise JobError(
                f"micrographs {claimed[j]} and {name} both match CryoSPARC micrograph "
                f"{exposures['micrograph_blob/path'][j]}"
            )
        claimed[j] = name
        ours = tuple(int(v) for v in np.asarray(result["location/micrograph_shape"])[rows][0])
        theirs = tuple(int(v) for v in np.asarray(exposures["micrograph_blob/shape"][j]))
        if ours != theirs:
            raise JobError(
                f"micrograph {name} is {ours[1]} x {ours[0]} px (cols x rows) but CryoSPARC's "
                f"{exposures['micrograph_blob/path'][j]} is {theirs[1]} x {theirs[0]} px"
            )
        new_uid[rows] = np.uint64(exposures["uid"][j])
        new_path[rows] = str(exposures["micrograph_blob/path"][j])
        if exp_field is not None and new_group is not None:
            new_group[rows] = int(exposures[exp_field][j])
        if new_psize is not None and "micrograph_blob/psize_A" in exposures:
            new_psize[rows] = float(exposures["micrograph_blob/psize_A"][j])
    if unmatched or ambiguous:
        parts = []
        if unmatched:
            parts.append(f"{len(unmatched)} micrograph(s) not found among the CryoSPARC micrographs, e.g. {unmatched[0]}")
        if ambiguous:
            parts.append(f"{len(ambiguous)} micrograph(s) match several CryoSPARC micrographs, e.g. {ambiguous[0]}")
        raise JobError("; ".join(parts))

    result["location/micrograph_uid"] = new_uid
    result["location/micrograph_path"] = new_path
    if new_group is not None:
        result["location/exp_group_id"] = new_group
    if new_psize is not None:
        result[psize_field] = new_psize
    return result


def fill_output(allocated, particles):
    """Copy ``particles`` into ``allocated`` (the server's dataset for the output) field by field.

    ``allocated`` must have the same uids in the same order (``job.alloc_output(name, particles)``
    guarantees that).  Fields the server expects but we do not have keep the server's defaults
    (a warning names them); fields the server does not expect are left out.
    """
    if len(allocated) != len(particles) or not np.array_equal(
        np.asarray(allocated["uid"]), np.asarray(particles["uid"])
    ):
        raise JobError("the allocated CryoSPARC output does not have the particles' uids")
    ours = set(particles.fields())
    missing = []
    for name in allocated.fields(exclude_uid=True):
        if name in ours:
            allocated[name] = np.asarray(particles[name])
        else:
            missing.append(name)
    if missing:
        warnings.warn(
            f"CryoSPARC expects field(s) DeepPicker does not write, left at defaults: {', '.join(missing)}",
            stacklevel=2,
        )
    return allocated


def parse_output_ref(ref: str | tuple[str, str]) -> tuple[str, str]:
    """``"J12:imported_micrographs"`` or ``("J12", "imported_micrographs")`` -> ``("J12", "imported_micrographs")``.

    The output name is required: it differs between job types (Import Micrographs:
    ``imported_micrographs``; Patch CTF: ``exposures``; Curate Exposures: ``exposures_accepted``;
    shown under "Outputs" of the job in CryoSPARC).
    """
    if isinstance(ref, (tuple, list)):
        if len(ref) != 2:
            raise JobError(f"expected (job uid, output name), got {ref!r}")
        job_uid, output = (str(v).strip() for v in ref)
    else:
        job_uid, _, output = str(ref).partition(":")
        job_uid, output = job_uid.strip(), output.strip()
    if not re.fullmatch(r"J\d+", job_uid) or not re.fullmatch(r"[A-Za-z][0-9A-Za-z_]*", output):
        raise JobError(
            f"expected a CryoSPARC job output like J12:imported_micrographs (job uid, colon, output name), got {ref!r}"
        )
    return job_uid, output


def connect(
    base_url: str | None = None,
    *,
    host: str | None = None,
    port: int | str | None = None,
    email: str | None = None,
    password: str | None = None,
    license: str | None = None,
    timeout: int = 300,
):
    """Log in to a CryoSPARC instance with cryosparc-tools (``base_url`` or ``host`` + ``port``).

    Unset arguments fall back to cryosparc-tools' environment variables (``CRYOSPARC_BASE_URL``,
    ``CRYOSPARC_MASTER_HOSTNAME``, ``CRYOSPARC_BASE_PORT``, ``CRYOSPARC_EMAIL``,
    ``CRYOSPARC_PASSWORD``) or a session saved by ``python -m cryosparc.tools login``.
    """
    from cryosparc.tools import CryoSPARC

    if base_url and (host or port):
        raise JobError("give either a CryoSPARC URL or a host and port, not both")
    kwargs: dict[str, Any] = {"email": email, "password": password, "timeout": timeout}
    if license:
        kwargs["license"] = license
    if base_url:
        return CryoSPARC(base_url=base_url, **kwargs)
    if host or port:
        return CryoSPARC(host=host, base_port=port, **kwargs)
    return CryoSPARC(**kwargs)  # environment variables / saved session


def import_to_cryosparc(
    cs_path: str | Path,
    *,
    project_uid: str,
    workspace_uid: str,
    title: str = "DeepPicker particle picks",
    base_url: str | None = None,
    host: str | None = None,
    port: int | str | None = None,
    email: str | None = None,
    password: str | None = None,
    license: str | None = None,
    micrographs: str | tuple[str, str] | None = None,
    output_name: str = "particles",
    client=None,
) -> str:
    """Create a completed External job holding the picks of ``cs_path``; return its uid (``"J42"``).

    ``micrographs`` (strongly recommended): the CryoSPARC output holding the micrographs that were
    picked (e.g. ``"J3:imported_micrographs"`` of an Import Micrographs job of the same MRC files);
    particles are re-pointed at those exposures (:func:`match_exposures`) and the job gets them as
    an input.  Without it the particles keep the uids/paths of the file, which CryoSPARC jobs
    cannot join to its micrographs.  ``client`` replaces the connection (tests pass a fake).

    Everything is loaded and validated before anything is created on the server, so a bad file or
    a micrograph mismatch leaves no job behind.  If saving fails, the job is marked failed.
    """
    particles = load_particles_for_import(cs_path)
    source = parse_output_ref(micrographs) if micrographs is not None else None
    if not re.fullmatch(r"[A-Za-z][0-9A-Za-z_]*", output_name):
        raise JobError(f"invalid output name {output_name!r} (letters, digits, _; starts with a letter)")

    cs = client if client is not None else connect(
        base_url, host=host, port=port, email=email, password=password, license=license
    )
    if source is not None:
        exposures = cs.find_job(project_uid, source[0]).load_output(source[1])
        particles = match_exposures(particles, exposures)
    else:
        warnings.warn(
            "no CryoSPARC micrographs given: the particles keep the micrograph ids of the file and "
            "CryoSPARC cannot match them to its micrographs (extraction will not find them)",
            stacklevel=2,
        )

    n_mics = len(np.unique(np.asarray(particles["location/micrograph_uid"])))
    job = cs.create_external_job(
        project_uid,
        workspace_uid,
        title=title,
        desc=f"{len(particles)} particles on {n_mics} micrographs picked by DeepPicker, from {Path(cs_path).name}",
    )
    if source is not None:
        job.connect("micrographs", source[0], source[1], slots=["micrograph_blob"])
    job.add_output("particle", output_name, slots=["location", "pick_stats"])
    with job.run():
        allocated = job.alloc_output(output_name, particles)
        job.save_output(output_name, fill_output(allocated, particles))
    return job.uid
