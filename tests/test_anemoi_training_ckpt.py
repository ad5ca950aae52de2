"""Issue 18: ``.anc`` checkpoints from inside anemoi-training - ``AncCheckpoint``, resume, warm start.

Every run is the real ``anemoi-training train`` console script (the pinned 0.17.1) on a zarr made
by ``anemoi-datasets create`` (tests/anemoi_training_run.py), configured only through its own
config: the callbacks are added with ``diagnostics.callbacks``. Proven here:

(b) the inference ``.anc`` a run writes predicts bit for bit what the pickled inference checkpoint
    of the same run predicts (the pickle loaded with ``torch.load`` in this test only, as the
    reference), and the ``.anc`` files follow anemoi-training's own names and schedule;
(c) resuming from the run's ``last.anc`` continues it exactly as resuming from ``last.ckpt`` does:
    the same weights and optimizer state, bit for bit, after the extra steps;
    a warm start from a genuine base ``.anc`` (fixtures/.../graphtransformer/last.ckpt converted)
    trains exactly as anemoi-training's own weights-only warm start from the pickled base does,
    and with ``replace_pickles`` and ``num_models_saved: 1`` leaves only the newest ``.anc`` files.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.conftest import FIXTURES, require_module

require_module("anemoi.training", reason="needs anemoi-training (make test-anemoi)")
require_module("anemoi.models", reason="needs anemoi-models (make test-anemoi)")
require_module("anemoi.datasets", reason="needs anemoi-datasets (make test-anemoi)")

import torch  # noqa: E402
from anemoi.training.checkpoint import CheckpointContext, CheckpointPipeline  # noqa: E402
from anemoi.training.checkpoint.loading import WeightsOnlyLoader  # noqa: E402
from anemoi.utils.checkpoints import load_metadata  # noqa: E402

import anemoi_ckpt  # noqa: E402
from anemoi_ckpt.anemoi import load_model  # noqa: E402
from anemoi_ckpt.anemoi.training import AncSource  # noqa: E402
from anemoi_ckpt.anemoi.training.resume import lightning_checkpoint  # noqa: E402
from anemoi_ckpt.errors import AncError  # noqa: E402
from anemoi_ckpt.trainer.config import ConfigError  # noqa: E402
from tests.anemoi_helpers import random_batch  # noqa: E402
from tests.anemoi_training_run import run_anemoi_training  # noqa: E402

GENUINE = FIXTURES / "legacy" / "anemoi" / "graphtransformer"
ANC = "{_target_:anemoi_ckpt.anemoi.training.AncCheckpoint}"
MORE = ["training.max_epochs=3", "training.max_steps=6"]  # one more epoch of 2 steps


def callbacks(*cbs: str) -> str:
    return f"diagnostics.callbacks=[{','.join(cbs)}]"


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("anemoi-training")


@pytest.fixture(scope="module")
def run(work):
    """A 2-epoch run with AncCheckpoint beside the pickles."""
    return run_anemoi_training(work / "run", overrides=[callbacks(ANC)])


@pytest.fixture(scope="module")
def base_anc(work):
    out = work / "base.anc"
    anemoi_ckpt.convert(GENUINE / "last.ckpt", out)
    return out


def tensors(path: Path, section: str = "weights") -> dict[str, torch.Tensor]:
    with anemoi_ckpt.open(path) as ck:
        return {k: t.clone() for k, t in ck.tensors(section).items()}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert set(a) == set(b)
    different = [k for k in a if a[k].dtype != b[k].dtype or not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


# --- (b) what AncCheckpoint writes ----------------------------------------------------------------
def test_every_pickle_gets_a_verified_anc_twin(run):
    files = run.files()
    pickles = [f for f in files if f.endswith(".ckpt")]
    # anemoi-training's own schedule: each epoch's checkpoint, last, and their inference twins
    assert len(pickles) == 6 and "last.ckpt" in pickles and "inference-last.ckpt" in pickles
    assert sorted(f for f in files if f.endswith(".anc")) == sorted(p[:-5] + ".anc" for p in pickles)
    for p in pickles:
        with anemoi_ckpt.open(run.checkpoint_dir / (p[:-5] + ".anc")) as ck:
            assert ck.kind == ("inference" if p.startswith("inference-") else "training")
            assert ck.verify().ok
            # the anemoi metadata anemoi-training put in the pickle, uuid included (each file
            # names where its own supporting arrays are: the paths inside the container differ)
            ours, theirs = dict(ck.anemoi_metadata), load_metadata(str(run.checkpoint_dir / p))
            assert ours.pop("supporting_arrays_paths").keys() == theirs.pop("supporting_arrays_paths").keys()
            assert ours == theirs and ours["uuid"]
            assert set(ck.supporting_arrays) == {"data"}
    with anemoi_ckpt.open(run.checkpoint_dir / "last.anc") as ck:
        state = ck.document("training-state")
        assert (state["epoch"], state["global_step"]) == (1, 4)
        assert "optimizer" in ck.tensor_sections() and "graph" in ck.tensor_sections()
        names = {k.rpartition(".")[0] for k in ck.tensors("optimizer")}
        assert names and names <= set(ck.tensors("weights"))  # optimizer state by parameter name
    # the training and inference files of one save hold the same weights
    assert_same(tensors(run.checkpoint_dir / "last.anc"), tensors(run.checkpoint_dir / "inference-last.anc"))


def test_inference_anc_predicts_bit_for_bit_as_the_pickle(run):
    reference = torch.load(run.inference_last, weights_only=False, map_location="cpu")  # the reference only
    model = load_model(run.checkpoint_dir / "inference-last.anc")
    reference.eval(), model.eval()
    for seed in (0, 1):
        with torch.no_grad():
            want = reference.predict_step(random_batch(reference, seed))
            got = model.predict_step(random_batch(model, seed))
        assert set(want) == set(got)
        for name in want:
            assert torch.equal(want[name], got[name]), name
    assert not torch.equal(want["data"], torch.zeros_like(want["data"]))


# --- (c) resume ---------------------------------------------------------------------------------
def test_resume_from_anc_continues_as_resume_from_ckpt(run, work):
    from_ckpt = run_anemoi_training(work / "resume-ckpt", overrides=[callbacks(ANC), *MORE],
                                    resume_from=run.last)
    from_anc = run_anemoi_training(work / "resume-anc", overrides=[callbacks(ANC), *MORE],
                                   resume_from=run.checkpoint_dir / "last.anc")
    a, b = from_ckpt.checkpoint_dir / "last.anc", from_anc.checkpoint_dir / "last.anc"
    assert_same(tensors(a), tensors(b))
    assert_same(tensors(a, "optimizer"), tensors(b, "optimizer"))
    with anemoi_ckpt.open(a) as x, anemoi_ckpt.open(b) as y:
        sa, sb = x.document("training-state"), y.document("training-state")
    assert (sa["epoch"], sa["global_step"]) == (sb["epoch"], sb["global_step"]) == (2, 6)
    assert sa["loops"] == sb["loops"] and sa["lr_schedulers"] == sb["lr_schedulers"]
    assert sa["optimizers"][0]["param_groups"] == sb["optimizers"][0]["param_groups"]
    # the extra steps trained: the weights moved on from the resumed file's
    start = tensors(run.checkpoint_dir / "last.anc")
    assert sum(not torch.equal(start[k], t) for k, t in tensors(b).items()) > len(start) // 2


def test_resume_refuses_an_inference_file_in_one_line(run):
    with pytest.raises(AncError, match="inference file, not a training .anc"):
        lightning_checkpoint(run.checkpoint_dir / "inference-last.anc", torch.nn.Linear(1, 1))


# --- warm start ---------------------------------------------------------------------------------
def test_warm_start_from_anc_trains_as_anemoi_own_warm_start(work, base_anc):
    """Ours (WarmStart + AncSource through the checkpoint pipeline, only .anc kept) and
    anemoi-training's own (``load_weights_only`` from the pickled base) train the same model."""
    rotate = ["diagnostics.checkpoint.every_n_epochs.num_models_saved=1"]
    warm = f"{{_target_:anemoi_ckpt.anemoi.training.WarmStart,source:'{base_anc}'}}"
    replace = "{_target_:anemoi_ckpt.anemoi.training.AncCheckpoint,replace_pickles:true}"
    ours = run_anemoi_training(work / "warm-anc", overrides=[callbacks(warm, replace), *rotate])
    theirs = run_anemoi_training(work / "warm-own", overrides=[callbacks(ANC), *rotate,
                                                               "training.load_weights_only=true"],
                                 resume_from=GENUINE / "last.ckpt")
    assert f"WarmStart: {base_anc} loaded (weights_only)" in ours.log.read_text()
    assert_same(tensors(ours.checkpoint_dir / "last.anc"), tensors(theirs.checkpoint_dir / "last.anc"))
    assert_same(tensors(ours.checkpoint_dir / "inference-last.anc"),
                tensors(theirs.checkpoint_dir / "inference-last.anc"))
    # it trained from the base: 4 steps moved the weights, a little (a seeded random start, which
    # both runs would share had neither loaded the base, is nowhere near it)
    base, trained = tensors(base_anc), tensors(ours.checkpoint_dir / "last.anc")
    assert sum(not torch.equal(base[k], t) for k, t in trained.items()) > 10
    assert max((trained[k].double() - t.double()).abs().max().item()
               for k, t in base.items() if t.is_floating_point()) < 1e-4
    # replace_pickles and num_models_saved: 1 - only the newest epoch's .anc files and last
    assert ours.files() == ["anemoi-by_epoch-epoch_001-step_000004.anc",
                            "inference-anemoi-by_epoch-epoch_001-step_000004.anc",
                            "inference-last.anc", "last.anc"]
    with anemoi_ckpt.open(ours.checkpoint_dir / "last.anc") as ck, anemoi_ckpt.open(base_anc) as b:
        record = [v for k, v in ck.document("training-state")["callbacks"].items() if k.startswith("WarmStart")]
        assert record and record[0]["warm_start"]["source_uuid"] == b.uuid
        assert record[0]["warm_start"]["loading_strategy"] == "weights_only"


