"""Regenerate the ``--help`` blocks of docs/cli.md from the real command line.

Every command and subcommand registered in ``anemoi_ckpt.cli.main.main()`` has one marked
region in docs/cli.md::

    <!-- help:adapters list -->
    ```
    Usage: anemoi-ckpt adapters list [OPTIONS] FILE
    ...
    ```
    <!-- /help -->

``python docs/make_cli_reference.py`` rewrites each region with the help text the command
prints today; a command that has no region yet (a command added since) gets one in the
section "More commands" at the end of the page, so a new command can never be missing.
``--check`` writes nothing and exits 1 naming each stale, missing or unknown block
(tests/test_docs.py runs the same check).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import sys
from pathlib import Path

import click
from click.testing import CliRunner

CLI_MD = Path(__file__).resolve().parent / "cli.md"
# help as printed on an 80-column terminal, whatever terminal runs the generator
WIDTH = 80
REGION = re.compile(r"<!-- help:(?P<name>[a-z0-9 _-]+) -->\n(?P<body>.*?)<!-- /help -->\n?", re.S)
APPENDIX = "## More commands\n\nHelp of the commands not described above (generated).\n"


def registered_cli() -> click.Group:
    """The root group with every command registered: ``main()`` imports the command modules
    before parsing, so calling it with ``--help`` registers exactly what users get, including
    commands added later (no list of modules is kept here)."""
    from anemoi_ckpt.cli import main as main_mod

    argv = sys.argv
    sys.argv = ["anemoi-ckpt", "--help"]
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
            main_mod.main()
    finally:
        sys.argv = argv
    return main_mod.cli


def command_names(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path below ``group`` (``("adapters", "list")``), groups included, sorted."""
    ctx = click.Context(group, info_name="anemoi-ckpt")
    out: list[tuple[str, ...]] = []
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        if cmd is None or cmd.hidden:
            continue
        out.append((*prefix, name))
        if isinstance(cmd, click.Group):
            out.extend(command_names(cmd, (*prefix, name)))
    return out


def help_text(cli: click.Group, path: tuple[str, ...]) -> str:
    """What ``anemoi-ckpt <path> --help`` (``()``: the root) prints on an 80-column terminal."""
    result = CliRunner().invoke(cli, [*path, "--help"], prog_name="anemoi-ckpt",
                                terminal_width=WIDTH, max_content_width=WIDTH)
    if result.exit_code != 0:
        raise RuntimeError(f"anemoi-ckpt {' '.join(path)} --help exited {result.exit_code}: {result.output}")
    return result.output.rstrip() + "\n"


def all_help() -> dict[str, str]:
    """Command name (``"adapters list"``) -> its help text, for every registered command."""
    cli = registered_cli()
    helps = {"anemoi-ckpt": help_text(cli, ())}  # the root: the list of commands
    helps.update({" ".join(p): help_text(cli, p) for p in command_names(cli)})
    return helps


def block(name: str, text: str) -> str:
    return f"<!-- help:{name} -->\n```\n{text}```\n<!-- /help -->\n"


def render(doc: str, helps: dict[str, str]) -> str:
    """``doc`` with every region rewritten and the missing ones added under "More commands"."""
    present = set()

    def sub(m: re.Match[str]) -> str:
        name = m.group("name")
        present.add(name)
        return block(name, helps[name]) if name in helps else m.group(0)

    doc = REGION.sub(sub, doc)
    missing = [n for n in helps if n not in present]
    if missing:
        if APPENDIX not in doc:
            doc = doc.rstrip("\n") + "\n\n" + APPENDIX
        head, _, tail = doc.partition(APPENDIX)
        doc = head + APPENDIX + tail + "".join(f"\n`anemoi-ckpt {n} --help`:\n\n{block(n, helps[n])}"
                                              for n in missing)
    return doc


def problems(doc: str, helps: dict[str, str]) -> list[str]:
    """What is out of date in ``doc``: one line per stale, missing, duplicated or unknown block."""
    found: dict[str, list[str]] = {}
    for m in REGION.finditer(doc):
        found.setdefault(m.group("name"), []).append(m.group("body"))
    out = []
    for name, text in helps.items():
        bodies = found.get(name, [])
        if not bodies:
            out.append(f"no help block for '{name}'")
        elif len(bodies) > 1:
            out.append(f"{len(bodies)} help blocks for '{name}'")
        elif bodies[0] != f"```\n{text}```\n":
            shown = "anemoi-ckpt" if name == "anemoi-ckpt" else f"anemoi-ckpt {name}"
            out.append(f"help block for '{name}' differs from '{shown} --help'")
    out += [f"help block for '{n}', which is not a command" for n in found if n not in helps]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report stale blocks; write nothing")
    parser.add_argument("--file", type=Path, default=CLI_MD, help="the page (default: docs/cli.md)")
    args = parser.parse_args(argv)
    helps = all_help()
    doc = args.file.read_text(encoding="utf-8")
    if args.check:
        stale = problems(doc, helps)
        for line in stale:
            print(f"{args.file}: {line} (run python docs/make_cli_reference.py)", file=sys.stderr)
        return 1 if stale else 0
    new = render(doc, helps)
    if new != doc:
        args.file.write_text(new, encoding="utf-8")
        print(f"updated {args.file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
