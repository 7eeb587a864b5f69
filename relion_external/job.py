"""What every DeepPicker External job shares: arguments as RELION passes them, logging to run.out /
run.err, the exit markers, abort polling and progress lines.

RELION runs ``<exe> --o External/jobNNN/ [--in_mics F] [--in_coords F] [--<label> <value>]... --j N``
in the project directory, appends stdout / stderr to ``<job dir>run.out`` / ``run.err``, ignores the
exit code and waits for one of ``RELION_JOB_EXIT_SUCCESS`` / ``_FAILURE`` / ``_ABORTED`` in the job
directory. The GUI asks a job to stop by creating ``RELION_JOB_ABORT_NOW`` there; the job then writes
``RELION_JOB_EXIT_ABORTED`` and removes ``RELION_JOB_ABORT_NOW`` (RELION's External-job rules).

:class:`RelionJob` is the one place that writes exit markers (as the decorator of RELION 5's own
Python jobs, ``tomography_python_programs/_utils/relion.py``): stale markers of an earlier run are
removed on entry, and exactly one marker is written on every way out, crashes included.
"""

from __future__ import annotations

import argparse
import logging
import math
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Sequence

from deeppicker_relion.errors import DeepPickerError, JobError

SUCCESS = "RELION_JOB_EXIT_SUCCESS"
FAILURE = "RELION_JOB_EXIT_FAILURE"
ABORTED = "RELION_JOB_EXIT_ABORTED"
ABORT_NOW = "RELION_JOB_ABORT_NOW"
EXIT_MARKERS = (SUCCESS, FAILURE, ABORTED)

#: Arguments RELION may add that the jobs do not use; accepted silently.
RELION_EXTRA_ARGUMENTS = ("--pipeline_control",)

log = logging.getLogger("deeppicker.relion")


class Terminated(Exception):
    """The process got SIGTERM (a queue system or ``kill``)."""


# --------------------------------------------------------------------------- arguments


class _Parser(argparse.ArgumentParser):
    """argparse that raises :class:`JobError` (one line) instead of printing usage and exiting."""

    def error(self, message: str):  # type: ignore[override]
        raise JobError(f"bad arguments: {message} (see {self.prog} --help)")


