"""EMPIAR downloads against a real HTTP server on 127.0.0.1 serving an EMPIAR-shaped tree (built
from ../shared's EMPIAR-10028 ribosome micrographs when present, else generated micrographs):
listing walk, resume of a partial file, MD5 check, cache re-use without requests, clear errors."""

from __future__ import annotations

import hashlib
import http.server
import os
import re
import shutil
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile

from deeppicker_relion.training.datasets import parse_spec, read_dataset
from deeppicker_relion.training.empiar import MANIFEST, Cache, entry_id, list_files
from deeppicker_relion.errors import JobError

from conftest import SHARED, blob_micrograph, write_mrc

RIBOSOME = SHARED / "data" / "empiar10028_ribosome"


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """The standard library's file server (HTML directory listings) plus ``Range: bytes=N-``, as
    EMPIAR's server answers it; records every request path."""

    requests: list[tuple[str, str | None]] = []

    def log_message(self, *args) -> None:  # quiet
        pass

    def send_head(self):
        RangeHandler.requests.append((self.path, self.headers.get("Range")))
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        path = Path(self.translate_path(self.path))
        if not match or not path.is_file():
            return super().send_head()
        start, size = int(match.group(1)), path.stat().st_size
        if start >= size:
            self.send_error(416)
            return None
        handle = open(path, "rb")
        handle.seek(start)
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        self.send_header("Content-Length", str(size - start))
        self.end_headers()
        return handle


@pytest.fixture
def server(tmp_path):
    """An EMPIAR-shaped tree served on 127.0.0.1: entry 10028 with three micrographs, a RELION 3.1
    particles STAR (names relative to its project, as deposited) and an md5sum.txt; entry 10999
    with micrographs only. Yields (base URL, tree root)."""
    root = tmp_path / "world_availability"
    data = root / "10028" / "data"
    rows = []
    if RIBOSOME.is_dir():
        names = sorted(p.stem for p in (RIBOSOME / "micrographs").glob("*.mrc"))[:3]
        (data / "Micrographs").mkdir(parents=True)
        for name in names:
            shutil.copy(RIBOSOME / "micrographs" / f"{name}.mrc", data / "Micrographs" / f"{name}.mrc")
            coords = starfile.read(RIBOSOME / "coords" / f"{name}.star")
            rows.append(pd.DataFrame({"rlnMicrographName": f"MotionCorr/job002/Micrographs/{name}.mrc",
                                      "rlnCoordinateX": coords["rlnCoordinateX"], "rlnCoordinateY": coords["rlnCoordinateY"]}))
        pixel, diameter = 5.36, 300.0
    else:
        for i in range(3):
            image, centres = blob_micrograph(i)
            write_mrc(data / "Micrographs" / f"mic{i}.mrc", image, 4.0)
            rows.append(pd.DataFrame({"rlnMicrographName": f"MotionCorr/job002/Micrographs/mic{i}.mrc",
                                      "rlnCoordinateX": centres["x"], "rlnCoordinateY": centres["y"]}))
        pixel, diameter = 4.0, 128.0
    parts = pd.concat(rows, ignore_index=True).assign(rlnOpticsGroup=1, rlnOriginXAngst=0.0, rlnOriginYAngst=0.0)
    optics = pd.DataFrame({"rlnOpticsGroupName": ["opticsGroup1"], "rlnOpticsGroup": [1], "rlnMicrographPixelSize": [pixel],
                           "rlnImagePixelSize": [pixel], "rlnImageSize": [64], "rlnImageDimensionality": [2]})
    (data / "Particles").mkdir(parents=True)
    starfile.write({"optics": optics, "particles": parts}, data / "Particles" / "particles.star", overwrite=True)
    lines = [f"{hashlib.md5(p.read_bytes()).hexdigest()}  {p.relative_to(root / '10028')}" for p in sorted(data.rglob("*.*"))]
    (root / "10028" / "md5sum.txt").write_text("\n".join(lines) + "\n")
    write_mrc(root / "10999" / "data" / "Micrographs" / "only.mrc", np.zeros((64, 64), np.float32), 1.0)

    handler = partial(RangeHandler, directory=str(tmp_path))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    RangeHandler.requests = []
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/world_availability", root, diameter
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_download_entry_resume_and_cache(server, tmp_path):
    url, root, diameter = server
    files = list_files("10028", url)
    assert "data/Particles/particles.star" in files and "md5sum.txt" in files
    assert sum(f.endswith(".mrc") for f in files) == 3

    cache = tmp_path / "cache"
    mic = next(f for f in files if f.endswith(".mrc"))
    whole = (root / "10028" / mic).read_bytes()
    part = cache / "empiar" / "10028" / (mic + ".part")  # an interrupted earlier download
    part.parent.mkdir(parents=True)
    part.write_bytes(whole[: len(whole) // 3])
    RangeHandler.requests = []

    spec = parse_spec(["empiar:10028", f"{diameter:g}", f"url={url}", "max_mics=2"])
    ds = read_dataset(spec, cache)
    assert len(ds.micrographs) == 2 and not ds.complete
    assert ds.n_particles > 20
    local = Path(ds.micrographs["path"].iloc[0])
    assert local.is_file() and str(local).startswith(str(cache))
    assert (cache / "empiar" / "10028" / mic).read_bytes() == whole  # resumed, not restarted
    assert (f"/world_availability/10028/{mic}", f"bytes={len(whole) // 3}-") in RangeHandler.requests
    assert not part.exists()

    RangeHandler.requests = []  # everything cached: no request at all
    again = read_dataset(spec, cache)
    assert RangeHandler.requests == []
    assert list(again.micrographs["path"]) == list(ds.micrographs["path"])


def test_corrupt_download_is_refused(server, tmp_path):
    url, root, diameter = server
    mic = sorted((root / "10028" / "data" / "Micrographs").glob("*.mrc"))[0]
    rel = str(mic.relative_to(root / "10028"))
    store = Cache("10028", url, tmp_path / "cache")
    with pytest.raises(JobError, match="MD5 mismatch.*partial file was removed"):
        store.fetch(rel, md5="0" * 32, progress=False)
    assert not (tmp_path / "cache" / (rel + ".part")).exists()
    assert not (tmp_path / "cache" / MANIFEST).exists()


def test_entry_without_coordinates(server, tmp_path):
    url, _, _ = server
    with pytest.raises(JobError, match="EMPIAR entry 10999 has no particle coordinates"):
        read_dataset(parse_spec(["empiar:10999", "150", f"url={url}"]), tmp_path / "cache")
    with pytest.raises(JobError, match="EMPIAR entry 12345 not found"):
        read_dataset(parse_spec(["empiar:12345", "150", f"url={url}"]), tmp_path / "cache")
    with pytest.raises(JobError, match="cannot reach"):
        read_dataset(parse_spec(["empiar:10028", "150", "url=http://127.0.0.1:9"]), tmp_path / "cache")
    with pytest.raises(JobError, match="not an EMPIAR entry"):
        entry_id("empiar:abc")


def test_base_url_setting(monkeypatch):
    from deeppicker_relion.training.empiar import DEFAULT_URL, base_url

    assert base_url() == DEFAULT_URL
    monkeypatch.setenv("DEEPPICKER_EMPIAR_URL", "http://mirror.example/empiar/")
    assert base_url() == "http://mirror.example/empiar"
    assert base_url("http://other/x") == "http://other/x"
    assert os.environ["DEEPPICKER_EMPIAR_URL"]
