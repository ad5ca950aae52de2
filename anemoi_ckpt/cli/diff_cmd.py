"""``anemoi-ckpt diff A B``: what changed between two checkpoints, cmp-style exit codes."""

from __future__ import annotations

import click

from ..errors import one_line
from .commands import json_option
from .main import cli, emit_json


def _num(x: float | int) -> str:
    return str(x) if isinstance(x, int) else "inf" if x == float("inf") else f"{x:.1e}"


def _stats_text(st) -> str:  # noqa: ANN001 - a diff_stats.ValueStats
    tol = "" if st.differing == 0 or not st.within_tolerance else "  within tolerance"
    if st.differing == 0:
        return "  values equal (bytes differ)"
    return (f"  max|Δ| {_num(st.max_abs)}  max rel {_num(st.max_rel)}  "
            f"({st.differing}/{st.numel} elements){tol}")


def _change_line(c, width: int) -> str:  # noqa: ANN001 - a diff.TensorChange
    name = one_line(c.name)
    if c.change == "added":
        return f"  + {name}  {c.dtype[1]} {c.shape[1]}"
    if c.change == "removed":
        return f"  - {name}"
    if c.change == "value":
        return f"  ~ {name:<{width}}" + (_stats_text(c.stats) if c.stats else "")
    what = []
    if c.dtype[0] != c.dtype[1]:
        what.append(f"dtype {c.dtype[0]} -> {c.dtype[1]}")
    if c.shape[0] != c.shape[1]:
        what.append(f"shape {c.shape[0]} -> {c.shape[1]}")
    return f"  ! {name}  {', '.join(what)}" + (_stats_text(c.stats) if c.stats else "")


def _render_diff(report) -> list[str]:  # noqa: ANN001 - a diff.DiffReport
    lines = []
    for s in report.sections:
        changed = s.count("value") + s.count("layout")
        within = sum(1 for c in s.changes if not c.significant)
        where = {"a": " (only in A)", "b": " (only in B)"}.get(s.present, "")
        lines.append(f"{s.name}{where}: {changed} changed" + (f" ({within} within tolerance)" if within else "")
                     + f", {s.count('added')} added, {s.count('removed')} removed, {s.unchanged} unchanged")
        width = min(60, max((len(c.name) for c in s.changes), default=0))
        lines += [_change_line(c, width) for c in s.changes]
    if report.supporting_arrays:
        lines.append(f"supporting arrays: {len(report.supporting_arrays)} differ")
        width = min(60, max(len(c.name) for c in report.supporting_arrays))
        lines += [_change_line(c, width) for c in report.supporting_arrays]
    lines.append(f"metadata: {len(report.metadata)} difference{'s' * (len(report.metadata) != 1)}")
    sign = {"added": "+", "removed": "-", "changed": "~"}
    for m in report.metadata:
        value = m.new if m.change == "added" else m.old if m.change == "removed" else f"{m.old} -> {m.new}"
        lines.append(one_line(f"  {sign[m.change]} {m.path}  {value}"))
    lines.append(f"content id: {'equal' if report.content_id_equal else 'differs'}")
    if report.lineage:
        lines.append(f"lineage: {report.lineage}")
    tol = f" (atol {report.atol:g}, rtol {report.rtol:g})" if report.atol or report.rtol else ""
    lines.append(f"{report.a} and {report.b} {'are identical' if report.identical else 'differ'}{tol}")
    return lines


@cli.command("diff")
@click.argument("a", type=click.Path())
@click.argument("b", type=click.Path())
@json_option
@click.option("--atol", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Absolute tolerance: |a-b| <= atol + rtol*|a| counts as equal.")
@click.option("--rtol", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Relative tolerance, relative to A's values.")
@click.option("--section", "sections", multiple=True, metavar="S",
              help="Compare only this tensor section (repeatable; default: all).")
@click.option("--progress/--no-progress", default=None, help="Progress bar on stderr (default: on a terminal, when comparing many bytes).")
def diff_cmd(a: str, b: str, as_json: bool, atol: float, rtol: float, sections: tuple[str, ...],
             progress: bool | None) -> None:
    """Show what changed from A to B: tensors, metadata, supporting arrays, lineage.

    Exit 0 when identical (within --atol/--rtol), 1 when they differ, 2 on trouble (like cmp).
    Tensors with equal digests are never read."""
    from ..compare.diff import diff
    from ..errors import AncError

    try:
        report = diff(a, b, atol=atol, rtol=rtol, sections=sections or None, progress=progress)
    except AncError as e:
        # Exit 1 means "differ" here, so an unreadable input takes cmp's 2; the group still prints
        # the one-line error (or the traceback under --debug).
        e.exit_code = 2
        raise
    except Exception as e:  # a surprise must not read as "differ" either
        if click.get_current_context().find_root().params.get("debug"):
            raise
        click.echo(one_line(f"anemoi-ckpt: error: {type(e).__name__}: {e} (re-run with --debug "
                            "for details)"), err=True)
        raise SystemExit(2) from None
    if as_json:
        emit_json(report.to_dict())
    else:
        click.echo("\n".join(_render_diff(report)))
    if not report.identical:
        raise SystemExit(1)
