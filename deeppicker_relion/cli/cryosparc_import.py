"""Import picks (a particles.cs written by a pick job) into a running CryoSPARC as an External job.

Needs a running, licensed CryoSPARC server and cryosparc-tools of the server's major.minor version.
The password is read from $CRYOSPARC_PASSWORD or asked for; the URL and e-mail may also come from
$CRYOSPARC_BASE_URL and $CRYOSPARC_EMAIL. --micrographs names the CryoSPARC output holding the same
micrographs (e.g. an Import Micrographs job): particles are matched to them by file name, so that
Extract From Micrographs and Inspect Picks find them.

Example usage:
  deeppicker cryosparc-import External/job005/particles.cs --project P3 --workspace W1 \\
      --micrographs J3:imported_micrographs --url http://cryosparc-host:39000 --email me@lab.org
"""

from __future__ import annotations

import argparse
import getpass
import os
from pathlib import Path

from ..jobs.cryosparc_import import import_to_cryosparc
from .common import setup


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("particles", type=Path, help="particles.cs written by deeppicker pick --cs or the RELION pick job")
    parser.add_argument("--project", required=True, help="CryoSPARC project uid, e.g. P3")
    parser.add_argument("--workspace", required=True, help="CryoSPARC workspace uid, e.g. W1")
    parser.add_argument("--micrographs", default=None, help="CryoSPARC output with the same micrographs, JOB:OUTPUT (e.g. J3:imported_micrographs)")
    parser.add_argument("--url", default=None, help="CryoSPARC base URL, e.g. http://host:39000 (default $CRYOSPARC_BASE_URL)")
    parser.add_argument("--email", default=None, help="CryoSPARC login e-mail (default $CRYOSPARC_EMAIL)")
    parser.add_argument("--title", default="DeepPicker particle picks", help="title of the External job")


def main(args: argparse.Namespace) -> int:
    setup(args)
    password = os.environ.get("CRYOSPARC_PASSWORD") or getpass.getpass("CryoSPARC password: ")
    uid = import_to_cryosparc(
        args.particles,
        project_uid=args.project,
        workspace_uid=args.workspace,
        title=args.title,
        base_url=args.url,
        email=args.email,
        password=password,
        micrographs=args.micrographs,
    )
    print(f"created External job {args.project} {uid} with the picks of {args.particles}")
    return 0
