"""The commands. Each parses arguments, calls the Python API and prints (text or ``--json``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from .. import open_checkpoint
from ..errors import one_line
from ..output_path import check_output
from ..summary import render, summarize
from .main import cli, emit_json
from .trust_opts import check_signature, policy_from, signature_lines, signature_options, trust_options

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
overwrite_option = click.option("--overwrite", is_flag=True, help="Replace an output file that exists "
                                "(default: refuse, and write nothing).")


@cli.command()
@click.argument("file", type=click.Path())
@json_option
def inspect(file: str, as_json: bool) -> None:
    """Show what FILE holds: kind, versions, ids, storage, signature, sections, tensors, metadata,
    lineage.

    Reads only the manifest, the JSON sections and the tensor headers, never tensor bytes. The
    signature is shown as it claims to be, not checked: 'verify --signature' checks it."""
    with open_checkpoint(file) as ck:
        info = summarize(ck)
    emit_json(info) if as_json else click.echo(render(info))


@cli.command()
@click.argument("file", type=click.Path())
@json_option
@click.option("--progress/--no-progress", default=None, help="Progress bar on stderr (default: on a terminal, for large files).")
@signature_options
def verify(file: str, as_json: bool, progress: bool | None, **trust: Any) -> None:
    """Recompute every digest and the content id of FILE. Exit 0 when intact, 1 when damaged.

    With --signature (or a trust option), first check FILE's signature (docs/signing.md): exit 1,
    one line, when it is missing, does not verify or is not trusted. Several trust options may be
    given (e.g. two --public-key): the signature must verify with the one matching its signer."""
    with open_checkpoint(file) as ck:
        verified = check_signature(ck, **trust)  # None without signature options
        report = ck.verify(progress=progress)
    if as_json:
        emit_json({**report.to_dict(), **({"signature": verified.to_dict()} if verified else {})})
    else:
        for line in signature_lines(verified, report.signed_embedded):
            click.echo(line)
        for s in report.sections:
            status = "ok" if s.ok else f"DAMAGED: {s.problem}"
            click.echo(f"  {s.path:<40} {status}")
            for t in s.damaged_tensors[:20]:
                click.echo(f"      tensor {one_line(t)}")
        click.echo(f"  content id {'ok' if report.content_id_ok else 'MISMATCH'}: {report.content_id}")
        click.echo(f"{file}: {'intact' if report.ok else 'DAMAGED'}")
    if not report.ok:
        for s in report.damaged:
            click.echo(f"anemoi-ckpt: error: {file}: section {s.path}: {s.problem}", err=True)
        if not report.content_id_ok:
            click.echo(f"anemoi-ckpt: error: {file}: content id does not match the weights", err=True)
        raise SystemExit(1)


@cli.command()
@click.argument("folder", required=False, type=click.Path(file_okay=False))
@click.option("--out-dir", "-o", type=click.Path(file_okay=False), default="demo-output",
              show_default=True, help="Folder for the demo files (or give it as FOLDER).")
@click.option("--channels", type=int, default=64, show_default=True)
@click.option("--layers", type=int, default=2, show_default=True)
def demo(folder: str | None, out_dir: str, channels: int, layers: int) -> None:
    """The whole story on built-in data, files left in FOLDER: write and verify an .anc; scan and
    convert a legacy pickle and a Lightning checkpoint; make the inference file on demand; split a
    fine-tune into a LoRA adapter, merge it back and diff; pretrain a base, fine-tune it with LoRA
    and with freeze, merge, convert, and show the lineage and the losses."""
    from ..demo.run import run_demo

    if not run_demo(folder or out_dir, channels=channels, layers=layers, echo=click.echo):
        raise SystemExit(1)


@cli.command()
@click.argument("file", type=click.Path())
@json_option
def scan(file: str, as_json: bool) -> None:
    """List the globals a pickled torch checkpoint references, and which would run code.

    Reads the pickle with the restricted unpickler: nothing in FILE is imported or executed."""
    from ..remote.download import localized
    from ..legacy.scan import scan as scan_file

    with localized(file) as local:  # a URL: a pickle is only ever read from a local copy
        report = scan_file(local)
        report.path = file  # the name the user gave, not the temporary copy
    if as_json:
        emit_json(report.to_dict())
        return
    width = max((len(g["global"]) for g in report.globals), default=0)
    for g in report.globals:
        status = ("DANGEROUS" if g["dangerous"] else "executes" if g["would_execute"]
                  else "allowed" if g["allowed"] else "inert")
        click.echo(f"  {one_line(g['global']):<{width}}  {status:<9}  called {g['calls']}x")
    click.echo(f"{file}: {len(report.globals)} globals, {report.tensors} tensors; "
               f"{len(report.executing)} would execute code under torch.load(weights_only=False)"
               + (f", {len(report.dangerous)} dangerous: {', '.join(report.dangerous)}" if report.dangerous else ""))


def _out_name(src: str, to: str | None) -> str:
    """``--out-dir`` names: the source's stem (an index file's model name), and anemoi's
    ``inference-`` prefix for inference files made from training ones."""
    stem = Path(src.rstrip("/")).name
    for suffix in (".safetensors.index.json", ".index.json", ".anc", ".ckpt", ".pt", ".pth", ".bin",
                   ".safetensors"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    if to == "inference" and not stem.startswith("inference-"):
        stem = f"inference-{stem}"
    return f"{stem}.anc"


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--out-dir", type=click.Path(), help="Convert several sources into this folder.")
@click.option("--from", "source_format", help="Force the source format (default: detected).")
@click.option("--dry-run", is_flag=True, help="Read and report; write nothing.")
@click.option("--keep-layout", is_flag=True,
              help="Write the source's tensor names and metadata unchanged (no translation steps).")
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16", "float64", "fp32", "fp16", "bf16"]),
              help="Cast floating-point weights (not optimizer state) to this dtype.")
@click.option("--optimizer-positional", is_flag=True,
              help="Lightning files: name optimizer state by index instead of by parameter "
                   "(for files whose state cannot be matched to parameter names).")
@click.option("--to", "to", type=click.Choice(["inference", "training"]),
              help="inference: keep only weights, graph, buffers, anemoi metadata and arrays "
                   "(drop optimizer, scheduler, loop and callback state).")
@click.option("--weights", "weights", type=click.Choice(["auto", "raw", "ema"]), default="auto",
              show_default=True, help="Which weights become the model's: the live ones (raw) or the "
                                      "weight-averaged copy (ema); auto: ema when present, for --to inference.")
@click.option("--keep-fp32", "keep_dtype", multiple=True, metavar="PATTERN",
              help="With --dtype: tensors matching this glob keep their dtype (e.g. '*layer_norm*'). Repeatable.")
@click.option("--cast", "cast_only", multiple=True, metavar="PATTERN",
              help="With --dtype: cast only tensors matching this glob. Repeatable.")
@click.option("--base", type=click.Path(), help="PEFT adapters: the base .anc it was trained on "
              "(every adapter tensor is checked against it and its content id recorded).")
@click.option("--compress", metavar="zstd[:LEVEL]|none",
              help="zstd[:LEVEL] (level 1-22, default 1): store tensor sections compressed (format "
                   "1.2, read transparently); none: uncompressed, memory-mappable. Same content id "
                   "either way. Default: as an .anc source is stored; none for other sources.")
@overwrite_option
@json_option
def convert(paths: tuple[str, ...], out_dir: str | None, source_format: str | None, dry_run: bool,
            keep_layout: bool, dtype: str | None, optimizer_positional: bool, to: str | None,
            weights: str, keep_dtype: tuple[str, ...], cast_only: tuple[str, ...], base: str | None,
            compress: str | None, overwrite: bool, as_json: bool) -> None:
    """Convert SRC into DST (.anc) without running its pickle: `convert SRC DST` or
    `convert SRC... --out-dir DIR`. Every tensor is read back and compared bit for bit."""
    from ..container.codec import parse_compress
    from ..convert import convert as convert_one

    try:
        parse_compress(compress)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--compress") from None
    if out_dir is None:
        if len(paths) != 2:
            raise click.UsageError("give SRC DST, or SRC... --out-dir DIR")
        jobs = [(paths[0], paths[1])]
    else:
        jobs = [(p, os.path.join(out_dir, _out_name(p, to))) for p in paths]
        seen: dict[str, str] = {}
        for src, dst in jobs:  # gnn/last.ckpt and gt/last.ckpt would silently overwrite each other
            if dst in seen:
                raise click.UsageError(f"{seen[dst]} and {src} would both be written to {dst}; "
                                       "convert them into separate folders")
            seen[dst] = src
        if not dry_run:
            check_output(out_dir, overwrite=overwrite, kind="dir")
            os.makedirs(out_dir, exist_ok=True)
    if not dry_run:  # every output before the first conversion: none fails after hours of work
        from ..convert.anc_source import check_not_same

        for src, dst in jobs:
            check_not_same(src, dst)  # "the output is the input file" says more than "exists"
            check_output(dst, overwrite=overwrite)
    reports = []
    for src, dst in jobs:
        r = convert_one(src, dst, source_format=source_format, dry_run=dry_run,
                        keep_layout=keep_layout, dtype=dtype, optimizer_positional=optimizer_positional,
                        to=to, weights=weights, keep_dtype=keep_dtype, cast_only=cast_only, base=base,
                        compress=compress)
        reports.append(r.to_dict())
        if not as_json:
            counts = ", ".join(f"{n} {s}" for s, n in r.tensors.items()) or "no tensors"
            target = "(dry run)" if dry_run else f"-> {dst} [{r.kind}]"
            how = "by digest" if r.verified_by == "digest" else "bit for bit"
            click.echo(f"{src} [{r.format}] {target}: {counts}, {r.bytes:,} bytes"
                       + ("" if dry_run else f"; {r.verified} tensors verified {how}, "
                          f"content id {r.content_id}")
                       + (f"; layout steps: {', '.join(r.steps)}" if r.steps else "")
                       + (f"; weights: {r.weights}" if r.weights else "")
                       + (f"; stored {r.compression}, {r.stored_bytes:,} bytes"
                          if r.compression not in (None, "none") and not dry_run else "")
                       + (f"; carried as is: {', '.join(r.carried)}" if r.carried else ""))
    if as_json:
        emit_json(reports if out_dir is not None else reports[0])


def _names_a_uuid(text: str) -> bool:
    """``lineage UUID`` without --catalogue: not a file nor a URL, and shaped like a uuid (prefix)."""
    import re

    from ..container.urls import is_url

    return (not os.path.exists(text) and not is_url(text)
            and re.fullmatch(r"[0-9a-fA-F-]{8,}", text) is not None)


@cli.command()
@click.argument("file", metavar="FILE|URL|UUID", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["tree", "json", "dot", "mermaid"]), default="tree",
              show_default=True, help="How to draw the lineage.")
@click.option("--verify", "check", is_flag=True,
              help="Find each ancestor under the --search folders and check it is the recorded one.")
@click.option("--search", "search_dirs", multiple=True, type=click.Path(exists=True, file_okay=False),
              help="Folder searched (recursively) for ancestors; repeatable.")
@click.option("--strict", is_flag=True, help="With --verify, missing ancestors are errors too (exit 1).")
@click.option("--progress/--no-progress", default=None, help="Progress bar on stderr while hashing.")
@click.option("--catalogue", type=click.Path(),
              help="Complete the history with the records this catalogue holds (parents FILE names "
                   "only by reference); FILE may then be a registered uuid.")
@trust_options
@json_option
def lineage(file: str, fmt: str, check: bool, search_dirs: tuple[str, ...], strict: bool,
            progress: bool | None, catalogue: str | None, public_keys: tuple[str, ...],
            certificate_chain: tuple[str, ...], identity: str | None, issuer: str | None,
            as_json: bool) -> None:
    """Show where FILE came from: its lineage record and its ancestors'.

    Reads only FILE's manifest and lineage.json, never its tensors (for a URL: a few kilobytes).
    With --verify, exit 1 when an ancestor found differs from its record (or, with --strict, is
    missing), and say who signed each one found: exit 1 too when a signature is invalid, or not
    made by a signer the trust options name (without them, signers are reported, not judged)."""
    from ..lineage.signers import judge_ancestors
    from ..lineage.verify import report_lines, verify_lineage
    from ..lineage.view import RENDERERS, check_lineage

    policy = policy_from(public_keys, certificate_chain, identity, issuer)
    if policy.given and not check:
        raise click.UsageError("--public-key, --certificate-chain and --identity apply with --verify")
    if check and not search_dirs:
        raise click.UsageError("--verify needs at least one --search DIR")
    if strict and not check:
        raise click.UsageError("--strict only applies with --verify")
    resolved = None
    if catalogue is None and _names_a_uuid(file):
        from ..catalogue import default_path

        catalogue = default_path()  # $ANEMOI_CKPT_CATALOGUE, else the default: as other commands
    if catalogue is not None:
        from ..catalogue.lineage import lineage_through_catalogue

        block, resolved = lineage_through_catalogue(catalogue, file)  # checked
    else:
        with open_checkpoint(file) as ck:
            block, own = ck.lineage, ck.uuid
        check_lineage(block, file, own)
    statuses = verify_lineage(block, search_dirs, progress) if check else None
    badly_signed = judge_ancestors(statuses, policy) if statuses is not None else []
    if as_json:
        doc = {"file": file, "lineage": block.model_dump(mode="json")}
        if resolved is not None:
            doc["resolved"] = resolved
        if statuses is not None:
            doc["ancestors"] = [s.to_dict() for s in statuses]
        emit_json(doc)
    else:
        click.echo(RENDERERS[fmt](block))
        if statuses is not None:
            # The tree is for people: the report follows it. Other formats feed tools: stdout
            # keeps only the drawing and the report goes to stderr.
            to_err = fmt != "tree"
            if not to_err:
                click.echo("")
            for line in report_lines(file, statuses):
                click.echo(line, err=to_err)
    if statuses is not None:
        bad = [s for s in statuses if s.status == "different" or (strict and s.status == "missing")]
        problems = []
        if bad:
            names = ", ".join(s.name() for s in bad[:5]) + (" ..." if len(bad) > 5 else "")
            what = "differ from their record" + (" or are missing" if strict else "")
            problems.append(f"{len(bad)} ancestor(s) {what}: {names}")
        if badly_signed:
            names = ", ".join(s.name() for s in badly_signed[:5]) + (" ..." if len(badly_signed) > 5 else "")
            problems.append(f"{len(badly_signed)} ancestor(s) have an invalid or untrusted signature: {names}")
        if problems:
            click.echo(one_line(f"anemoi-ckpt: error: {file}: {'; '.join(problems)}"), err=True)
            raise SystemExit(1)


# --- diff ----------------------------------------------------------------------------------------
