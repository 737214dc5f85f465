"""Checkpoint integrity on small real safetensors checkpoints built in tmp_path."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from launcher import checkpoint_checks


def make_checkpoint(root: Path, shards: int = 3, per_shard: int = 2) -> Path:
    """A sharded checkpoint laid out like Hugging Face's (index + model-0000k-of-0000n.safetensors)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    weight_map, total = {}, 0
    for s in range(shards):
        name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        tensors = {f"layers.{s}.w{t}": rng.standard_normal((4, 8 + t)).astype(np.float32) for t in range(per_shard)}
        save_file(tensors, str(root / name), metadata={"format": "pt"})
        for key, arr in tensors.items():
            weight_map[key] = name
            total += arr.nbytes
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (root / checkpoint_checks.INDEX_NAME).write_text(json.dumps(index))
    (root / "config.json").write_text("{}")
    return root


def only_problem_file(report: checkpoint_checks.CheckpointReport) -> str:
    assert not report.ok
    files = {p.file for p in report.problems}
    assert len(files) == 1, report.problems
    return files.pop()


def test_clean_checkpoint_passes(tmp_path: Path) -> None:
    report = checkpoint_checks.check_checkpoint(make_checkpoint(tmp_path / "ck"))
    assert report.ok, report.problems
    assert report.layout == "sharded" and len(report.shards) == 3 and report.tensor_count == 6
    assert "OK" in report.summary()


def test_missing_shard_is_named(tmp_path: Path) -> None:
    ck = make_checkpoint(tmp_path / "ck")
    (ck / "model-00002-of-00003.safetensors").unlink()
    report = checkpoint_checks.check_checkpoint(ck)
    assert only_problem_file(report) == "model-00002-of-00003.safetensors"
    assert "missing" in report.problems[0].message


def test_truncated_shard_is_named(tmp_path: Path) -> None:
    ck = make_checkpoint(tmp_path / "ck")
    path = ck / "model-00003-of-00003.safetensors"
    path.write_bytes(path.read_bytes()[:-10])
    report = checkpoint_checks.check_checkpoint(ck)
    assert only_problem_file(report) == path.name
    assert "truncated" in report.problems[0].message


def test_stray_shard_is_named(tmp_path: Path) -> None:
    ck = make_checkpoint(tmp_path / "ck")
    save_file({"x": np.zeros(3, np.float32)}, str(ck / "model-00004-of-00004.safetensors"))
    report = checkpoint_checks.check_checkpoint(ck)
    assert only_problem_file(report) == "model-00004-of-00004.safetensors"
    assert "stray" in report.problems[0].message


@pytest.mark.parametrize("damage", ["garbage_json", "huge_length", "short_file"])
def test_corrupt_header_is_named(tmp_path: Path, damage: str) -> None:
    ck = make_checkpoint(tmp_path / "ck")
    path = ck / "model-00001-of-00003.safetensors"
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    if damage == "garbage_json":
        raw = raw[:8] + b"#" * n + raw[8 + n :]
    elif damage == "huge_length":
        raw = struct.pack("<Q", 1 << 40) + raw[8:]
    else:
        raw = raw[:5]
    path.write_bytes(raw)
    report = checkpoint_checks.check_checkpoint(ck)
    assert only_problem_file(report) == path.name
    assert "header" in report.problems[0].message


def test_tensor_names_must_match_the_index(tmp_path: Path) -> None:
    ck = make_checkpoint(tmp_path / "ck")
    # Same file name, different content: a shard from another revision.
    save_file({"layers.1.other": np.zeros((4, 8), np.float32), "layers.1.w1": np.zeros((4, 9), np.float32)},
              str(ck / "model-00002-of-00003.safetensors"))
    report = checkpoint_checks.check_checkpoint(ck)
    assert "model-00002-of-00003.safetensors" in {p.file for p in report.problems}
    msg = next(p.message for p in report.problems if p.file == "model-00002-of-00003.safetensors")
    assert "layers.1.w0" in msg and "layers.1.other" in msg


def test_total_size_mismatch_names_the_index(tmp_path: Path) -> None:
    ck = make_checkpoint(tmp_path / "ck")
    index = json.loads((ck / checkpoint_checks.INDEX_NAME).read_text())
    index["metadata"]["total_size"] += 4
    (ck / checkpoint_checks.INDEX_NAME).write_text(json.dumps(index))
    assert only_problem_file(checkpoint_checks.check_checkpoint(ck)) == checkpoint_checks.INDEX_NAME


def test_single_file_checkpoint(tmp_path: Path) -> None:
    ck = tmp_path / "single"
    ck.mkdir()
    save_file({"w": np.ones((16, 16), np.float32)}, str(ck / "model.safetensors"))
    assert checkpoint_checks.check_checkpoint(ck).ok
    path = ck / "model.safetensors"
    path.write_bytes(path.read_bytes() + b"\0" * 7)
    report = checkpoint_checks.check_checkpoint(ck)
    assert only_problem_file(report) == "model.safetensors" and "longer" in report.problems[0].message


def test_not_a_checkpoint(tmp_path: Path) -> None:
    report = checkpoint_checks.check_checkpoint(tmp_path)
    assert not report.ok and not report.layout and "model.safetensors.index.json" in report.summary()


def test_manifest_round_trip_and_mismatch(tmp_path: Path) -> None:
    ck = make_checkpoint(tmp_path / "ck")
    report = checkpoint_checks.run_preflight(ck, manifest="write")
    assert report.ok and report.manifest == "written"
    lines = (ck / checkpoint_checks.MANIFEST_NAME).read_text().splitlines()
    assert any(line.endswith("  model-00001-of-00003.safetensors") for line in lines)
    assert checkpoint_checks.run_preflight(ck).manifest == "verified"
    # Same size, same header, one data byte flipped: only the hash can see it.
    path = ck / "model-00002-of-00003.safetensors"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    assert checkpoint_checks.check_checkpoint(ck).ok
    report = checkpoint_checks.run_preflight(ck)
    assert report.manifest == "mismatch"
    assert only_problem_file(report) == path.name and "sha256" in report.problems[0].message
    assert checkpoint_checks.run_preflight(ck, manifest="skip").ok


def test_manifest_is_sha256sum_compatible(tmp_path: Path) -> None:
    ck = make_checkpoint(tmp_path / "ck", shards=1)
    checkpoint_checks.write_manifest(ck)
    res = subprocess.run(["sha256sum", "-c", checkpoint_checks.MANIFEST_NAME], cwd=ck, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def _check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launcher.cli", "check", *args],
                          capture_output=True, text=True, timeout=60)


def test_cli_check_names_the_broken_file(tmp_path: Path) -> None:
    ck = make_checkpoint(tmp_path / "ck")
    res = _check("--model", str(ck))
    assert res.returncode == 0 and "OK" in res.stdout
    (ck / "model-00003-of-00003.safetensors").unlink()
    res = _check("--model", str(ck))
    assert res.returncode == 1
    assert "model-00003-of-00003.safetensors" in res.stdout and "missing" in res.stdout
    res = _check("--model", str(tmp_path / "nope"))
    assert res.returncode == 2 and "not a directory" in res.stderr and "Traceback" not in res.stderr


def test_cli_write_manifest(tmp_path: Path) -> None:
    ck = make_checkpoint(tmp_path / "ck", shards=2)
    res = _check("--model", str(ck), "--write-manifest")
    assert res.returncode == 0, res.stderr
    assert (ck / checkpoint_checks.MANIFEST_NAME).exists()
    res = _check("--model", str(ck), "--json")
    assert json.loads(res.stdout)["manifest"] == "verified"
