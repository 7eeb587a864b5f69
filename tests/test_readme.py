"""README.md: every command shown in it is run by a test, the parameter reference
(docs/parameters.md, linked from the README) is what the parsers say and every option of the
README's parameter table exists there, and every error message of the troubleshooting table still
exists.

Commands are the lines of the README's ```bash / ```console blocks (``$ `` lines in console
blocks; ``\\`` continuations joined; ``&&`` chains split). Each must be either run here, in README
order, on a copy of the demo's folder (``deeppicker ...``, ``deeppicker_relion_pick ...``, and
``cd`` inside a ``( ... )`` subshell), or listed in ELSEWHERE with the file that runs it and what
in that file proves it. A new command in the README without either fails
test_every_readme_command_is_run_by_a_test.
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest
from conftest import ROOT
from pdfcheck import pdf_pages

from deeppicker_relion.cli.reference import BEGIN, END, parameter_reference

README = ROOT / "README.md"
PARAMETERS = ROOT / "docs" / "parameters.md"  # the full reference, generated; the README has the main options

# Commands run outside this file: command -> (file that runs it, strings in that file showing it).
ELSEWHERE: dict[str, tuple[str, list[str]]] = {
    # Installation: .ci/run installs on a fresh machine the same way (CPU torch pin, then the package).
    "pip install torch==2.13.0 -e .": (".ci/run", ["pip install -q torch==2.13.0", "pip install -q -e"]),
    # The test command: .ci/run ends with it.
    "python3 -m pytest -q": (".ci/run", ["python3 -m pytest -q"]),
    # The README's first command: the session fixture demo_run runs exactly this (a fresh process of
    # the installed console script in an empty folder); tests/test_demo.py checks what it writes.
    "deeppicker demo": ("tests/conftest.py", ['"demo"', "def demo_run"]),
    # The scripted RELION pipeline: the harness schedules the External job with these GUI option keys
    # and runs it with --RunJobs (trailing space); tests/test_relion_external.py runs Import -> this
    # pick job -> Extract -> Class2D through it with the real RELION 3.1 (skipped where it is missing).
    'relion_pipeliner --addJob External --addJobOptions "fn_exe == deeppicker_relion_pick;in_mic == '
    'CtfFind/job004/micrographs_ctf.star;param1_label == particle_diameter;param1_value == 180;nr_threads == 4"': (
        "tests/relion_harness.py",
        ['"--addJob", job_type, "--addJobOptions"', '"fn_exe"', '"in_mic"', 'param{i}_label', 'param{i}_value"',
         '"nr_threads"', 'add_job(project, "External"'],
    ),
    'relion_pipeliner --RunJobs "External/job005/ "': ("tests/relion_harness.py", ['"--RunJobs", " ".join(jobs) + " "']),
}
RUN_HERE = ("deeppicker ", "deeppicker_relion_pick ")


def readme_commands(text: str) -> list[str]:
    """Every command of the README's bash/console blocks, in order (``&&`` chains kept whole)."""
    commands: list[str] = []
    for lang, body in re.findall(r"^```(bash|console|sh|shell)[ \t]*\n(.*?)^```", text, flags=re.M | re.S):
        lines = body.replace("\\\n", " ").splitlines()
        if lang == "console":
            lines = [ln[2:] for ln in lines if ln.startswith("$ ")]
        commands += [" ".join(ln.split()) for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    return commands


def parts(command: str) -> tuple[bool, list[str]]:
    """(runs in a subshell, the commands of an ``&&`` chain)."""
    sub = command.startswith("(") and command.endswith(")")
    body = command[1:-1] if sub else command
    return sub, [p.strip() for p in body.split("&&")]


def _commands() -> list[str]:
    return readme_commands(README.read_text())


def test_readme_starts_with_install_and_demo_then_the_test_command() -> None:
    commands = _commands()
    assert commands[:2] == ["pip install torch==2.13.0 -e . && deeppicker demo", "python3 -m pytest -q"]
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == "python3 -m pytest -q", "the README's test command must be what .ci/run runs"


def test_every_readme_command_is_run_by_a_test() -> None:
    unrun = []
    used = set()
    for command in _commands():
        sub, chain = parts(command)
        for part in chain:
            if part in ELSEWHERE:
                used.add(part)
            elif part.startswith(RUN_HERE) or (sub and part.startswith("cd ")):
                pass
            else:
                unrun.append(part)
    assert not unrun, f"README commands that no test runs (run them here or map them in ELSEWHERE): {unrun}"
    assert used == set(ELSEWHERE), f"ELSEWHERE lists commands the README no longer shows: {set(ELSEWHERE) - used}"
    for command, (where, evidence) in ELSEWHERE.items():
        text = (ROOT / where).read_text()
        missing = [e for e in evidence if e not in text]
        assert not missing, f"{where} does not show that it runs {command!r}: {missing} not found"


def _run(argv: list[str]) -> int:
    if argv[0] == "deeppicker":
        from deeppicker_relion.cli.main import main
    elif argv[0] == "deeppicker_relion_pick":
        from relion_external.pick import main
    else:
        raise AssertionError(f"no runner for {argv[0]}")
    try:
        return int(main(argv[1:]) or 0)
    except SystemExit as exit_:  # --help, --version
        return int(exit_.code or 0)


def test_readme_commands_run_on_the_demo_folder(demo_run, tmp_path: Path, monkeypatch, capsys) -> None:
    """Every ``deeppicker`` / ``deeppicker_relion_pick`` command of the README, in README order, in a
    folder holding a copy of the demo's output (as after the README's first command)."""
    folder, _, _ = demo_run
    shutil.copytree(folder, tmp_path / "deeppicker_demo")
    ran = []
    for command in _commands():
        sub, chain = parts(command)
        cwd = tmp_path
        for part in chain:
            if part in ELSEWHERE:
                continue
            if part.startswith("cd "):
                assert sub, f"'cd' outside a ( ... ) subshell changes the folder of every later README command: {command}"
                cwd = cwd / shlex.split(part)[1]
                continue
            monkeypatch.chdir(cwd)
            rc = _run(shlex.split(part))
            out = capsys.readouterr()
            assert rc == 0, f"README command failed ({rc}): {part}\n{out.out[-3000:]}\n{out.err[-3000:]}"
            ran.append(part)
    assert len(ran) >= 10, ran  # the README holds 11 (a guard against the block parser finding none)
    # what the README says these commands write
    picks = tmp_path / "picks"
    assert pdf_pages(picks / "logfile.pdf") >= 4
    assert (picks / "report_topn_curve.png").is_file()  # evaluate --picks picks/ added its pages
    assert (tmp_path / "evaluation" / "evaluation_picks.png").is_file()
    assert len(list((tmp_path / "picks_box" / "deeppicker_demo" / "micrographs").glob("*.box"))) == 4
    assert (tmp_path / "my_model.safetensors").is_file()
    assert (tmp_path / "picks_mine" / "logfile.pdf").is_file()
    assert (tmp_path / "picks_cs" / "particles.cs").is_file()
    assert (tmp_path / "deeppicker_demo" / "External" / "job001" / "RELION_JOB_EXIT_SUCCESS").is_file()
    assert (tmp_path / "picks_shared" / "picking_summary.star").is_file()


def test_parameter_reference_is_generated_from_the_parsers() -> None:
    assert "(docs/parameters.md)" in README.read_text(), "the README must link the parameter reference"
    text = PARAMETERS.read_text()
    start = text.index(BEGIN[: BEGIN.index("(")])
    block = text[start : text.index(END) + len(END)]
    assert block == parameter_reference(), (
        "docs/parameters.md is out of date: run python3 -m deeppicker_relion.cli.reference docs/parameters.md"
    )


def test_readme_parameter_table_matches_the_parsers() -> None:
    """Each row of the README's parameter table names options of ``deeppicker pick`` and, after a
    slash, the RELION pick job's Params label; each must exist, and a default in backticks must be
    the parser's."""
    from deeppicker_relion.cli.reference import option_rows, parsers

    text = README.read_text()
    section = text[text.index("## Parameters") :]
    section = section[: section.index("\n## ", 1)]
    rows = [ln.split("|")[1:4] for ln in section.splitlines() if ln.startswith("| `")]
    assert len(rows) >= 10, rows
    known = {name: {n.strip("`"): d for names, d, _ in option_rows(parser) for n in names.split(", ")}
             for name, parser in parsers().items()}
    problems = []
    for names, default, _ in rows:
        cli, _, relion = names.partition(" / ")
        for option, command in ((cli, "deeppicker pick"), (relion, "deeppicker_relion_pick")):
            option = option.strip()
            if not option.startswith("`"):
                continue  # e.g. "Running tab threads": not an option
            flag = option.strip("`") if command == "deeppicker pick" else "--" + option.strip("`")
            if flag not in known[command]:
                problems.append(f"{command} has no {flag}")
            elif default.strip().startswith("`") and command == "deeppicker pick" and default.strip() != known[command][flag]:
                problems.append(f"{command} {flag}: README default {default.strip()}, parser {known[command][flag]}")
    assert not problems, problems


def _source_text() -> str:
    """All package and RELION-job source, adjacent string literals joined (messages are often split)."""
    files = sorted((ROOT / "deeppicker_relion").rglob("*.py")) + sorted((ROOT / "relion_external").rglob("*.py"))
    text = "\n".join(p.read_text() for p in files)
    return re.sub(r"""["']\s*\n\s*[rfb]*["']""", "", text)


def test_troubleshooting_messages_exist_in_the_code() -> None:
    text = README.read_text()
    section = text[text.index("## Troubleshooting") :]
    rows = [ln for ln in section.splitlines() if ln.startswith("| `")]
    fragments = [f for row in rows for f in re.findall(r"`([^`]+)`", row.split("|")[1])]
    assert len(fragments) >= 20, fragments  # the README lists 23
    source = _source_text()
    missing = [f for f in fragments if f not in source]
    assert not missing, f"troubleshooting lists messages the code no longer has: {missing}"


@pytest.mark.parametrize(
    "command, expected",
    [
        ("(cd a && b --x 'y z')", (True, ["cd a", "b --x 'y z'"])),
        ("pip install x && deeppicker demo", (False, ["pip install x", "deeppicker demo"])),
    ],
)
def test_command_parsing(command: str, expected) -> None:
    assert parts(command) == expected
    block = "text\n```bash\n# a comment\nfirst --a \\\n  --b\n\nsecond\n```\n```console\n$ third\noutput\n```\n"
    assert readme_commands(block) == ["first --a --b", "second", "third"]
