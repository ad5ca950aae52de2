"""Run the REAL ``anemoi-training train`` console script on a small synthetic dataset (test harness).

``run_anemoi_training(work, ...)`` does what fixtures/legacy/anemoi/make_anemoi_fixtures.sh does for
one model - the shipped config folder copied to ``<work>/config``, our fixture configs
(fixtures/legacy/anemoi/config/) layered on top with their @DATA@/@RUN@ placeholders filled in -
and runs ``anemoi-training train`` of the running venv (``sys.executable``'s bin folder) in a
subprocess, on a zarr made once per process by ``anemoi-datasets create`` (tests/anemoi_datasets.py,
"fixture" dynamics). The run is short (2 epochs x 2 batches by default) and seeded
(``ANEMOI_BASE_SEED``), so two runs with the same config train the same weights.

``extra_config`` is deep-merged into the run's top config (its own keys win, lists replace);
``overrides`` are Hydra command-line overrides (``diagnostics.callbacks=[...]`` etc.);
``resume_from`` sets ``system.input.warm_start`` (a checkpoint to continue from).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.anemoi_datasets import ANEMOI_FIXTURES, make_zarr

FIXTURE_CONFIG = ANEMOI_FIXTURES / "config"
#: the run's length unless overridden: 2 epochs of 2 batches, checkpoints at each epoch's end
SHORT_RUN = ["dataloader.limit_batches.training=2", "training.max_epochs=2", "training.max_steps=4"]
SEED = "1234"

_ZARR: dict[str, Path] = {}


@dataclass(frozen=True)
class RunOutput:
    """What one ``anemoi-training train`` run left behind."""

    work: Path
    run_id: str
    checkpoint_dir: Path  # <work>/checkpoint/<run_id>
    last: Path  # last.ckpt (may not exist when the pickles were replaced)
    inference_last: Path  # inference-last.ckpt
    log: Path  # the run's stdout + stderr
    returncode: int

    def files(self) -> list[str]:
        """The names in the checkpoint folder, sorted."""
        return sorted(p.name for p in self.checkpoint_dir.iterdir())


def _bin(name: str) -> str:
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run this in the anemoi venv (.venv-anemoi)")
    return str(path)


def synthetic_zarr(cache_dir: Path) -> Path:
    """The "fixture" dynamics zarr, built once per process (in ``cache_dir`` the first time)."""
    if "fixture" not in _ZARR or not _ZARR["fixture"].exists():
        zarr, done = cache_dir / "synthetic.zarr", cache_dir / "synthetic.done"
        if not done.exists():  # a folder kept from an earlier process is reused once complete
            shutil.rmtree(zarr, ignore_errors=True)
            make_zarr(cache_dir, dynamics="fixture", name="synthetic")
            done.touch()
        _ZARR["fixture"] = zarr
    return _ZARR["fixture"]


def _shipped_config() -> Path:
    out = subprocess.run([sys.executable, "-c", "import anemoi.training, os; "
                          "print(os.path.dirname(anemoi.training.__file__))"],
                         check=True, capture_output=True, text=True)
    return Path(out.stdout.strip().splitlines()[-1]) / "config"


def deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``extra`` over ``base``: mappings merged key by key, anything else replaced."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def fixture_graph(model: str, cache_dir: Path) -> Path:
    """The graph the genuine fixture ``<model>/last.ckpt`` was trained with (its converted
    ``graph`` section as a PyG ``HeteroData`` file), once per process: runs on it build the same
    module tree as the fixture, so they can warm start from it, and need no graph building."""
    key = f"graph-{model}"
    if key not in _ZARR or not _ZARR[key].exists():
        import torch

        import anemoi_ckpt
        from anemoi_ckpt.anemoi.graph import graph_from_section

        cache_dir.mkdir(parents=True, exist_ok=True)
        anc = cache_dir / f"{model}-base.anc"
        if not anc.exists():
            anemoi_ckpt.convert(ANEMOI_FIXTURES / model / "last.ckpt", anc)
        with anemoi_ckpt.open(anc) as ck:
            graph = graph_from_section(ck)
        for store in graph.edge_stores:  # PyG wants int64 edge indices
            store.edge_index = store.edge_index.to(torch.int64)
        torch.save(graph, cache_dir / f"{model}-graph.pt")
        _ZARR[key] = cache_dir / f"{model}-graph.pt"
    return _ZARR[key]


def write_config(work: Path, dataset: Path, model: str, extra_config: Mapping[str, Any] | None,
                 graph: Path | None = None) -> str:
    """The shipped configs plus ours in ``<work>/config``; returns the config name to run. With
    ``graph`` the run loads that graph file (the shipped ``graph: existing``) instead of building
    one from the fixture's ``graph:`` settings."""
    config = work / "config"
    if config.exists():
        shutil.rmtree(config)
    shutil.copytree(_shipped_config(), config)
    for src in FIXTURE_CONFIG.glob("*.yaml"):
        text = src.read_text().replace("@DATA@/synthetic.zarr", str(dataset)).replace("@RUN@", str(work))
        (config / src.name).write_text(text)
    name = f"fixture_{model}"
    top = config / f"{name}.yaml"
    if not top.exists():
        raise ValueError(f"no fixture config for model {model!r} in {FIXTURE_CONFIG}")
    if graph is not None:
        common = config / "fixture_common.yaml"
        cfg = yaml.safe_load(common.read_text())
        cfg.pop("graph", None)
        cfg["system"]["input"]["graph"] = str(graph)
        common.write_text(yaml.safe_dump(cfg, sort_keys=False))
        cfg = yaml.safe_load(top.read_text())
        cfg.pop("graph", None)
        cfg["defaults"] = [{"graph": "existing"} if isinstance(d, dict) and "graph" in d else d
                           for d in cfg["defaults"]]
        top.write_text(yaml.safe_dump(cfg, sort_keys=False))
    if extra_config:
        top.write_text(yaml.safe_dump(deep_merge(yaml.safe_load(top.read_text()), extra_config),
                                      sort_keys=False))
    return name