def make_parser(prog: str, description: str, epilog: str | None = None) -> argparse.ArgumentParser:
    """A parser with the arguments RELION passes to every External job: ``--o`` and ``--j``."""
    parser = _Parser(
        prog=prog,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--o", required=True, metavar="DIR", help="job directory (RELION: External/jobNNN/)")
    parser.add_argument("--j", type=int, default=1, metavar="N", help="CPU threads (RELION: Running tab)")
    return parser


def optional(parser: argparse.ArgumentParser, flag: str, **kwargs) -> None:
    """A user parameter (Params tab). RELION passes ``--label`` without a value when the value field is
    empty: that gives the default (``const``)."""
    kwargs.setdefault("const", kwargs.get("default"))
    parser.add_argument(flag, nargs="?", **kwargs)


def parse_arguments(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """Parse, accepting unknown arguments (logged, except those RELION adds itself)."""
    args, unknown = parser.parse_known_args(list(argv))
    ignored, skip = [], False
    for i, word in enumerate(unknown):
        if skip:
            skip = False
            continue
        if word in RELION_EXTRA_ARGUMENTS:
            skip = i + 1 < len(unknown) and not unknown[i + 1].startswith("--")
            continue
        ignored.append(word)
    if ignored:
        log.warning("ignoring unknown arguments: %s", " ".join(ignored))
    return args


def _job_dir(argv: Sequence[str]) -> str | None:
    """``--o`` (or ``--o=DIR``) from the command line, before anything else can fail."""
    for i, word in enumerate(argv):
        if word == "--o" and i + 1 < len(argv):
            return argv[i + 1]
        if word.startswith("--o="):
            return word[4:]
    return None


# --------------------------------------------------------------------------- logging


class _BelowWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.WARNING


def setup_logging(verbose: bool = False) -> None:
    """Everything to stdout (run.out); warnings and errors to stderr (run.err) as well."""
    fmt = logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S")
    warn_fmt = logging.Formatter("%(asctime)s %(levelname)s: %(message)s", datefmt="%H:%M:%S")
    out = logging.StreamHandler(sys.stdout)
    out.setFormatter(fmt)
    out.addFilter(_BelowWarning())
    out_warn = logging.StreamHandler(sys.stdout)
    out_warn.setFormatter(warn_fmt)
    out_warn.setLevel(logging.WARNING)
    err = logging.StreamHandler(sys.stderr)
    err.setFormatter(warn_fmt)
    err.setLevel(logging.WARNING)
    root = logging.getLogger()
    for handler in list(root.handlers):  # the job owns its process's logging (as basicConfig(force=True))
        root.removeHandler(handler)
    for handler in (out, out_warn, err):
        root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.captureWarnings(True)


# --------------------------------------------------------------------------- the job


class RelionJob:
    """Context manager around the whole work of an External job; writes exactly one exit marker.

    On entry: removes exit markers of an earlier run (RELION's "continue" reruns the command in the
    same directory) and turns SIGTERM into an exception. On exit:

    - no exception -> ``RELION_JOB_EXIT_SUCCESS``;
    - :class:`deeppicker_relion.jobs.pick.Aborted` (raised after :meth:`should_abort`) ->
      ``RELION_JOB_EXIT_ABORTED``, and ``RELION_JOB_ABORT_NOW`` is removed;
    - :class:`~deeppicker_relion.errors.DeepPickerError` (a problem the user can fix) -> one line
      naming the file and the problem on stderr, ``RELION_JOB_EXIT_FAILURE``;
    - anything else (a crash, SIGTERM, Ctrl-C) -> the traceback and a summary line on stderr,
      ``RELION_JOB_EXIT_FAILURE``.

    Exceptions are not propagated: :attr:`exit_code` holds 0 (success), 1 (failure) or 2 (aborted).
    """

    def __init__(self, outdir: str | Path, program: str):
        self.outdir = Path(outdir)
        self.program = program
        self.exit_code: int | None = None
        self.marker: str | None = None
        self._old_sigterm = None

    def should_abort(self) -> bool:
        """True once the user asked to abort (``RELION_JOB_ABORT_NOW`` exists)."""
        return (self.outdir / ABORT_NOW).exists()

    def check_abort(self) -> None:
        """Raise ``Aborted`` if the user asked to abort."""
        if self.should_abort():
            from deeppicker_relion.jobs.pick import Aborted

            raise Aborted("abort requested")

    def __enter__(self) -> "RelionJob":
        self.outdir.mkdir(parents=True, exist_ok=True)
        for name in EXIT_MARKERS:
            (self.outdir / name).unlink(missing_ok=True)
        try:
            self._old_sigterm = signal.signal(signal.SIGTERM, _raise_terminated)
        except ValueError:  # not the main thread (embedded use): leave signals alone
            self._old_sigterm = None
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self._old_sigterm is not None:
            signal.signal(signal.SIGTERM, self._old_sigterm)
        # Aborted lives in pickjob, which imports torch: never import it here (a failure must not
        # wait for, or be broken by, that import); if pickjob is not loaded, nothing raised Aborted.
        pickjob = sys.modules.get("deeppicker_relion.jobs.pick")
        aborted = exc_type is not None and pickjob is not None and issubclass(exc_type, pickjob.Aborted)
        if exc_type is None or (exc_type is SystemExit and exc.code in (0, None)):
            self._finish(SUCCESS, 0)
        elif aborted:
            (self.outdir / ABORT_NOW).unlink(missing_ok=True)
            print(f"{time.strftime('%H:%M:%S')} aborted on request ({ABORT_NOW}); "
                  "finished micrographs are kept and a rerun continues from there", flush=True)
            self._finish(ABORTED, 2)
        elif issubclass(exc_type, DeepPickerError):
            self._fail(f"{self.program}: error: {exc}")
        else:
            sys.stdout.flush()
            traceback.print_exception(exc_type, exc, tb, file=sys.stderr)
            what = "stopped by SIGTERM" if exc_type is Terminated else (
                "interrupted" if exc_type is KeyboardInterrupt else
                f"unexpected error (please report it with run.err): {exc_type.__name__}: {exc}")
            self._fail(f"{self.program}: {what}")
        return True  # handled: the exit code says what happened

    def _fail(self, line: str) -> None:
        line = " ".join(line.split())
        print(line, file=sys.stderr, flush=True)
        print(f"{time.strftime('%H:%M:%S')} FAILED: {line}", flush=True)
        self._finish(FAILURE, 1)

    def _finish(self, marker: str, code: int) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        for name in EXIT_MARKERS:
            if name != marker:
                (self.outdir / name).unlink(missing_ok=True)
        try:
            (self.outdir / marker).touch()
        except OSError as err:
            print(f"{self.program}: cannot write {self.outdir / marker}: {err}", file=sys.stderr, flush=True)
        self.marker, self.exit_code = marker, code


def _raise_terminated(signum, frame) -> None:
    raise Terminated(f"signal {signal.Signals(signum).name}")


def run_external(
    program: str,
    argv: Sequence[str] | None,
    build_parser: Callable[[], argparse.ArgumentParser],
    body: Callable[[argparse.Namespace, RelionJob], None],
) -> int:
    """Parse ``argv`` and run ``body(args, job)`` inside :class:`RelionJob`; return the exit code.

    Without ``--o`` there is no job directory to write a marker to: the error goes to stderr and
    the exit code is 2. ``--help`` prints the help and writes no marker.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if "-h" in argv or "--help" in argv:
        parser.print_help()
        return 0
    outdir = _job_dir(argv)
    if not outdir:
        print(f"{program}: error: --o <job directory> is required (RELION passes --o External/jobNNN/)",
              file=sys.stderr, flush=True)
        return 2
    job = RelionJob(outdir, program)
    try:
        with job:
            setup_logging()
            log.info("%s %s", program, " ".join(argv))
            body(parse_arguments(parser, argv), job)
    except OSError as err:  # only entering can raise: RelionJob.__exit__ handles everything else
        print(f"{program}: error: cannot use the job directory {outdir}: {err}", file=sys.stderr, flush=True)
        return 2
    return int(job.exit_code if job.exit_code is not None else 1)


# --------------------------------------------------------------------------- progress


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


class Progress:
    """``on_progress(done, total, particles, seconds)`` callback for run_pick_job writing progress
    lines: micrographs done / total, particles so far, seconds per micrograph, ETA.

    A line at the first micrograph, then when ``fraction`` of the micrographs were done since the
    last line (at most one per ``min_gap`` seconds) or ``interval`` seconds passed, and at the end:
    about 20-40 lines for any number of micrographs, plus one every ``interval`` seconds on long runs.
    """

    def __init__(
        self,
        logger: logging.Logger = log,
        interval: float = 10.0,
        fraction: float = 0.05,
        min_gap: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.log, self.interval, self.fraction, self.min_gap, self.clock = logger, interval, fraction, min_gap, clock
        self.first_done: int | None = None
        self.last_done = 0
        self.last_time = -math.inf
        self.lines = 0

    def __call__(self, done: int, total: int, particles: int, seconds: float) -> None:
        now = self.clock()
        if self.first_done is None:
            self.first_done = done - 1  # micrographs done in an earlier run are not timed
            show = True
        else:
            since = now - self.last_time
            show = (
                done >= total
                or since >= self.interval
                or (done - self.last_done >= self.fraction * total and since >= self.min_gap)
            )
        if not show:
            return
        timed = done - self.first_done
        rate = seconds / timed if timed > 0 else math.nan
        eta = rate * (total - done)
        self.log.info(
            "progress: %d/%d micrographs (%.0f %%), %d particles, %.2f s/micrograph, ETA %s",
            done, total, 100.0 * done / max(total, 1), particles, rate, _duration(eta),
        )
        self.last_done, self.last_time = done, now
        self.lines += 1
