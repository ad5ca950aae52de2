"""Four easy mistakes that used to produce a misleading error (or none): each is now one line, before
anything starts, saying what is wrong and what to do. Plus ``finetune --example`` for users
without a source checkout."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import anemoi_ckpt

from tests.conftest import one_error_line, run_cli, tiny_reference_base


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    """(fine-tune, base): the fine-tune's lineage names the base as its parent, as a trainer's does."""
    gen = torch.Generator().manual_seed(0)
    base = {"enc.weight": torch.randn(8, 6, generator=gen), "head.weight": torch.randn(4, 8, generator=gen)}
    ft = {k: v + 0.1 * torch.randn(v.shape, generator=gen) for k, v in base.items()}
    anemoi_ckpt.save(tmp_path / "base.anc", base)
    anemoi_ckpt.save(tmp_path / "ft.anc", ft, parents=[tmp_path / "base.anc"], operation="fine-tune")
    return tmp_path / "ft.anc", tmp_path / "base.anc"


# (b) merge ADAPTER BASE ------------------------------------------------------------------------
def test_merge_with_swapped_arguments_says_so(pair: tuple[Path, Path], tmp_path: Path) -> None:
    ft, base = pair
    lora = tmp_path / "lora.anc"
    assert run_cli("split", str(ft), "--base", str(base), "--rank", "2", "-o", str(lora)).returncode == 0
    out = tmp_path / "merged.anc"
    res = run_cli("merge", str(lora), str(base), "-o", str(out))
    line = one_error_line(res, "swapped", f"merge {base} {lora}", rc=2)
    assert "PEFT folder" not in line and not out.exists()
    assert run_cli("merge", str(base), str(lora), "-o", str(out)).returncode == 0  # the right order works


# (c) split BASE --base FINETUNE -------------------------------------------------------------------
def test_split_with_model_and_base_swapped_is_refused(pair: tuple[Path, Path], tmp_path: Path) -> None:
    ft, base = pair
    out = tmp_path / "inverse.anc"
    res = run_cli("split", str(base), "--base", str(ft), "--rank", "2", "-o", str(out))
    one_error_line(res, "swapped", f"split {ft} --base {base}", rc=2)
    assert not out.exists()  # no inverse adapter written
    assert run_cli("split", str(ft), "--base", str(base), "--rank", "2", "-o", str(out)).returncode == 0


def test_split_swap_seen_through_a_longer_history(pair: tuple[Path, Path], tmp_path: Path) -> None:
    """A model merged from the base (base -> merged) is a descendant too, two steps down."""
    ft, base = pair
    lora, merged = tmp_path / "lora.anc", tmp_path / "merged.anc"
    assert run_cli("split", str(ft), "--base", str(base), "--rank", "1", "-o", str(lora)).returncode == 0
    assert run_cli("merge", str(base), str(lora), "-o", str(merged)).returncode == 0
    again = tmp_path / "again.anc"
    assert run_cli("convert", str(merged), str(again)).returncode == 0
    one_error_line(run_cli("split", str(base), "--base", str(again), "--rank", "1",
                           "-o", str(tmp_path / "x.anc")), "swapped", rc=2)


# (d) lineage UUID with $ANEMOI_CKPT_CATALOGUE ---------------------------------------------------
def test_lineage_uuid_uses_the_catalogue_env_var(pair: tuple[Path, Path], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    ft, base = pair
    db = tmp_path / "cat.db"
    assert run_cli("catalogue", "register", str(ft), str(base), "--catalogue", str(db)).returncode == 0
    with anemoi_ckpt.open(ft) as ck:
        ft_uuid = ck.uuid
    with anemoi_ckpt.open(base) as ck:
        base_uuid = ck.uuid
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.setenv("HOME", str(elsewhere))  # no default catalogue to fall back on
    monkeypatch.delenv("ANEMOI_CKPT_CATALOGUE", raising=False)
    assert run_cli("lineage", ft_uuid, cwd=elsewhere).returncode == 1  # nothing to resolve it with
    monkeypatch.setenv("ANEMOI_CKPT_CATALOGUE", str(db))
    res = run_cli("lineage", ft_uuid, cwd=elsewhere)
    assert res.returncode == 0, res.stderr
    tree = res.stdout.splitlines()  # the fine-tune, then its base: the records the catalogue holds
    assert tree[0].startswith(ft_uuid[:8]) and base_uuid[:8] in tree[1]
    # an unknown uuid: one line naming the catalogue it looked in, not "no such file"
    unknown = "0123abcd-0000-4000-8000-000000000000"
    line = one_error_line(run_cli("lineage", unknown, cwd=elsewhere), unknown, str(db))
    assert "no such file" in line and "catalogue" in line


# (a) resuming a LoRA run with another rank -------------------------------------------------------
def test_resume_lora_with_another_rank_is_one_line_before_lightning(tmp_path: Path) -> None:
    pytest.importorskip("lightning")
    pytest.importorskip("peft")
    from anemoi_ckpt.trainer.config import load_config
    from anemoi_ckpt.trainer.run import train

    base = tiny_reference_base(tmp_path / "base.anc")
    data = {"base": base, "method": "lora", "max_steps": 1,
            "data": {"n_samples": 8, "batch_size": 4, "val_samples": 4},
            "lora": {"r": 4, "alpha": 8}, "output": {"dir": str(tmp_path / "first"), "name": "run"}}
    first = train(load_config(None, data=data), accelerator="cpu", durable=False)
    config = tmp_path / "again.yaml"
    config.write_text(f"base: {base}\nmethod: lora\nmax_steps: 2\n"
                      "data: {n_samples: 8, batch_size: 4, val_samples: 4}\n"
                      f"lora: {{r: 8, alpha: 16}}\noutput: {{dir: {tmp_path / 'second'}, name: run}}\n")
    res = run_cli("finetune", str(config), "--resume", first.training_file)
    line = one_error_line(res, first.training_file, "LoRA rank 4", "lora.r 8", "--set lora.r=4", rc=2)
    assert "size mismatch" not in line
    assert "GPU available" not in res.stderr and not (tmp_path / "second").exists()


# finetune --example ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["lora", "freeze", "full", "anemoi-lora", "anemoi-freeze"])
def test_finetune_example_prints_a_config_that_loads(name: str, tmp_path: Path) -> None:
    pytest.importorskip("yaml")
    from anemoi_ckpt.trainer.config import load_config

    res = run_cli("finetune", "--example", name)
    assert res.returncode == 0, res.stderr
    path = tmp_path / "ft.yaml"
    path.write_text(res.stdout)
    cfg = load_config(path)
    assert cfg.method == name.rsplit("-", 1)[-1]
    assert cfg.base is not None


def test_finetune_without_config_points_at_the_examples() -> None:
    one_error_line(run_cli("finetune"), "CONFIG.yaml", "--example", rc=2)
    one_error_line(run_cli("finetune", "x.yaml", "--example", "lora"), "--example", rc=2)
