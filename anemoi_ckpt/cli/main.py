"""Entry point, global options and the error policy.

Every failure caused by an input becomes one line on stderr,
``anemoi-ckpt: error: <file>: <what> (<hint>)``, and exit status 1; bad usage exits 2 (click's
convention). ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

import click

from .. import __version__
from ..errors import AncError

PROG = "anemoi-ckpt"


def emit_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, ensure_ascii=False, default=str))


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        debug = bool(ctx.params.get("debug"))  # the group's own options are parsed by now
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except AncError as e:
            if debug:
                raise
            click.echo(f"{PROG}: error: {e.line()}", err=True)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo(f"{PROG}: interrupted", err=True)
            ctx.exit(130)
        except Exception as e:  # noqa: BLE001 - the one place that turns surprises into one line
            if debug:
                raise
            click.echo(f"{PROG}: error: {type(e).__name__}: {e} (re-run with --debug for details)", err=True)
            ctx.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name=PROG, message="%(prog)s %(version)s")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
def cli(debug: bool) -> None:
    """Safe, versioned checkpoints for Anemoi models (.anc)."""
    warnings.simplefilter("default")
    warnings.formatwarning = lambda msg, cat, *a, **k: f"{PROG}: warning: {msg}\n"  # type: ignore[assignment]


def main() -> None:
    from . import commands  # noqa: F401 - registers the commands
    from . import adapters_group  # noqa: F401
    from . import split_cmds  # noqa: F401
    from . import adapter_cmds  # noqa: F401
    from . import diff_cmd  # noqa: F401
    from . import train_cmds  # noqa: F401
    from . import catalogue_cmds  # noqa: F401
    from . import remote_cmds  # noqa: F401
    from . import metadata_cmd  # noqa: F401
    from . import export_cmd  # noqa: F401
    from . import sign_cmds  # noqa: F401

    cli(prog_name=PROG)
