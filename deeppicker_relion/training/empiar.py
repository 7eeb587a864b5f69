"""EMPIAR entries as training data: downloads into a local cache (resumable, verified, re-used).

An EMPIAR entry is a file tree below ``<base URL>/<entry>/`` (by default
https://ftp.ebi.ac.uk/empiar/world_availability, served with HTML directory listings; set
another with the data set's ``url=``, ``deeppicker train --empiar-url`` or $DEEPPICKER_EMPIAR_URL,
e.g. a mirror). Only entries that hold particle coordinates can train: a RELION particles STAR or
coordinate node, or per-micrograph coordinate files (.star, .box, .txt/.coords) named after the
micrographs. Which files are used: ``mics=GLOB`` (default ``**/*.mrc``) and ``coords=GLOB``
(default: every ``.star``, ``.box``, ``.coords`` and ``.txt`` file) inside the entry, ``max_mics=N``
the first N micrographs with coordinates.

Why not a client package: ``empiarreader`` (PyPI, 0.0.17) was read first. Its download utility
shells out to wget / curl with FTP links and falls back to ``urllib.request.urlretrieve`` with no
resume and no verification, its base URLs are class constants, and it pins ``numpy<2`` and pulls in
intake, xarray, scikit-image and pre-commit. Here the well-kept ``requests`` does the HTTP; the
listing walk, resume and checks are below.

Cache: ``<cache>/empiar/<entry>/`` mirrors the entry's tree; ``.deeppicker_listing.json`` holds
the file list, ``.deeppicker_manifest.json`` the size (and MD5) of every completed download. A file
is downloaded to ``<name>.part`` and renamed when complete: an interrupted download resumes with an
HTTP Range request. Verified: the size against the server's Content-Length / Content-Range, and
the MD5 where the entry publishes one (a ``*.md5`` / ``md5sum*.txt`` / ``MD5SUMS`` file of ``hash
path`` lines). A second run with everything cached makes no request.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urljoin, urlparse

from ..errors import JobError

log = logging.getLogger(__name__)

DEFAULT_URL = "https://ftp.ebi.ac.uk/empiar/world_availability"
LISTING = ".deeppicker_listing.json"
MANIFEST = ".deeppicker_manifest.json"
COORD_SUFFIXES = (".star", ".box", ".coords", ".txt", ".cs")
_MD5_NAME = re.compile(r"(?i)(\.md5$|^md5sums?(\.txt)?$|^md5sum.*\.txt$|^checksums?\.md5$)")
TIMEOUT_S = 60


def base_url(given: str | None = None) -> str:
    """The EMPIAR base URL: ``given``, else $DEEPPICKER_EMPIAR_URL, else :data:`DEFAULT_URL`."""
    return (given or os.environ.get("DEEPPICKER_EMPIAR_URL") or DEFAULT_URL).rstrip("/")


def entry_id(source: str) -> str:
    """``"empiar:10028"`` / ``"EMPIAR-10028"`` -> ``"10028"``; raises :class:`JobError` otherwise."""
    m = re.fullmatch(r"(?i)(?:empiar[:-])?(\d{5})", source.strip())
    if not m:
        raise JobError(f"{source!r} is not an EMPIAR entry (write empiar:NNNNN, e.g. empiar:10028)")
    return m.group(1)


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs) -> None:
        if tag == "a":
            href = dict(attrs).get("href")
            if href:
                self.links.append(href)


def _session():
    import requests

    session = requests.Session()
    session.headers["User-Agent"] = "deeppicker-relion (training data download)"
    return session


def _get(session, url: str, **kw):
    import requests

    try:
        response = session.get(url, timeout=TIMEOUT_S, **kw)
    except requests.RequestException as err:
        raise JobError(f"cannot reach {url} ({type(err).__name__}: {err}); check the EMPIAR URL (url=, "
                       "--empiar-url or $DEEPPICKER_EMPIAR_URL) and the network") from None
    return response


def list_files(entry: str, url: str, session=None) -> list[str]:
    """Every file of an entry, as paths relative to ``<url>/<entry>/``, by walking its HTML
    directory listings (links ending in ``/`` are folders; parent and sort links are ignored)."""
    session = session or _session()
    root = f"{url}/{entry}/"
    found: list[str] = []
    todo = [root]
    seen = set()
    while todo:
        folder = todo.pop()
        if folder in seen:
            continue
        seen.add(folder)
        response = _get(session, folder)
        if response.status_code == 404 and folder == root:
            raise JobError(f"EMPIAR entry {entry} not found at {root}")
        if response.status_code != 200:
            raise JobError(f"listing {folder} failed: HTTP {response.status_code}")
        parser = _Links()
        parser.feed(response.text)
        for href in parser.links:
            target = urljoin(folder, href)
            if not target.startswith(root) or "?" in href or target == folder or urlparse(target).path == urlparse(folder).path:
                continue  # parent folder, sort links, absolute links elsewhere
            if target.endswith("/"):
                todo.append(target)
            else:
                found.append(unquote(target[len(root):]))
    return sorted(set(found))


@dataclass
class Cache:
    """The local copy of one entry: ``folder`` mirrors ``<url>/<entry>/``."""

    entry: str
    url: str
    folder: Path

    def _read(self, name: str) -> dict:
        path = self.folder / name
        if not path.is_file():
            return {}
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            return {}

    def _write(self, name: str, data) -> None:
        from ..io.atomic import write_text_atomic

        write_text_atomic(self.folder / name, json.dumps(data, indent=1, sort_keys=True))

    def listing(self, session=None) -> list[str]:
        """The entry's files (cached after the first walk)."""
        cached = self._read(LISTING)
        if cached.get("url") == self.url and isinstance(cached.get("files"), list):
            return cached["files"]
        files = list_files(self.entry, self.url, session)
        self._write(LISTING, {"url": self.url, "files": files})
        return files

    def checksums(self, files: list[str], session=None) -> dict[str, str]:
        """MD5 sums the entry publishes (relative path -> hex), from its checksum files."""
        sums: dict[str, str] = {}
        for rel in files:
            if not _MD5_NAME.search(PurePosixPath(rel).name):
                continue
            path = self.fetch(rel, session=session, progress=False)
            base = PurePosixPath(rel).parent
            for line in path.read_text(errors="replace").splitlines():
                m = re.match(r"^([0-9a-fA-F]{32})\s+\*?(.+?)\s*$", line) or re.match(r"^MD5 \((.+)\) = ([0-9a-fA-F]{32})$", line)
                if not m:
                    continue
                digest, name = (m.group(1), m.group(2)) if len(m.group(1)) == 32 else (m.group(2), m.group(1))
                name = name.lstrip("./")
                sums[name] = digest.lower()
                sums[str(base / name)] = digest.lower()
        return sums

    def fetch(self, rel: str, md5: str | None = None, session=None, progress: bool = True) -> Path:
        """The local copy of ``rel``: re-used when the manifest says it is complete, else
        downloaded (resuming a ``.part`` file), checked and renamed into place."""
        target = self.folder / rel
        manifest = self._read(MANIFEST)
        done = manifest.get(rel)
        if done and target.is_file() and target.stat().st_size == done.get("size"):
            return target
        session = session or _session()
        url = f"{self.url}/{self.entry}/{rel}"
        part = target.with_name(target.name + ".part")
        target.parent.mkdir(parents=True, exist_ok=True)
        have = part.stat().st_size if part.is_file() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        response = _get(session, url, headers=headers, stream=True)
        if response.status_code == 416 and have:  # the .part is already whole (or bigger): start again
            part.unlink()
            have, response = 0, _get(session, url, stream=True)
        if response.status_code not in (200, 206):
            raise JobError(f"download of {url} failed: HTTP {response.status_code}")
        if response.status_code == 200:
            have = 0  # the server ignored the range: start from scratch
        total = _total_size(response, have)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=PurePosixPath(rel).name, leave=False)
        with open(part, "ab" if have else "wb") as out:
            for chunk in response.iter_content(chunk_size=1 << 20):
                out.write(chunk)
                if bar is not None:
                    bar.update(len(chunk))
        if bar is not None:
            bar.close()
        size = part.stat().st_size
        if total is not None and size != total:
            raise JobError(f"incomplete download of {url}: {size} of {total} bytes (run again to resume)", part)
        if md5 is not None:
            digest = _md5(part)
            if digest != md5:
                part.unlink()
                raise JobError(f"MD5 mismatch for {url} (got {digest}, the entry says {md5}); the partial file was removed", target)
        os.replace(part, target)
        manifest = self._read(MANIFEST)
        manifest[rel] = {"size": size, **({"md5": md5} if md5 else {})}
        self._write(MANIFEST, manifest)
        log.debug("downloaded %s (%d bytes)", url, size)
        return target


