"""deeppicker: fully automated CNN particle picking for cryo-EM (DeepPicker 2016), for RELION and CryoSPARC.

Coordinates everywhere are particle centres in pixels of the original micrograph (x = column, y = row).
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import signal
import sys

from .. import __version__
from ..errors import DeepPickerError

SUBCOMMANDS = ["pick", "train", "evaluate", "demo", "merge", "cryosparc_import"]


def _docstring(name: str) -> str | None:
    """The module docstring of subcommand ``name``, read from its source without importing it
    (None when the module is not there): ``deeppicker --help`` lists every subcommand without
    loading PyTorch, SciPy, pandas or matplotlib (about 3 s on 2 cores; this takes milliseconds)."""
    spec = importlib.util.find_spec(f"{__package__}.{name}")
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    with open(spec.origin, encoding="utf-8") as handle:
        return ast.get_docstring(ast.parse(handle.read())) or ""


def build_parser(only: str | None = None, light: bool = False) -> argparse.ArgumentParser:
    """The whole ``deeppicker`` parser; with ``only``, just that subcommand's module is imported
    (start-up time: the others pull in matplotlib, cryosparc-tools and more). ``light``: no
    subcommand module is imported at all, each subcommand is listed with its docstring's first
    line and no options (what ``deeppicker --help`` and a command line without a subcommand need)."""
    parser = argparse.ArgumentParser(prog="deeppicker", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"deeppicker {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for name in SUBCOMMANDS:
        if only is not None and name != only:
            continue
        if light:
            doc = _docstring(name)
            if doc is not None:
                first = doc.strip().partition("\n")[0]
                sub.add_parser(name.replace("_", "-"), help=first, description=first)
            continue
        try:
            module = importlib.import_module(f".{name}", __package__)
        except ModuleNotFoundError as err:
            if err.name and err.name.endswith(f".{name}"):
                continue  # subcommand not built yet
            raise
        doc = (module.__doc__ or "").strip()
        first, _, rest = doc.partition("\n")
        p = sub.add_parser(
            name.replace("_", "-"),
            help=first,
            description=first,
            epilog=rest.strip() or None,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(func=module.main)
    return parser


class Terminated(BaseException):
    """SIGTERM (``kill``, ``scancel``, a queue's time limit): unwinds like Ctrl-C, so that files being
    written are removed instead of left half-written."""


def _terminate(signum, frame) -> None:
    raise Terminated()


def _requested(argv: list[str]) -> str | None:
    """The subcommand named on the command line (its module name), if any."""
    first = next((a for a in argv if not a.startswith("-")), None)
    name = first.replace("-", "_") if first else None
    return name if name in SUBCOMMANDS else None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    requested = _requested(argv)
    # without a subcommand (--help, --version, a typo) nothing heavy is imported
    args = build_parser(requested, light=requested is None).parse_args(argv)
    try:
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread (embedded use): leave signals alone
        previous = None
    try:
        return int(args.func(args) or 0)
    except DeepPickerError as err:
        print(f"deeppicker: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("deeppicker: interrupted; run the same command again to continue", file=sys.stderr)
        return 130
    except Terminated:
        print("deeppicker: stopped by SIGTERM; run the same command again to continue", file=sys.stderr)
        return 143
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
