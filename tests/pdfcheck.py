"""Structural check of a PDF file (no PDF library needed): header, trailer, cross-reference table
and page count."""

from __future__ import annotations

import re
from pathlib import Path


def pdf_pages(path: Path) -> int:
    """The number of pages of a well-formed PDF; AssertionError naming what is wrong otherwise."""
    data = Path(path).read_bytes()
    assert data.startswith(b"%PDF-1."), f"{path}: no PDF header"
    assert data.rstrip().endswith(b"%%EOF"), f"{path}: no %%EOF trailer (truncated?)"
    start = re.findall(rb"startxref\s+(\d+)", data)
    assert start, f"{path}: no startxref"
    offset = int(start[-1])
    assert data[offset : offset + 4] == b"xref", f"{path}: startxref does not point at the xref table"
    counts = [int(n) for n in re.findall(rb"/Type\s*/Pages\b.*?/Count\s+(\d+)", data, flags=re.S)]
    pages = len(re.findall(rb"/Type\s*/Page\b(?!s)", data))
    assert counts and counts[0] == pages, f"{path}: page tree says {counts}, {pages} page objects"
    return pages
