"""Damaged and hostile files through the command line: one line on stderr,
``anemoi-ckpt: error: <file>: ...``, exit status 1, never a traceback (unless ``--debug``); usage
errors exit 2.

Every case runs in-process through click's test runner (fast, the same code path as the console
entry point); a representative few also run as real subprocesses (``python -m anemoi_ckpt``),
concurrently, since each one pays for importing torch.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import anemoi_ckpt
import anemoi_ckpt.cli.commands  # noqa: F401 - registers the commands on ``cli``
from anemoi_ckpt.cli.main import cli
from anemoi_ckpt.demo.data import demo_anemoi_metadata, demo_graph, demo_state_dict
from tests.test_damaged import rewrite_manifest as _rewrite_manifest
from tests.test_damaged import (Archive, central_entries, flipped, patched, sha, split_tensor_member,
                                tensor_member)

PREFIX = "anemoi-ckpt: error: "


@dataclass(frozen=True)
class Expect:
    """What each command does with a file. ``None``: exit 0. A string: exit 1 with exactly one
    error line holding it. ``damaged``: verify's per-section report, exit 1."""

    inspect: str | None
    verify: str | None
    damaged: tuple[str, ...] = ()  # sections verify must name on stderr


def _write(root: Path, name: str, data: bytes) -> Path:
    path = root / name
    path.write_bytes(data)
    return path


def _spans(path: Path) -> dict[str, tuple[int, int]]:
    with anemoi_ckpt.open(path) as ck:
        return {rel: (m.data_offset, m.size) for rel, m in ck._members.items()}


def _tensor_offset(path: Path, section: str, name: str) -> int:
    with anemoi_ckpt.open(path) as ck:
        return ck.tensors(section)._offsets[name]


def _newer_major(m: dict) -> None:
    m.update(format_version="2.0")
    m["producer"]["version"] = "2.0.0"


def _unknown_required(m: dict) -> None:
    m["format_version"] = "1.7"
    m["sections"].append({"path": "extras/needed.bin", "role": "quantisation-table", "required": True,
                          "size": 3, "digest": sha(b"abc"), "media_type": "application/octet-stream"})


def _unknown_optional(m: dict) -> None:
    m["format_version"] = "1.7"
    m["sections"].append({"path": "extras/fancy.bin", "role": "fancy-thing", "required": False,
                          "size": 3, "digest": sha(b"abc"), "media_type": "application/octet-stream"})


def _overlapping_header(src: Path, dst: Path) -> Path:
    a = Archive(src)
    header, payload = split_tensor_member(a["weights.safetensors"])
    name = sorted(header, key=lambda k: header[k]["data_offsets"])[3]
    b, e = header[name]["data_offsets"]
    header[name]["data_offsets"] = [b - 4, e - 4]
    a["weights.safetensors"] = tensor_member(header, payload)
    return a.write(dst)


