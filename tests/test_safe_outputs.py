"""Outputs of the commands that write (convert, merge, split, adapters attach, finetune): an existing
file is kept unless --overwrite; a folder, a path in a missing folder or a file:// URL is refused
with one line naming it, before any work and without leaving a temp file behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import anemoi_ckpt
from anemoi_ckpt.errors import AncError
from anemoi_ckpt.output_path import check_output

from tests.conftest import one_error_line, run_cli, tiny_reference_base


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """A base, its fine-tune (two 2-D weights changed), their LoRA split, and a torch .pt source."""
    gen = torch.Generator().manual_seed(0)
    base = {"enc.weight": torch.randn(8, 6, generator=gen), "enc.bias": torch.randn(8, generator=gen),
            "head.weight": torch.randn(4, 8, generator=gen)}
    ft = {k: v.clone() for k, v in base.items()}
    ft["enc.weight"] += torch.randn(8, 1, generator=gen) @ torch.randn(1, 6, generator=gen)
    ft["head.weight"] += torch.randn(4, 1, generator=gen) @ torch.randn(1, 8, generator=gen)
    anemoi_ckpt.save(tmp_path / "base.anc", base)
    anemoi_ckpt.save(tmp_path / "ft.anc", ft)
    torch.save(base, tmp_path / "src.pt")
    out = run_cli("split", str(tmp_path / "ft.anc"), "--base", str(tmp_path / "base.anc"), "--rank", "1",
                  "-o", str(tmp_path / "lora.anc"))
    assert out.returncode == 0, out.stderr
    return {"base": tmp_path / "base.anc", "ft": tmp_path / "ft.anc", "lora": tmp_path / "lora.anc",
            "pt": tmp_path / "src.pt", "dir": tmp_path}


def _commands(f: dict[str, Path], dst: str) -> dict[str, list[str]]:
    return {"convert": ["convert", str(f["pt"]), dst],
            "merge": ["merge", str(f["base"]), str(f["lora"]), "-o", dst],
            "split": ["split", str(f["ft"]), "--base", str(f["base"]), "--rank", "1", "-o", dst],
            "attach": ["adapters", "attach", str(f["base"]), str(f["lora"]), "-o", dst]}


COMMANDS = ["convert", "merge", "split", "attach"]


def _no_temp_files(folder: Path) -> None:
    assert not [p for p in os.listdir(folder) if p.startswith(".") and p.endswith(".tmp")]


@pytest.mark.parametrize("cmd", COMMANDS)
def test_existing_output_is_kept_unless_overwrite(files: dict[str, Path], cmd: str) -> None:
    dst = files["dir"] / "out.anc"
    dst.write_bytes(b"precious")
    args = _commands(files, str(dst))[cmd]
    line = one_error_line(run_cli(*args), str(dst), "already exists", "--overwrite")
    assert ".tmp" not in line
    assert dst.read_bytes() == b"precious"  # nothing written
    _no_temp_files(files["dir"])
    done = run_cli(*args, "--overwrite")
    assert done.returncode == 0, done.stderr
    with anemoi_ckpt.open(dst) as ck:  # replaced by a real .anc
        assert ck.verify().ok


@pytest.mark.parametrize("cmd", COMMANDS)
def test_folder_missing_folder_and_file_url_outputs(files: dict[str, Path], cmd: str) -> None:
    folder = files["dir"] / "a-folder"
    folder.mkdir()
    line = one_error_line(run_cli(*_commands(files, str(folder))[cmd]), str(folder), "is a folder")
    assert ".tmp" not in line and os.listdir(folder) == []
    # --overwrite never replaces a folder
    one_error_line(run_cli(*_commands(files, str(folder))[cmd], "--overwrite"), "is a folder")
    missing = files["dir"] / "nowhere" / "out.anc"
    one_error_line(run_cli(*_commands(files, str(missing))[cmd]), str(missing), "does not exist")
    assert not missing.parent.exists()
    url = f"file://{files['dir'] / 'url.anc'}"
    one_error_line(run_cli(*_commands(files, url)[cmd]), url, "file:// URL")
    assert not (files["dir"] / "url.anc").exists() and not (files["dir"] / "file:").exists()
    _no_temp_files(files["dir"])


def test_output_checked_before_reading_any_input(files: dict[str, Path]) -> None:
    """The output line comes first even when the work itself would fail: no conversion ran."""
    dst = files["dir"] / "out.anc"
    dst.write_bytes(b"x")
    one_error_line(run_cli("convert", str(files["dir"] / "no-such.pt"), str(dst)), "already exists")


def test_default_outputs_of_merge_and_split_are_kept(files: dict[str, Path]) -> None:
    merged = files["dir"] / "base+lora.anc"  # merge's default name, beside BASE
    merged.write_bytes(b"keep")
    one_error_line(run_cli("merge", str(files["base"]), str(files["lora"])), str(merged), "already exists")
    assert merged.read_bytes() == b"keep"
    split_out = files["dir"] / "ft-lora.anc"  # split's default name
    split_out.write_bytes(b"keep")
    one_error_line(run_cli("split", str(files["ft"]), "--base", str(files["base"]), "--rank", "1"),
                   str(split_out), "already exists")
    assert split_out.read_bytes() == b"keep"


def test_convert_out_dir_checks_every_output_first(files: dict[str, Path]) -> None:
    other = files["dir"] / "other.pt"
    torch.save({"w": torch.ones(2)}, other)
    out = files["dir"] / "converted"
    out.mkdir()
    (out / "src.anc").write_bytes(b"keep")
    one_error_line(run_cli("convert", str(other), str(files["pt"]), "--out-dir", str(out)),
                   "src.anc", "already exists")
    assert sorted(os.listdir(out)) == ["src.anc"]  # other.pt was not converted first
    a_file = files["dir"] / "plain-file"
    a_file.write_bytes(b"")
    one_error_line(run_cli("convert", str(other), "--out-dir", str(a_file)), "is not a folder")


def test_check_output_api(tmp_path: Path) -> None:
    assert check_output(tmp_path / "new.anc", overwrite=False) == str(tmp_path / "new.anc")
    (tmp_path / "old.anc").write_bytes(b"")
    assert check_output(tmp_path / "old.anc", overwrite=True) == str(tmp_path / "old.anc")
    with pytest.raises(AncError, match="already exists"):
        check_output(tmp_path / "old.anc", overwrite=False)
    with pytest.raises(AncError, match="cannot write to a URL"):
        check_output("s3://bucket/x.anc", overwrite=True)
    assert check_output(tmp_path, overwrite=False, kind="dir") == str(tmp_path)
    with pytest.raises(AncError, match="not a folder"):
        check_output(tmp_path / "old.anc", overwrite=True, kind="dir")


# --- finetune ------------------------------------------------------------------------------------


def test_finetune_refuses_existing_outputs_before_training(files: dict[str, Path], tmp_path: Path) -> None:
    pytest.importorskip("lightning")
    pytest.importorskip("peft")
    out = tmp_path / "run"
    out.mkdir()
    (out / "ft-train.anc").write_bytes(b"keep")
    config = tmp_path / "ft.yaml"
    # base is not even a buildable model: the output check comes before anything is built
    config.write_text(f"base: {files['base']}\nmethod: lora\nmax_steps: 1\n"
                      f"output: {{dir: {out}, name: ft}}\n")
    res = run_cli("finetune", str(config))
    one_error_line(res, str(out / "ft-train.anc"), "already exists", "--overwrite")
    assert "GPU available" not in res.stderr and sorted(os.listdir(out)) == ["ft-train.anc"]
    (out / "ft-train.anc").unlink()
    (out / "ft.anc").mkdir()
    one_error_line(run_cli("finetune", str(config), "--overwrite"), str(out / "ft.anc"), "is a folder")
    url = run_cli("finetune", str(config), "--set", f"output.dir=file://{tmp_path / 'u'}")
    one_error_line(url, "file:// URL")


def test_finetune_rerun_refused_overwrite_replaces_and_resume_in_place_continues(tmp_path: Path) -> None:
    pytest.importorskip("lightning")
    pytest.importorskip("peft")

    base = tiny_reference_base(tmp_path / "base.anc")
    out = tmp_path / "run"
    config = tmp_path / "ft.yaml"
    config.write_text(f"base: {base}\nmethod: lora\nmax_steps: 1\n"
                      "data: {n_samples: 8, batch_size: 4, val_samples: 4}\n"
                      f"output: {{dir: {out}, name: ft}}\n")
    first = run_cli("finetune", str(config))
    assert first.returncode == 0, first.stderr
    before = (out / "ft.anc").read_bytes()
    one_error_line(run_cli("finetune", str(config)), "ft", "already exists", "--overwrite")
    assert (out / "ft.anc").read_bytes() == before
    # continuing the run from its own training file replaces its outputs: no --overwrite needed
    again = run_cli("finetune", str(config), "--set", "max_steps=2", "--resume", str(out / "ft-train.anc"))
    assert again.returncode == 0, again.stderr
    assert "steps 2" in again.stdout and (out / "ft.anc").read_bytes() != before
    forced = run_cli("finetune", str(config), "--overwrite")
    assert forced.returncode == 0, forced.stderr
    assert "steps 1" in forced.stdout