def _total_size(response, have: int) -> int | None:
    """Total size of the file from Content-Range (ranged) or Content-Length (whole)."""
    if response.status_code == 206:
        m = re.match(r"bytes \d+-\d+/(\d+)", response.headers.get("Content-Range", ""))
        if m:
            return int(m.group(1))
    length = response.headers.get("Content-Length")
    return have + int(length) if length and length.isdigit() and response.status_code == 206 else (
        int(length) if length and length.isdigit() else None)


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _matches(rel: str, pattern: str) -> bool:
    """fnmatch on the relative path where ``**/`` also matches no folder at all."""
    return fnmatch.fnmatch(rel, pattern) or (pattern.startswith("**/") and fnmatch.fnmatch(rel, pattern[3:]))


def _stem(name: str) -> str:
    from ..io.micrographs import strip_image_extension

    return strip_image_extension(PurePosixPath(name).name)


def fetch_dataset(spec, cache: Path, progress: bool = True):
    """Download what a data set ``empiar:NNNNN`` needs and return the equivalent LOCAL
    :class:`~.datasets.DataSpec` (a particles STAR / coordinate node in the cache, or micrographs
    with ``coords=``). Raises :class:`JobError` for an entry without coordinates."""
    from .datasets import DataSpec

    entry = entry_id(spec.source)
    url = base_url(spec.options.get("url"))
    store = Cache(entry, url, Path(cache) / "empiar" / entry)
    session = _session()
    files = [f for f in store.listing(session) if not f.endswith(".part")]
    sums = store.checksums(files, session)
    mic_glob = spec.options.get("mics", "**/*.mrc")
    mics = [f for f in files if _matches(f, mic_glob) and f.lower().endswith((".mrc", ".tif", ".tiff"))]
    if "coords" in spec.options:
        coords = [f for f in files if _matches(f, spec.options["coords"])]
    else:
        coords = [f for f in files if f.lower().endswith(COORD_SUFFIXES) and not _MD5_NAME.search(PurePosixPath(f).name)]
    if not coords:
        raise JobError(f"EMPIAR entry {entry} has no particle coordinates (no .star, .box, .coords or .cs file "
                       f"under {url}/{entry}/): only entries with particle picks can train; if they are there "
                       "under other names, give coords=GLOB")
    if not mics:
        raise JobError(f"EMPIAR entry {entry} has no micrographs matching {mic_glob} under {url}/{entry}/ (give mics=GLOB)")
    local_coords = [store.fetch(c, sums.get(c), session, progress) for c in coords]
    options = {k: v for k, v in spec.options.items() if k not in ("url", "mics", "coords")}
    # a particles STAR / coordinate node / .cs names its micrographs; else per-micrograph files
    single = _single_source(local_coords)
    if single is not None:
        wanted = _micrograph_names(single)
        by_stem = {_stem(m): m for m in mics}
        chosen = [by_stem[s] for s in dict.fromkeys(_stem(n) for n in wanted) if s in by_stem]
    else:
        stems = {PurePosixPath(c).stem for c in coords}
        chosen = [m for m in mics if any(s == _stem(m) or s.startswith(_stem(m) + "_") for s in stems)]
    if not chosen:
        raise JobError(f"EMPIAR entry {entry}: no micrograph matching {mic_glob} has coordinates")
    if "max_mics" in spec.options:
        chosen = chosen[: int(spec.options["max_mics"])]
    items = chosen
    if progress:
        from tqdm import tqdm

        items = tqdm(chosen, desc=f"EMPIAR-{entry}", unit="micrograph")
    local_mics = [store.fetch(m, sums.get(m), session, progress) for m in items]
    if single is not None:
        return DataSpec(str(single), spec.diameter_A, spec.box_px, {"root": str(store.folder), **options,
                        "_files": "\n".join(map(str, local_mics))}, spec.where)  # fmt: skip
    return DataSpec(f"EMPIAR-{entry}", spec.diameter_A, spec.box_px,
                    {"coords": str(store.folder), **options, "_files": "\n".join(map(str, local_mics))}, spec.where)


def _single_source(paths: list[Path]) -> Path | None:
    """The one file among downloaded coordinates that names micrographs itself (a particles STAR,
    a 4/5 coordinate table or a .cs), else None."""
    from ..io.particles import is_particles_star
    from ..io.star import read_star

    for path in paths:
        if path.suffix == ".cs":
            return path
        if path.suffix == ".star":
            try:
                blocks = read_star(path)
            except JobError:
                continue
            if is_particles_star(blocks) or any("rlnMicrographCoordinates" in df.columns for df in blocks.values()):
                return path
    return None


def _micrograph_names(path: Path) -> list[str]:
    if path.suffix == ".cs":
        from ..io.particles import read_particles_cs

        return list(read_particles_cs(path)["micrograph"])
    from ..io.star import read_star

    for df in read_star(path).values():
        if "rlnMicrographName" in df.columns:
            return list(df["rlnMicrographName"].astype(str))
    return []
