"""The documentation cannot drift from the program.

1. Every ``--help`` block of docs/cli.md equals what the real command prints, and every
   registered command (new ones included) has one (docs/make_cli_reference.py --check).
2. The snippets marked ``<!-- run -->`` in README.md and docs/*.md run, on the files the real
   ``anemoi-ckpt demo`` writes:
   - ``<!-- run: cd DIR -->`` runs the block in DIR (a walkthrough that said ``cd DIR`` before);
   - ``<!-- run: continue -->`` runs the block after the page's previous runnable block, in the
     same folder with that block's files (a walkthrough's later steps use earlier steps' outputs);
   - a ```python block is executed and must not raise;
   - a ```sh / ```console block holds ``$ anemoi-ckpt ...`` commands, each followed by the
     output it prints (stdout, then stderr). A command shown with an ``anemoi-ckpt: error:``
     line must fail, one ending in ``# exit status N`` must exit N, any other must succeed;
     ``$ cd DIR`` moves the following commands to DIR; the shell commands ``cp``, ``cat``, ``echo``,
     ``cmp``, ``ls`` (and ``&&`` chains of them) run through bash. In the expected output a line ``...`` stands for
     any number of lines and ``...`` inside a line for any text: that is how a page marks what
     changes from run to run (uuids, times, folders); everything else is compared literally.
Each snippet runs in a fresh folder holding a copy of the demo's files in ``demo-output/``, as
after ``make demo`` in a checkout.
"""

from __future__ import annotations

import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN = re.compile(r"<!-- run(?:: (?:cd (?P<dir>[\w./-]+)|(?P<cont>continue)))? -->\n"
                 r"```(?P<lang>[a-z]*)\n(?P<body>.*?)\n```\n", re.S)
SHELL = {"cp", "cat", "cmp", "ls", "echo"}  # plain shell commands a walkthrough may show besides anemoi-ckpt
STATUS = re.compile(r"\s+# exit status (\d+)$")
DEMO = "anemoi-ckpt demo -o demo-output"  # the documented demo run, done once for every snippet


@dataclass(frozen=True)
class Snippet:
    page: Path
    line: int
    lang: str
    body: str
    cwd: str  # `<!-- run: cd demo-output -->`: where the commands run (a page's walkthrough folder)
    cont: bool = False  # `<!-- run: continue -->`: runs after the page's previous block, in its folder

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def snippets() -> list[Snippet]:
    out = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for m in RUN.finditer(text):
            out.append(Snippet(page, text.count("\n", 0, m.start()) + 2, m.group("lang"), m.group("body"),
                               m.group("dir") or ".", bool(m.group("cont"))))
    return out


def chains() -> list[list[Snippet]]:
    """The snippets grouped so that a ``continue`` block runs after the blocks it continues."""
    out: list[list[Snippet]] = []
    for s in snippets():
        if s.cont:
            assert out and out[-1][0].page == s.page, f"{s.id}: 'continue' with no runnable block before it"
            out[-1].append(s)
        else:
            out.append([s])
    return out


def sessions(body: str) -> list[tuple[str, list[str]]]:
    """``[(command, expected output lines)]`` of a shell transcript."""
    out: list[tuple[str, list[str]]] = []
    for line in body.splitlines():
        if line.startswith("$ "):
            out.append((line[2:], []))
        elif out:
            out[-1][1].append(line)
        elif line.strip() and not line.startswith("#"):
            raise AssertionError(f"output before any '$ ' command: {line!r}")
    return out


def pattern(expected: list[str]) -> re.Pattern[str]:
    """The expected lines as a regex: ``...`` alone = any lines, ``...`` in a line = any text."""
    parts = []
    for line in expected:
        if line.strip() == "...":
            parts.append(r"(?:[^\n]*\n)*?")
        else:
            parts.append(".*?".join(re.escape(p) for p in line.rstrip().split("...")) + r"[ \t]*\n")
    return re.compile("".join(parts), re.S)


def first_miss(expected: list[str], got: str) -> str:
    """The first expected line after which the output no longer matches (for the message)."""
    for i in range(1, len(expected) + 1):
        if not pattern([*expected[:i], "..."]).match(got):
            return expected[i - 1]
    return "(the output has more lines)"


