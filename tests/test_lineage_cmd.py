"""``anemoi-ckpt lineage``: drawing a file's history and checking its ancestors on disk.

Chains are real files written with ``anemoi_ckpt.save`` (create -> convert -> two fine-tunes ->
merge: a DAG whose two branches share ancestors), or converted from a torch file; broken lineage
blocks are made by rewriting lineage.json with every digest kept consistent (``Archive``), so the
only thing wrong is the thing tested.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import anemoi_ckpt
from anemoi_ckpt import FormatError
from anemoi_ckpt.convert import convert
from anemoi_ckpt.lineage.view import mermaid_id, render_dot, render_mermaid
from tests.conftest import one_error_line, run_cli
from tests.test_damaged import Archive


def weights(v: float) -> dict[str, torch.Tensor]:
    return {"layer.weight": torch.full((8, 4), v), "layer.bias": torch.arange(4, dtype=torch.float32) + v}


@dataclass
class Chain:
    base: Path  # create
    conv: Path  # convert of base
    ft1: Path  # fine-tune of conv
    ft2: Path  # fine-tune of conv
    merged: Path  # merge of ft1 and ft2

    @property
    def ancestors(self) -> list[Path]:
        return [self.base, self.conv, self.ft1, self.ft2]


@pytest.fixture
def chain(tmp_path: Path) -> Chain:
    d = tmp_path / "chain"
    d.mkdir()
    c = Chain(d / "base.anc", d / "conv.anc", d / "ft1.anc", d / "ft2.anc", d / "merged.anc")
    anemoi_ckpt.save(c.base, weights(0), kind="training", parameters={"seed": 7})
    anemoi_ckpt.save(c.conv, weights(0), parents=[c.base], operation="convert",
                     parameters={"source": "base.anc", "source_format": "anc",
                                 "steps": [{"name": "rename-a"}, {"name": "rename-b"}]})
    anemoi_ckpt.save(c.ft1, weights(1), parents=[c.conv], operation="fine-tune",
                     parameters={"lr": 0.0001, "epochs": 3})
    anemoi_ckpt.save(c.ft2, weights(2), parents=[c.conv], operation="fine-tune",
                     parameters={"lr": 1e-05})
    anemoi_ckpt.save(c.merged, weights(1.5), parents=[c.ft1, c.ft2], operation="merge",
                     parameters={"method": "average", "weights": [0.5, 0.5]})
    return c


def ident(path: Path) -> tuple[str, str, str, str]:
    """(uuid8, kind, cid12, 'YYYY-MM-DD HH:MM') of a file, from its manifest."""
    with anemoi_ckpt.open(path) as ck:
        m = ck.manifest
        return m.uuid[:8], m.kind, m.content_id[7:19], f"{m.created[:10]} {m.created[11:16]}"


def uuid_of(path: Path) -> str:
    with anemoi_ckpt.open(path) as ck:
        return ck.uuid


# --- rendering -------------------------------------------------------------------------------

def test_tree(chain: Chain) -> None:
    out = run_cli("lineage", str(chain.merged))
    assert out.returncode == 0, out.stderr
    (m, mk, mc, md), (f1, k1, c1, d1), (f2, k2, c2, d2) = map(ident, (chain.merged, chain.ft1, chain.ft2))
    (cv, kc, cc, dc), (b, kb, cb, db) = ident(chain.conv), ident(chain.base)
    assert out.stdout.splitlines() == [
        f"{m}  {mk}  merge  method=average weights=[0.5,0.5]  {mc}  {md}",
        f"├── {f1}  {k1}  fine-tune  lr=1e-4 epochs=3  {c1}  {d1}",
        f"│   └── {cv}  {kc}  convert  source=base.anc source_format=anc steps=2  {cc}  {dc}",
        f"│       └── {b}  training  create  seed=7  {cb}  {db}",
        f"└── {f2}  {k2}  fine-tune  lr=1e-5  {c2}  {d2}",
        f"    └── {cv} (see above)",
    ]


def test_tree_recordless_parent_and_role(chain: Chain, tmp_path: Path) -> None:
    ref = {"uuid": "0123abcd-0000-4000-8000-000000000000", "content_id": "sha256:" + "ab" * 32,
           "role": "adapter"}
    child = tmp_path / "child.anc"
    anemoi_ckpt.save(child, weights(3), parents=[ref, {"uuid": uuid_of(chain.ft1), "role": "base"}],
                     operation="apply")
    lines = run_cli("lineage", str(child)).stdout.splitlines()
    assert lines[1] == f"├── 0123abcd (adapter, not an .anc: no record)  {'ab' * 6}"
    # ft1 was given by reference only: its record is not carried, so it too has none.
    assert lines[2] == f"└── {uuid_of(chain.ft1)[:8]} (base, not an .anc: no record)"


def test_json_round_trip(chain: Chain) -> None:
    with anemoi_ckpt.open(chain.merged) as ck:
        expected = ck.lineage.model_dump(mode="json")
    out = run_cli("lineage", str(chain.merged), "--format", "json")
    assert out.returncode == 0 and json.loads(out.stdout) == expected
    doc = json.loads(run_cli("lineage", str(chain.merged), "--json").stdout)
    assert doc == {"file": str(chain.merged), "lineage": expected}
    assert [r["uuid"] for r in expected["records"]][0] == uuid_of(chain.merged)
    assert len(expected["records"]) == 5


def parent_links(path: Path) -> set[tuple[str, str]]:
    with anemoi_ckpt.open(path) as ck:
        return {(p.uuid, r.uuid) for r in ck.lineage.records for p in r.parents}


def test_dot(chain: Chain, tmp_path: Path) -> None:
    out = run_cli("lineage", str(chain.merged), "--format", "dot")
    assert out.returncode == 0, out.stderr
    dot = out.stdout
    assert dot.startswith("digraph lineage {") and dot.rstrip().endswith("}")
    assert dot.count("{") == dot.count("}") == 1
    nodes = re.findall(r'^  "([^"]+)" \[label=', dot, re.M)
    edges = set(re.findall(r'^  "([^"]+)" -> "([^"]+)"', dot, re.M))
    assert sorted(nodes) == sorted(uuid_of(p) for p in [*chain.ancestors, chain.merged])
    assert edges == parent_links(chain.merged) and len(edges) == 5
    if shutil.which("dot"):
        svg = subprocess.run(["dot", "-Tsvg"], input=dot, capture_output=True, text=True, timeout=60)
        assert svg.returncode == 0 and "<svg" in svg.stdout, svg.stderr


def test_mermaid(chain: Chain) -> None:
    out = run_cli("lineage", str(chain.merged), "--format", "mermaid")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "flowchart TD"
    ids = {uuid_of(p): mermaid_id(uuid_of(p)) for p in [*chain.ancestors, chain.merged]}
    assert all(re.fullmatch(r"n_[0-9a-f]{32}", i) for i in ids.values())
    nodes = [ln.split("[", 1)[0].strip() for ln in lines[1:] if "-->" not in ln]
    edges = {tuple(ln.split(" --> ")) for ln in lines[1:] if "-->" in ln}
    assert sorted(nodes) == sorted(ids.values())
    assert edges == {(f"  {ids[p]}", ids[c]) for p, c in parent_links(chain.merged)}


def test_labels_escaped(tmp_path: Path) -> None:
    """An operation and role holding quotes, newlines and markup stay inside their labels."""
    path = tmp_path / "odd.anc"
    anemoi_ckpt.save(path, weights(0), operation='x"y\n<b>#1\\',
                     parents=[{"uuid": "not-a-uuid\"];evil", "role": 'r"\n'}])
    with anemoi_ckpt.open(path) as ck:
        block = ck.lineage
    dot = render_dot(block)
    assert len(dot.splitlines()) == 6  # header, node attrs, 2 nodes, 1 edge, closing brace
    assert 'x\\"y\\\\x0a#lt;' not in dot and 'x\\"y\\\\x0a<b>#1\\\\' in dot
    assert '"not-a-uuid\\"];evil" -> ' in dot and '[label="r\\"\\\\x0a"]' in dot
    mm = render_mermaid(block)
    assert 'x#quot;y\\x0a#lt;b#gt;#35;1\\' in mm
    assert re.search(r'^  n_x[0-9a-f]{16} -->\|"r#quot;\\x0a"\| n_[0-9a-f]{32}$', mm, re.M), mm
    if shutil.which("dot"):
        assert subprocess.run(["dot", "-Tsvg"], input=dot, capture_output=True, text=True,
                              timeout=60).returncode == 0


# --- --verify --------------------------------------------------------------------------------

def statuses(out: subprocess.CompletedProcess[str]) -> dict[str, dict]:
    return {(a["uuid"] or f"source of {a['source_of']}"): a for a in json.loads(out.stdout)["ancestors"]}


def test_verify_all_found(chain: Chain) -> None:
    out = run_cli("lineage", str(chain.merged), "--verify", "--search", str(chain.base.parent), "--json")
    assert out.returncode == 0, out.stderr
    got = statuses(out)
    assert {u: (a["status"], a["path"]) for u, a in got.items()} == \
        {uuid_of(p): ("found", str(p)) for p in chain.ancestors}
    text = run_cli("lineage", str(chain.merged), "--verify", "--search", str(chain.base.parent))
    assert text.returncode == 0
    report = text.stdout.splitlines()[7:]
    assert report[0] == f"  found     {uuid_of(chain.ft1)[:8]}  {chain.ft1}"
    assert report[-1] == f"{chain.merged}: 4 ancestors: 4 found, 0 different, 0 missing"


def test_verify_report_goes_to_stderr_for_machine_formats(chain: Chain) -> None:
    out = run_cli("lineage", str(chain.merged), "--format", "dot", "--verify", "--search", str(chain.base.parent))
    assert out.returncode == 0 and out.stdout.rstrip().endswith("}")
    assert out.stderr.strip().endswith("4 found, 0 different, 0 missing")


def test_verify_missing_and_strict(chain: Chain, tmp_path: Path) -> None:
    search = tmp_path / "some"
    (search / "deep" / "er").mkdir(parents=True)
    shutil.copy(chain.conv, search / "deep" / "er" / "renamed.anc")  # found by uuid, any name, any depth
    args = ("lineage", str(chain.merged), "--verify", "--search", str(search), "--json")
    out = run_cli(*args)
    assert out.returncode == 0, out.stderr
    got = {u: a["status"] for u, a in statuses(out).items()}
    assert got == {uuid_of(chain.conv): "found", uuid_of(chain.base): "missing",
                   uuid_of(chain.ft1): "missing", uuid_of(chain.ft2): "missing"}
    strict = run_cli(*args, "--strict")
    one_error_line(strict, "3 ancestor(s) differ from their record or are missing", uuid_of(chain.ft1)[:8])


def test_verify_content_id_differs(chain: Chain, tmp_path: Path) -> None:
    """A parent recorded with a content id the file on disk does not have."""
    child = tmp_path / "child.anc"
    bogus = "sha256:" + "00" * 32
    anemoi_ckpt.save(child, weights(4), parents=[{"uuid": uuid_of(chain.ft1), "content_id": bogus}])
    out = run_cli("lineage", str(child), "--verify", "--search", str(chain.base.parent), "--json")
    line = one_error_line(out, "1 ancestor(s) differ from their record", uuid_of(chain.ft1)[:8])
    assert str(child) in line
    (a,) = statuses(out).values()
    assert a["status"] == "different" and a["path"] == str(chain.ft1) and bogus in a["why"]


def test_verify_damaged_ancestor(chain: Chain, tmp_path: Path) -> None:
    search = tmp_path / "copies"
    search.mkdir()
    for p in chain.ancestors:
        shutil.copy(p, search / p.name)
    with anemoi_ckpt.open(chain.conv) as ck:
        m = ck.tensors()
        offset = m._offsets["layer.bias"]
    data = bytearray((search / "conv.anc").read_bytes())
    data[offset] ^= 0x01
    (search / "conv.anc").write_bytes(bytes(data))
    out = run_cli("lineage", str(chain.merged), "--verify", "--search", str(search), "--json")
    one_error_line(out, uuid_of(chain.conv)[:8])
    got = statuses(out)
    bad = got.pop(uuid_of(chain.conv))
    assert bad["status"] == "different" and "damaged" in bad["why"] and "layer.bias" in bad["why"]
    assert {a["status"] for a in got.values()} == {"found"}


def zero_tensor_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    with anemoi_ckpt.open(path) as ck:
        m = ck.tensors()
        spans = [(m._offsets[e.name], e.nbytes) for e in m.entries.values()]
    for start, n in spans:
        data[start:start + n] = b"\xa5" * n
    path.write_bytes(bytes(data))


def test_file_itself_reads_no_tensor_bytes(chain: Chain, tmp_path: Path) -> None:
    """FILE's weights overwritten: lineage is unchanged and --verify (with FILE itself in the
    search folder) does not complain; only `verify` sees the damage."""
    before = run_cli("lineage", str(chain.merged)).stdout
    zero_tensor_bytes(chain.merged)
    assert run_cli("verify", str(chain.merged)).returncode == 1
    assert run_cli("lineage", str(chain.merged)).stdout == before
    out = run_cli("lineage", str(chain.merged), "--verify", "--search", str(chain.base.parent), "--strict")
    assert out.returncode == 0 and out.stderr == "", out.stderr
    assert out.stdout.strip().endswith("4 found, 0 different, 0 missing")


def test_legacy_source_matched_by_sha256(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    torch.save(weights(5), src / "model.pt")
    anc = tmp_path / "model.anc"
    convert(src / "model.pt", anc)
    key = f"source of {uuid_of(anc)}"
    out = run_cli("lineage", str(anc), "--verify", "--search", str(src), "--json")
    assert out.returncode == 0, out.stderr
    found = statuses(out)[key]
    assert (found["status"], found["path"], found["uuid"]) == ("found", str(src / "model.pt"), None)
    text = run_cli("lineage", str(anc), "--verify", "--search", str(src)).stdout.splitlines()
    assert text[-2] == f"  found     source of {uuid_of(anc)[:8]} (source) model.pt  {src / 'model.pt'}"
    # A renamed copy is found too (after the same-named candidates).
    (src / "model.pt").rename(src / "copy.pth")
    assert statuses(run_cli("lineage", str(anc), "--verify", "--search", str(src), "--json"))[key]["path"] \
        == str(src / "copy.pth")
    # Another file under the recorded name: different.
    (src / "copy.pth").unlink()
    torch.save(weights(6), src / "model.pt")
    out = run_cli("lineage", str(anc), "--verify", "--search", str(src), "--json")
    one_error_line(out, f"source of {uuid_of(anc)[:8]}")
    assert statuses(out)[key]["status"] == "different"
    (src / "model.pt").unlink()
    assert statuses(run_cli("lineage", str(anc), "--verify", "--search", str(src), "--json"))[key]["status"] \
        == "missing"


def test_legacy_source_with_any_extension_found_by_name(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    torch.save(weights(5), src / "model.weights")  # an extension not searched by default
    torch.save(weights(6), src / "other.pt")
    anc = tmp_path / "model.anc"
    convert(src / "model.weights", anc)
    out = run_cli("lineage", str(anc), "--verify", "--search", str(src), "--json")
    (a,) = statuses(out).values()
    assert (a["status"], a["path"], a["source"]) == ("found", str(src / "model.weights"), "model.weights")


def test_usage_errors(chain: Chain, tmp_path: Path) -> None:
    assert run_cli("lineage", str(chain.merged), "--verify").returncode == 2
    assert run_cli("lineage", str(chain.merged), "--strict").returncode == 2
    assert run_cli("lineage", str(chain.merged), "--verify", "--search", str(tmp_path / "nope")).returncode == 2
    assert run_cli("lineage", str(chain.merged), "--format", "png").returncode == 2


# --- inconsistent lineage blocks -------------------------------------------------------------

def rewrite_lineage(src: Path, dst: Path, edit) -> Path:  # noqa: ANN001 - a callable on the dict
    arc = Archive(src)
    block = json.loads(arc["lineage.json"])
    edit(block["records"])
    arc["lineage.json"] = json.dumps(block).encode()
    return arc.write(dst)


def test_cycle(chain: Chain, tmp_path: Path) -> None:
    bad = tmp_path / "merged.anc"
    base = uuid_of(chain.base)
    rewrite_lineage(chain.merged, bad,
                    lambda recs: next(r for r in recs if r["uuid"] == base)["parents"].append(
                        {"uuid": uuid_of(chain.ft2), "content_id": None, "role": None}))
    assert anemoi_ckpt.open(bad).lineage  # a well-formed block, digests intact
    for fmt in ("tree", "dot"):
        one_error_line(run_cli("lineage", str(bad), "--format", fmt),
                       f"{bad}: section lineage.json: the parent links form a cycle through uuid")


def test_duplicate_uuid_with_other_content(chain: Chain, tmp_path: Path) -> None:
    bad = tmp_path / "merged.anc"
    rewrite_lineage(chain.merged, bad,
                    lambda recs: recs.append({**recs[2], "content_id": "sha256:" + "11" * 32}))
    with anemoi_ckpt.open(chain.merged) as ck:
        twice = ck.lineage.records[2].uuid
    one_error_line(run_cli("lineage", str(bad)), "section lineage.json:",
                   f"uuid {twice} appears twice with different content")
    same = tmp_path / "same.anc"  # an exact duplicate is harmless: drawn once
    rewrite_lineage(chain.merged, same, lambda recs: recs.append(dict(recs[2])))
    assert run_cli("lineage", str(same)).returncode == 0


def test_first_record_not_the_file(chain: Chain, tmp_path: Path) -> None:
    bad = tmp_path / "merged.anc"
    rewrite_lineage(chain.merged, bad, lambda recs: recs.insert(0, recs.pop(1)))
    one_error_line(run_cli("lineage", str(bad)), f"records[0] has uuid {uuid_of(chain.ft1)}",
                   f"the file's uuid is {uuid_of(chain.merged)}")


def test_bad_input_is_one_line(chain: Chain, tmp_path: Path) -> None:
    txt = tmp_path / "notes.txt"
    txt.write_text("hello\n")
    one_error_line(run_cli("lineage", str(txt)), str(txt))
    damaged = tmp_path / "merged.anc"
    arc = Archive(chain.merged)
    arc["lineage.json"] = arc["lineage.json"].replace(b'"merge"', b'"merga"')
    arc.write(damaged, refresh=False)  # digest now stale
    one_error_line(run_cli("lineage", str(damaged)), "section lineage.json: digest mismatch")
    invalid = tmp_path / "invalid.anc"
    rewrite_lineage(chain.merged, invalid, lambda recs: recs[0].pop("kind"))
    one_error_line(run_cli("lineage", str(invalid)), "section lineage.json: invalid records.0.kind")


# --- writers refuse inconsistent lineage -------------------------------------------------------

def test_writer_refuses_parents_disagreeing_on_an_ancestor(chain: Chain, tmp_path: Path) -> None:
    base = uuid_of(chain.base)
    forged = tmp_path / "ft2.anc"
    rewrite_lineage(chain.ft2, forged, lambda recs: next(r for r in recs if r["uuid"] == base)
                    .update(content_id="sha256:" + "22" * 32))
    with pytest.raises(FormatError) as ei:
        anemoi_ckpt.save(tmp_path / "out.anc", weights(9), parents=[chain.ft1, forged])
    msg = str(ei.value)
    assert "\n" not in msg and msg.startswith(f"{forged}: ") and base in msg and str(chain.ft1) in msg
    assert not (tmp_path / "out.anc").exists()
    with pytest.raises(FormatError, match=f"ancestor {base} has content id"):
        anemoi_ckpt.save(tmp_path / "out.anc", weights(9),
                         parents=[chain.ft1, {"uuid": base, "content_id": "sha256:" + "33" * 32}])