def build_cases(good: Path, root: Path) -> dict[str, tuple[Path, Expect]]:
    spans = _spans(good)
    data = good.read_bytes()
    with zipfile.ZipFile(good) as zf:
        cd = zf.start_dir
    cases: dict[str, tuple[Path, Expect]] = {}

    def add(name: str, path: Path, expect: Expect) -> None:
        cases[name] = (path, expect)

    both = lambda fragment: Expect(fragment, fragment)  # noqa: E731 - refused when opened

    add("intact", good, Expect(None, None))
    add("missing path", root / "missing.anc", both("no such file"))
    add("empty file", _write(root, "empty.anc", b""), both("empty file"))
    add("random bytes", _write(root, "random.anc", np.random.default_rng(1).bytes(5000)),
        both("not a zip archive or truncated"))
    add("truncated at the central directory", _write(root, "cut-cd.anc", data[:cd]),
        both("not a zip archive or truncated"))
    start, size = spans["weights.safetensors"]
    add("truncated inside weights", _write(root, "cut-weights.anc", data[:start + size // 2]),
        both("not a zip archive or truncated"))
    pt = root / "model.pt"
    torch.save({"w": torch.ones(3)}, pt)
    add("torch.save file", pt, both("no manifest.json in the archive (not an .anc"))
    plain = root / "plain.zip"
    with zipfile.ZipFile(plain, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("notes.txt", "hello")
    add("plain zip", plain, both("no manifest.json in the archive"))

    a = Archive(good)
    a.add_raw(a.name("lineage.json"), a["lineage.json"])
    add("duplicate member", a.write(root / "dup.anc"), both("duplicate member name 'demo/lineage.json'"))
    deflated = root / "deflated.anc"
    with zipfile.ZipFile(deflated, "w") as zf:
        for name, content in Archive(good).items:
            zf.writestr(name, content, zipfile.ZIP_DEFLATED if name.endswith("metadata.json")
                        else zipfile.ZIP_STORED)
    add("deflated member", deflated, both("member 'demo/metadata.json' is compressed"))
    at = central_entries(good)["demo/lineage.json"] + 8
    add("encrypted flag", patched(good, root / "encrypted.anc", {at: struct.pack("<H", 0x0801)}),
        both("member 'demo/lineage.json' is encrypted"))
    a = Archive(good)
    a.add_raw("demo/../../etc/evil.json", b"{}")
    add("member name with ..", a.write(root / "dotdot.anc"), both("unsafe member name 'demo/../../etc/evil.json'"))
    a = Archive(good)
    a.add_raw("other/x.json", b"{}")
    add("two root folders", a.write(root / "roots.anc"), both("expected one root folder, found 2"))

    add("newer major version", _rewrite_manifest(good, root / "v2.anc", _newer_major),
        both("format 2.0 is newer than this anemoi-ckpt"))
    add("unknown required section",
        _rewrite_manifest(good, root / "required.anc", _unknown_required, {"extras/needed.bin": b"abc"}),
        both("section extras/needed.bin: required, with role 'quantisation-table'"))
    add("unknown optional section",
        _rewrite_manifest(good, root / "optional.anc", _unknown_optional, {"extras/fancy.bin": b"abc"}),
        Expect(None, None))

    start, size = spans["manifest.json"]
    add("flipped byte in the manifest", flipped(good, root / "manifest-flip.anc", start + size // 2),
        both("section manifest.json: CRC-32 mismatch"))
    a = Archive(good)
    a.refresh()
    a["manifest.json"] = b'{"format": "anemoi-ckpt", "x": "\xff"}'
    add("manifest not UTF-8", a.write(root / "manifest-latin1.anc", refresh=False),
        both("section manifest.json: not UTF-8"))
    add("manifest fails the schema",
        _rewrite_manifest(good, root / "schema.anc", lambda m: m.update(kind="weights-only")),
        both("section manifest.json: invalid kind"))

    for rel in ("metadata.json", "lineage.json", "anemoi-metadata/anemoi.json"):
        start, size = spans[rel]
        stem = rel.replace("/", "-")
        add(f"flipped byte in {rel}", flipped(good, root / f"flip-{stem}.anc", start + size // 2),
            Expect(f"section {rel}: digest mismatch", None, damaged=(rel,)))
        a = Archive(good)
        a[rel] = b'{"broken": '
        add(f"invalid JSON in {rel}", a.write(root / f"invalid-{stem}.anc"),
            Expect(f"section {rel}: invalid JSON", None, damaged=(rel,)))
    start, size = spans["anemoi-metadata/data/latitudes.numpy"]
    add("flipped byte in a supporting array", flipped(good, root / "flip-array.anc", start + 3),
        Expect(None, None, damaged=("anemoi-metadata/data/latitudes.numpy",)))

    start, size = spans["graph.safetensors"]
    add("flipped byte in the graph header", flipped(good, root / "flip-graph-header.anc", start + 9),
        Expect("section graph.safetensors: header digest mismatch", None, damaged=("graph.safetensors",)))
    add("header length 2**62",
        patched(good, root / "huge-header.anc", {spans["weights.safetensors"][0]: struct.pack("<Q", 2**62)}),
        Expect("section weights.safetensors: header claims", None, damaged=("weights.safetensors",)))
    add("overlapping tensors", _overlapping_header(good, root / "overlap.anc"),
        Expect("section weights.safetensors: tensor", None, damaged=("weights.safetensors",)))
    add("flipped byte in graph tensor data",
        flipped(good, root / "flip-graph.anc", _tensor_offset(good, "graph", "data.x")),
        Expect(None, None, damaged=("graph.safetensors",)))
    add("flipped byte in weights tensor data",
        flipped(good, root / "flip-weights.anc", _tensor_offset(good, "weights", "model.node_attributes.trainable_tensors.data.trainable") + 5),
        Expect(None, None, damaged=("weights.safetensors",)))
    if hasattr(os, "mkfifo"):
        os.mkfifo(root / "pipe.anc")
        add("FIFO", root / "pipe.anc", both("is not a regular file"))
    return cases


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Expect]]:
    root = tmp_path_factory.mktemp("damaged-cli")
    md, arrays = demo_anemoi_metadata()
    good = root / "demo.anc"
    anemoi_ckpt.save(good, demo_state_dict(channels=16, layers=1, grid_points=64), anemoi_metadata=md,
                     supporting_arrays=arrays, sections={"graph": demo_graph(grid_points=64, hidden=16)},
                     metadata={"description": "test file"})
    return build_cases(good, root)


CASE_NAMES = [
    "intact", "missing path", "empty file", "random bytes", "truncated at the central directory",
    "truncated inside weights", "torch.save file", "plain zip", "duplicate member", "deflated member",
    "encrypted flag", "member name with ..", "two root folders", "newer major version",
    "unknown required section", "unknown optional section", "flipped byte in the manifest",
    "manifest not UTF-8", "manifest fails the schema",
    *[f"{what} in {rel}" for rel in ("metadata.json", "lineage.json", "anemoi-metadata/anemoi.json")
      for what in ("flipped byte", "invalid JSON")],
    "flipped byte in a supporting array", "flipped byte in the graph header", "header length 2**62",
    "overlapping tensors", "flipped byte in graph tensor data", "flipped byte in weights tensor data",
    "FIFO",
]


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def invoke(monkeypatch: pytest.MonkeyPatch) -> Callable[..., Run]:
    """The CLI in-process. The group callback reconfigures warnings globally; undo that after."""
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)

    def run(*args: str) -> Run:
        with warnings.catch_warnings():
            result = CliRunner().invoke(cli, list(args), prog_name="anemoi-ckpt")
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise AssertionError(f"the CLI raised {result.exception!r}") from result.exception
        return Run(result.exit_code, result.stdout, result.stderr)

    return run


def check_one_error_line(out: Run, path: Path, fragment: str) -> None:
    assert out.returncode == 1, (out.returncode, out.stderr)
    assert "Traceback" not in out.stderr + out.stdout
    lines = out.stderr.splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith(f"{PREFIX}{path}: "), lines[0]
    assert fragment in lines[0], (fragment, lines[0])


def check_damaged_report(out: Run, path: Path, sections: tuple[str, ...]) -> None:
    """verify's report of damage: one error line per damaged item, each naming the file."""
    assert out.returncode == 1, (out.returncode, out.stderr)
    assert "Traceback" not in out.stderr + out.stdout
    lines = out.stderr.splitlines()
    assert lines and all(line.startswith(f"{PREFIX}{path}: ") for line in lines), out.stderr
    named = [line for line in lines if line.startswith(f"{PREFIX}{path}: section ")]
    assert [line[len(f"{PREFIX}{path}: section "):].split(":")[0] for line in named] == list(sections)
    assert out.stdout.rstrip().endswith("DAMAGED")


def check_case(command: str, out: Run, path: Path, expect: Expect) -> None:
    fragment = getattr(expect, command)
    if fragment is not None:
        check_one_error_line(out, path, fragment)
    elif command == "verify" and expect.damaged:
        check_damaged_report(out, path, expect.damaged)
    else:
        assert out.returncode == 0, out.stderr
        assert PREFIX not in out.stderr and "Traceback" not in out.stderr


def test_case_list_is_complete(cases: dict[str, tuple[Path, Expect]]) -> None:
    assert set(cases) <= set(CASE_NAMES) and set(CASE_NAMES) - set(cases) <= {"FIFO"}


@pytest.mark.parametrize("command", ["inspect", "verify"])
@pytest.mark.parametrize("case", CASE_NAMES)
def test_cli_on_damaged_file(cases: dict[str, tuple[Path, Expect]], invoke: Callable[..., Run],
                             case: str, command: str) -> None:
    if case not in cases:
        pytest.skip("not on this platform")
    path, expect = cases[case]
    if case == "unknown optional section":
        with pytest.warns(anemoi_ckpt.UnknownSectionWarning, match="extras/fancy.bin"):
            out = invoke(command, str(path))
    else:
        out = invoke(command, str(path))
    check_case(command, out, path, expect)


def test_verify_names_the_damaged_tensor(cases: dict[str, tuple[Path, Expect]],
                                         invoke: Callable[..., Run]) -> None:
    path, _ = cases["flipped byte in weights tensor data"]
    out = invoke("verify", str(path))
    assert out.stderr.splitlines() == [
        f"{PREFIX}{path}: section weights.safetensors: 1 tensor(s) do not match their digest "
        "(model.node_attributes.trainable_tensors.data.trainable)",
        f"{PREFIX}{path}: content id does not match the weights",
    ]
    assert "tensor model.node_attributes.trainable_tensors.data.trainable" in out.stdout
    report = json.loads(invoke("verify", str(path), "--json").stdout)
    assert [(s["path"], s["damaged_tensors"]) for s in report["sections"] if not s["ok"]] == \
        [("weights.safetensors", ["model.node_attributes.trainable_tensors.data.trainable"])]


@pytest.mark.parametrize("command", ["inspect", "verify"])
def test_cli_on_a_directory(tmp_path: Path, invoke: Callable[..., Run], command: str) -> None:
    check_one_error_line(invoke(command, str(tmp_path)), tmp_path, "is a directory")


@pytest.mark.parametrize("args", [["inspect"], ["verify"], ["inspect", "x.anc", "--bogus"],
                                  ["--bogus", "inspect", "x.anc"], ["no-such-command"]])
def test_usage_errors_exit_2(invoke: Callable[..., Run], args: list[str]) -> None:
    out = invoke(*args)
    assert out.returncode == 2 and "Usage:" in out.stderr and PREFIX not in out.stderr


def test_debug_raises_in_process(cases: dict[str, tuple[Path, Expect]]) -> None:
    path, _ = cases["truncated at the central directory"]
    with warnings.catch_warnings():
        result = CliRunner().invoke(cli, ["--debug", "inspect", str(path)])
    assert isinstance(result.exception, anemoi_ckpt.FormatError)


# --- the real entry point, in subprocesses -----------------------------------------------------

def run_cli_all(argvs: list[list[str]]) -> list[subprocess.CompletedProcess[str]]:
    """Like ``tests.conftest.run_cli``, several at once (each pays for importing torch)."""
    env = {**os.environ, "PYTHONWARNINGS": "default"}
    procs = [subprocess.Popen([sys.executable, "-m", "anemoi_ckpt", *argv], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for argv in argvs]
    out = []
    for argv, p in zip(argvs, procs):
        stdout, stderr = p.communicate(timeout=180)
        out.append(subprocess.CompletedProcess([*argv], p.returncode, stdout, stderr))
    return out


SUBPROCESS_CASES = [
    ("verify", "truncated at the central directory"),  # refused when opened
    ("verify", "flipped byte in graph tensor data"),  # opens; verify reports the damage
    ("inspect", "unknown optional section"),  # opens with a warning
]


def test_real_entry_point(cases: dict[str, tuple[Path, Expect]]) -> None:
    truncated, _ = cases["truncated at the central directory"]
    argvs = [[command, str(cases[case][0])] for command, case in SUBPROCESS_CASES]
    results = run_cli_all([*argvs, ["--debug", "inspect", str(truncated)]])
    for (command, case), res in zip(SUBPROCESS_CASES, results):
        path, expect = cases[case]
        check_case(command, Run(res.returncode, res.stdout, res.stderr), path, expect)
    optional, _ = cases["unknown optional section"]
    assert results[2].stderr.splitlines() == [
        f"anemoi-ckpt: warning: {optional}: ignoring optional section extras/fancy.bin with unknown "
        "role 'fancy-thing'"]
    debug = results[-1]
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr
    assert f"anemoi_ckpt.errors.FormatError: {truncated}: not a zip archive" in debug.stderr