def _perturbed_model(base_anc: Path) -> torch.nn.Module:
    model = load_model(base_anc)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    return model


def test_anc_source_loads_exactly_the_base_without_torch_load(base_anc, work, monkeypatch):
    from anemoi_ckpt.catalogue.register import register

    db = work / "catalogue.db"
    register(db, [str(base_anc)])
    with anemoi_ckpt.open(base_anc) as ck:
        uuid = ck.uuid
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load called"))
    for source in (str(base_anc), f"file://{base_anc}", f"uuid:{uuid}"):
        model = _perturbed_model(base_anc)
        pipeline = CheckpointPipeline([AncSource(source, catalogue=str(db)), WeightsOnlyLoader(strict=True)])
        result = pipeline.execute_sync(CheckpointContext(model=model))
        assert result.metadata["source_uuid"] == uuid
        assert_same({k: v for k, v in model.state_dict().items()}, tensors(base_anc))
        assert model._ckpt_model_name_to_index == {"data": load_model(base_anc).data_indices["data"].name_to_index}


def test_anc_source_refusals_are_one_line(work, run):
    ctx = CheckpointContext()
    with pytest.raises(ConfigError, match="no such .anc file"):
        asyncio.run(AncSource(str(work / "missing.anc")).process(ctx))
    with pytest.raises(ConfigError, match="no source"):
        asyncio.run(AncSource().process(ctx))
    not_anc = work / "not.anc"
    not_anc.write_bytes(b"not a zip")
    with pytest.raises(ConfigError) as e:
        asyncio.run(AncSource(str(not_anc)).process(ctx))
    assert "\n" not in str(e.value)
