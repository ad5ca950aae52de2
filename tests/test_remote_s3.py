"""``s3://`` against moto's S3 server mode on loopback (its own process), bytes counted on the
wire by a proxy in front of it. The endpoint reaches s3fs through fsspec's own configuration
(``FSSPEC_S3_ENDPOINT_URL`` for a subprocess, ``fsspec.config.conf`` here), as a user would set it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import anemoi_ckpt
from tests.servers import CountingProxy, MotoS3, s3_env
from tests.test_remote import N_TENSORS, big_weights

pytest.importorskip("s3fs", reason="s3:// needs s3fs (the remote extra)")
boto3 = pytest.importorskip("boto3", reason="uploads to the test server use boto3")
pytest.importorskip("moto", reason="the S3 server is moto's server mode")

BUCKET = "checkpoints"


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[CountingProxy, Path, dict[str, str]]]:
    import fsspec.config

    root = tmp_path_factory.mktemp("s3src")
    anemoi_ckpt.save(root / "base.anc", big_weights(0), kind="training")
    anemoi_ckpt.save(root / "child.anc", big_weights(1), parents=[root / "base.anc"],
                     operation="fine-tune")
    server = MotoS3()
    proxy = CountingProxy(server.port)
    env = s3_env(f"http://127.0.0.1:{proxy.port}")
    saved_env = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    saved_conf = fsspec.config.conf.get("s3")
    fsspec.config.conf["s3"] = {"endpoint_url": env["FSSPEC_S3_ENDPOINT_URL"]}
    try:
        client = boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1",
                              aws_access_key_id="testing", aws_secret_access_key="testing")
        client.create_bucket(Bucket=BUCKET)
        for name in ("base.anc", "child.anc"):
            client.upload_file(str(root / name), BUCKET, f"runs/{name}")
        yield proxy, root, env
    finally:
        proxy.close()
        server.close()
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if saved_conf is None:
            fsspec.config.conf.pop("s3", None)
        else:
            fsspec.config.conf["s3"] = saved_conf


def s3_url(name: str) -> str:
    return f"s3://{BUCKET}/runs/{name}"


def test_inspect_and_lineage_transfer_kilobytes(s3) -> None:
    proxy, root, _ = s3
    proxy.reset()
    with anemoi_ckpt.open(s3_url("child.anc")) as ck:
        assert [r.operation for r in ck.lineage.records] == ["fine-tune", "create"]
        assert len(ck.tensors()) == N_TENSORS
    size = (root / "child.anc").stat().st_size
    assert proxy.bytes_down < 256 << 10, (proxy.bytes_down, size)


def test_partial_and_full_loads_match_the_file(s3) -> None:
    proxy, root, _ = s3
    with anemoi_ckpt.open(root / "child.anc") as local:
        expected = {n: t.clone() for n, t in local.tensors().items()}
    chosen = sorted(expected)[::10]
    wanted = sum(expected[n].numel() * 4 for n in chosen)
    proxy.reset()
    with anemoi_ckpt.open(s3_url("child.anc")) as ck:
        opened = proxy.bytes_down
        for n in chosen:
            assert torch.equal(ck.tensors()[n], expected[n])
        body = proxy.bytes_down - opened
        assert wanted <= body <= wanted * 1.02 + (128 << 10), (body, wanted)
        assert ck.verify(progress=False).ok


def test_cli_inspect_in_a_subprocess_configured_by_environment(s3) -> None:
    _, root, env = s3
    out = subprocess.run([sys.executable, "-m", "anemoi_ckpt", "inspect", s3_url("base.anc"), "--json"],
                         capture_output=True, text=True, timeout=120, env={**os.environ, **env})
    assert out.returncode == 0, out.stderr
    with anemoi_ckpt.open(root / "base.anc") as ck:
        assert json.loads(out.stdout)["uuid"] == ck.uuid
    out = subprocess.run([sys.executable, "-m", "anemoi_ckpt", "inspect", f"s3://{BUCKET}/runs/nothing.anc"],
                         capture_output=True, text=True, timeout=120, env={**os.environ, **env})
    assert out.returncode == 1 and "nothing.anc" in out.stderr and "Traceback" not in out.stderr


def test_catalogue_with_s3_locations_fetch_and_gc(s3, tmp_path: Path) -> None:
    from anemoi_ckpt import catalogue as cat
    from anemoi_ckpt.remote.fetch import fetch

    proxy, root, _ = s3
    client = boto3.client("s3", endpoint_url=os.environ["FSSPEC_S3_ENDPOINT_URL"], region_name="us-east-1")
    anemoi_ckpt.save(tmp_path / "stray.anc", {"w": torch.ones(3)})
    client.upload_file(str(tmp_path / "stray.anc"), BUCKET, "runs/stray.anc")
    db = tmp_path / "cat.db"
    done = cat.register(db, [s3_url("child.anc"), s3_url("base.anc"), s3_url("stray.anc")],
                        require_parents=True)  # the parent is registered first
    assert [r["status"] for r in done] == ["new"] * 3
    assert done[0]["location"] == s3_url("base.anc")  # parents first, whatever the order given
    with anemoi_ckpt.open(root / "child.anc") as ck:
        child = ck.uuid
    cat.tag(db, child, "production")
    # fetch by uuid from S3: the body once, verified.
    proxy.reset()
    report = fetch(child[:8], tmp_path / "scratch.anc", catalogue=db, register=True)
    assert (tmp_path / "scratch.anc").read_bytes() == (root / "child.anc").read_bytes()
    assert report.transferred == (root / "child.anc").stat().st_size
    assert cat.locate(db, child)[0] == str(tmp_path / "scratch.anc")  # the local copy first
    # gc keeps production and its ancestors; the stray checkpoint's S3 object is deleted.
    plan = cat.gc_plan(db, ["production"])
    stray = [c["uuid"] for c in plan]
    assert len(stray) == 1
    result = cat.gc(db, ["production"], delete=True)
    assert [(r["uuid"], r["removed"]) for r in result["results"]] == [(stray[0], True)], result
    assert [loc["action"] for loc in result["results"][0]["locations"]] == ["deleted"]
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix="runs/")["Contents"]}
    assert keys == {"runs/base.anc", "runs/child.anc"}
    with anemoi_ckpt.open(root / "base.anc") as ck:
        base = ck.uuid
    assert {e["uuid"] for e in cat.list_entries(db)} == {child, base}
