"""Start-up cost of the command lines: ``deeppicker --help`` and ``deeppicker_relion_pick --help``
import none of the heavy modules (PyTorch, SciPy, pandas, matplotlib), so they answer in a fraction
of a second (issue 26: under 0.5 s). Tested on the imports, which do not depend on the machine's
load, not on the clock."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "scipy", "pandas", "matplotlib")


def _imported_after(code: str) -> set[str]:
    """Heavy top-level modules imported by running ``code`` in a fresh interpreter."""
    probe = (
        "import sys, io, contextlib\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        "    try:\n"
        f"        {code}\n"
        "    except SystemExit:\n"
        "        pass\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
        "print(len(out.getvalue()))\n"
    )
    lines = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout.splitlines()
    assert int(lines[-1]) > 200, "the help text was not printed"
    return {m for m in lines[-2].split(",") if m}


def test_deeppicker_help_imports_nothing_heavy():
    assert _imported_after("from deeppicker_relion.cli.main import main; main(['--help'])") == set()


def test_relion_pick_help_imports_nothing_heavy():
    assert _imported_after("from relion_external.pick import main; main(['--help'])") == set()


def test_deeppicker_help_lists_every_subcommand():
    from deeppicker_relion.cli.main import SUBCOMMANDS, build_parser

    text = build_parser(light=True).format_help()
    for name in SUBCOMMANDS:
        assert name.replace("_", "-") in text