def cli(command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    argv = shlex.split(command)
    if argv[0] in SHELL:
        assert all(shlex.split(part)[0] in SHELL for part in command.split("&&")), command
        return subprocess.run(["bash", "-c", command], cwd=cwd, text=True, capture_output=True, timeout=60)
    assert argv[0] == "anemoi-ckpt", f"only anemoi-ckpt and {sorted(SHELL)} commands run in docs snippets: {command}"
    return subprocess.run([sys.executable, "-m", "anemoi_ckpt", *argv[1:]], cwd=cwd, text=True,
                          capture_output=True, timeout=120,
                          env={**os.environ, "COLUMNS": "80", "NO_COLOR": "1"})


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    root = tmp_path_factory.mktemp("docs-demo")
    out = cli(DEMO, root)
    assert out.returncode == 0, out.stdout + out.stderr
    return root / "demo-output", out


def test_cli_help_blocks_match_the_real_help() -> None:
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        import make_cli_reference as ref
    finally:
        sys.path.remove(str(ROOT / "docs"))
    helps = ref.all_help()
    assert {"anemoi-ckpt", "convert", "adapters list"} <= set(helps)
    problems = ref.problems(ref.CLI_MD.read_text(encoding="utf-8"), helps)
    assert not problems, "\n".join(problems) + "\n(run python docs/make_cli_reference.py)"


def test_help_check_catches_drift(tmp_path: Path) -> None:
    """The check fails on an edited block and on a command without a block; the generator
    repairs both (so a command added later gets its block by running it)."""
    page = tmp_path / "cli.md"
    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    stale = text.replace("<!-- help:convert -->\n```\n", "<!-- help:convert -->\n```\n  --gone  An old option.\n")
    assert stale != text
    stale = re.sub(r"<!-- help:verify -->\n.*?<!-- /help -->\n", "", stale, flags=re.S)
    gen = [sys.executable, str(ROOT / "docs" / "make_cli_reference.py"), "--file", str(page)]
    page.write_text(stale, encoding="utf-8")
    check = subprocess.run([*gen, "--check"], capture_output=True, text=True, timeout=120)
    assert check.returncode == 1
    assert "help block for 'convert' differs" in check.stderr and "no help block for 'verify'" in check.stderr
    assert subprocess.run(gen, capture_output=True, timeout=120).returncode == 0
    assert subprocess.run([*gen, "--check"], capture_output=True, timeout=120).returncode == 0
    assert "## More commands" in page.read_text(encoding="utf-8")


def test_pages_have_runnable_snippets() -> None:
    found = {s.page.name for s in snippets()}
    assert {"README.md", "cli.md", "python-api.md", "adapters.md"} <= found, found


@pytest.mark.parametrize("chain", chains(), ids=lambda c: c[0].id)
def test_snippet_runs(chain: list[Snippet], demo_run: tuple[Path, subprocess.CompletedProcess[str]],
                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    demo_dir, demo_out = demo_run
    work = tmp_path / "work"  # as after `make demo` in a checkout: the files in demo-output/
    shutil.copytree(demo_dir, work / "demo-output")
    cwd = work
    for snippet in chain:
        cwd = cwd if snippet.cont else work / snippet.cwd
        cwd = _run(snippet, demo_out, work, cwd, tmp_path, monkeypatch)


def _run(snippet: Snippet, demo_out: subprocess.CompletedProcess[str], work: Path, cwd: Path,
         tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Runs one snippet; returns the folder its last ``cd`` left it in."""
    where = f"{snippet.id}"
    if snippet.lang == "python":
        monkeypatch.chdir(cwd)
        runpy.run_path(str(_write(tmp_path / "snippet.py", snippet.body)), run_name="__main__")
        return cwd
    assert snippet.lang in ("sh", "console", ""), f"{where}: cannot run a {snippet.lang} block"
    for command, expected in sessions(snippet.body):
        if command.startswith("cd "):  # `$ cd demo-output`: the following commands run there
            cwd = cwd / command[3:].strip()
            continue
        status = STATUS.search(command)
        command = STATUS.sub("", command)
        out = demo_out if command.split("#")[0].strip() == DEMO else cli(command, cwd)
        got = out.stdout + out.stderr
        fails = any(line.startswith("anemoi-ckpt: error:") for line in expected)
        if status:
            assert out.returncode == int(status.group(1)), f"{where}: $ {command} exited {out.returncode}:\n{got}"
        else:
            assert (out.returncode != 0) == fails, f"{where}: $ {command} exited {out.returncode}:\n{got}"
        if expected:
            got = got if got.endswith("\n") else got + "\n"
            assert pattern(expected).fullmatch(got), (
                f"{where}: $ {command} printed\n{got}\nfirst line not matched: {first_miss(expected, got)!r}")
    return cwd


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path