def run_anemoi_training(work: str | os.PathLike, *, model: str = "graphtransformer",
                        overrides: Sequence[str] = (), extra_config: Mapping[str, Any] | None = None,
                        resume_from: str | os.PathLike | None = None, dataset: Path | None = None,
                        graph: Path | str | None = "fixture", timeout: float = 600,
                        check: bool = True) -> RunOutput:
    """Run ``anemoi-training train`` in ``work`` (created); ``check`` raises with the log's tail
    when it fails. ``dataset`` defaults to the cached synthetic zarr and ``graph`` to the genuine
    fixture's graph (``"fixture"``; ``None`` builds one from the config with anemoi-graphs, which
    needs trimesh), both made under ``work``'s parent the first time."""
    work = Path(work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    cache = work.parent / "_anemoi_training_data"
    dataset = dataset or synthetic_zarr(cache)
    if graph == "fixture":
        graph = fixture_graph(model, cache)
    name = write_config(work, dataset, model, extra_config, Path(graph) if graph else None)
    args = [f"--config-dir={work / 'config'}", f"--config-name={name}", *SHORT_RUN, *overrides]
    if resume_from is not None:
        args.append(f"system.input.warm_start={Path(resume_from).resolve()}")
    env = {**os.environ, "ANEMOI_BASE_SEED": SEED, "HYDRA_FULL_ERROR": "1",
           # one thread: the runs are tiny and the test machine's cores are shared
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    env.pop("ANEMOI_TRAINING_CMD", None)
    before = set((work / "checkpoint").iterdir()) if (work / "checkpoint").exists() else set()
    log = work / "train.log"
    with open(log, "w") as fh:
        proc = subprocess.run([_bin("anemoi-training"), "train", *args], cwd=work, env=env,
                              stdout=fh, stderr=subprocess.STDOUT, timeout=timeout)
    new = sorted(set((work / "checkpoint").iterdir()) - before) if (work / "checkpoint").exists() else []
    if check and proc.returncode != 0:
        raise RuntimeError(f"anemoi-training train failed (exit {proc.returncode}) in {work}:\n"
                           + log.read_text()[-6000:])
    if check and len(new) != 1:
        raise RuntimeError(f"expected one new run folder under {work / 'checkpoint'}, found {new}")
    ckdir = new[0] if new else work / "checkpoint" / "missing"
    return RunOutput(work=work, run_id=ckdir.name, checkpoint_dir=ckdir, last=ckdir / "last.ckpt",
                     inference_last=ckdir / "inference-last.ckpt", log=log, returncode=proc.returncode)
