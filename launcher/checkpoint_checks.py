"""Offline checks of a safetensors checkpoint, before an hour-long load.

The field report's warning was that one damaged file among 163 makes the start
fail late; worse, vLLM 0.8.2 does not notice a *missing* shard of an FP8 model at
all and serves garbage. Everything here reads only headers and file sizes (a few
KiB per shard), so it runs before every ``serve``; hashing the whole 642 GiB is
opt-in through a sha256 manifest.

Checks: the index parses; every shard it names exists; no stray ``.safetensors``
file is left out of the index; each header parses (8-byte little-endian length,
then JSON); each file is exactly header + data long; each shard holds exactly the
tensors the index assigns to it; the index's ``total_size`` equals the data bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from launcher.errors import LauncherError

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
MANIFEST_NAME = "checkpoint.sha256"
# A real header is a few MiB at most (DeepSeek-R1: ~100 KiB per shard); the
# safetensors library refuses anything above 100 MB too.
MAX_HEADER_BYTES = 100_000_000


@dataclass(frozen=True)
class Problem:
    file: str  # relative to the checkpoint directory ("" for the directory itself)
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.message}" if self.file else self.message


@dataclass
class ShardInfo:
    name: str
    size: int
    header_len: int
    data_bytes: int
    tensors: dict[str, dict]


@dataclass
class CheckpointReport:
    directory: Path
    layout: str = ""  # "sharded" | "single" | ""
    shards: list[ShardInfo] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    manifest: str = "absent"  # absent | verified | written | mismatch | skipped

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def total_bytes(self) -> int:
        return sum(s.size for s in self.shards)

    @property
    def data_bytes(self) -> int:
        return sum(s.data_bytes for s in self.shards)

    @property
    def tensor_count(self) -> int:
        return sum(len(s.tensors) for s in self.shards)

    def summary(self) -> str:
        if not self.layout:
            return f"{self.directory}: {self.problems[0] if self.problems else 'not a safetensors checkpoint'}"
        head = (
            f"{self.directory}: {len(self.shards)} shard(s), {self.tensor_count} tensors, "
            f"{self.total_bytes / 2**30:.2f} GiB, manifest {self.manifest}"
        )
        if self.ok:
            return head + " — OK"
        return head + f" — {len(self.problems)} problem(s)"


class HeaderError(LauncherError, ValueError):
    pass


def read_header(path: Path) -> tuple[int, dict]:
    """Return (header length, header JSON) of one safetensors file, or raise HeaderError."""
    with open(path, "rb") as fh:
        raw_len = fh.read(8)
        if len(raw_len) < 8:
            raise HeaderError(f"file is {len(raw_len)} bytes, shorter than the 8-byte header length")
        (header_len,) = struct.unpack("<Q", raw_len)
        if header_len == 0 or header_len > MAX_HEADER_BYTES:
            raise HeaderError(f"header length {header_len} is not plausible (corrupt or not safetensors)")
        raw = fh.read(header_len)
    if len(raw) < header_len:
        raise HeaderError(f"header is cut short ({len(raw)} of {header_len} bytes)")
    try:
        header = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise HeaderError(f"header is not valid JSON ({exc.msg} at byte {exc.pos})") from None
    if not isinstance(header, dict):
        raise HeaderError("header is not a JSON object")
    return header_len, header


def inspect_shard(path: Path, rel: str) -> tuple[ShardInfo | None, list[Problem]]:
    """Header and size check of one shard."""
    try:
        size = path.stat().st_size
        header_len, header = read_header(path)
    except HeaderError as exc:
        return None, [Problem(rel, f"corrupt header: {exc}; download this file again")]
    except OSError as exc:
        return None, [Problem(rel, f"cannot read: {exc.strerror}")]
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    problems: list[Problem] = []
    data_end = 0
    for name, meta in tensors.items():
        offsets = meta.get("data_offsets") if isinstance(meta, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            problems.append(Problem(rel, f"tensor '{name}' has no valid data_offsets; download this file again"))
            continue
        if offsets[1] < offsets[0]:
            problems.append(Problem(rel, f"tensor '{name}' has reversed data_offsets {offsets}"))
        data_end = max(data_end, offsets[1])
    expected = 8 + header_len + data_end
    if size != expected:
        how = "truncated" if size < expected else "longer than its header says"
        problems.append(
            Problem(rel, f"{how}: {size} bytes on disk, header says {expected}; download this file again")
        )
    return ShardInfo(rel, size, header_len, data_end, tensors), problems


def _stray_shards(directory: Path, expected: Iterable[str]) -> list[str]:
    expected = set(expected)
    return sorted(
        p.name for p in directory.glob("*.safetensors") if p.name not in expected and p.is_file()
    )


def check_checkpoint(directory: Path | str) -> CheckpointReport:
    """Check a checkpoint directory's safetensors files against their index. Never raises for bad data."""
    directory = Path(directory)
    report = CheckpointReport(directory)
    if not directory.is_dir():
        report.problems.append(Problem("", f"{directory} is not a directory"))
        return report
    index_path = directory / INDEX_NAME
    if index_path.exists():
        report.layout = "sharded"
        _check_sharded(directory, index_path, report)
    elif (directory / SINGLE_NAME).exists():
        report.layout = "single"
        info, problems = inspect_shard(directory / SINGLE_NAME, SINGLE_NAME)
        report.problems.extend(problems)
        if info:
            report.shards.append(info)
        for stray in _stray_shards(directory, [SINGLE_NAME]):
            report.problems.append(Problem(stray, f"stray shard beside {SINGLE_NAME} (no index names it); remove it"))
    else:
        names = sorted(p.name for p in directory.glob("*.safetensors"))
        msg = f"no {INDEX_NAME} or {SINGLE_NAME} in {directory}"
        if names:
            msg += f" (found {len(names)} .safetensors files without an index; copy the index file too)"
        report.problems.append(Problem("", msg))
    return report


def _check_sharded(directory: Path, index_path: Path, report: CheckpointReport) -> None:
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
        weight_map = index["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        report.problems.append(Problem(INDEX_NAME, "not a valid index (needs a JSON object 'weight_map'); download it again"))
        return
    by_shard: dict[str, set[str]] = {}
    for tensor, shard in weight_map.items():
        by_shard.setdefault(shard, set()).add(tensor)
    for shard in sorted(by_shard):
        path = directory / shard
        if not path.exists():
            report.problems.append(
                Problem(shard, f"missing: the index assigns {len(by_shard[shard])} tensors to it; copy this file")
            )
            continue
        info, problems = inspect_shard(path, shard)
        report.problems.extend(problems)
        if info is None:
            continue
        report.shards.append(info)
        have, want = set(info.tensors), by_shard[shard]
        if have != want:
            extra, lacking = sorted(have - want), sorted(want - have)
            parts = []
            if lacking:
                parts.append(f"lacks {len(lacking)} tensor(s) the index puts here (e.g. '{lacking[0]}')")
            if extra:
                parts.append(f"holds {len(extra)} tensor(s) the index does not put here (e.g. '{extra[0]}')")
            report.problems.append(
                Problem(shard, "tensor names do not match the index: " + "; ".join(parts) + "; this file belongs to another checkpoint or revision")
            )
    for stray in _stray_shards(directory, by_shard):
        report.problems.append(Problem(stray, "stray shard not named in the index; remove it or replace the index"))
    total = (index.get("metadata") or {}).get("total_size")
    missing_any = any(not (directory / s).exists() for s in by_shard)
    if isinstance(total, int) and not missing_any and len(report.shards) == len(by_shard):
        if total != report.data_bytes:
            report.problems.append(
                Problem(INDEX_NAME, f"metadata.total_size is {total} but the shards hold {report.data_bytes} data bytes")
            )


# --- sha256 manifest -------------------------------------------------------------


def sha256_file(path: Path, chunk: int = 8 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk)
            if not block:
                break
            digest.update(block)
    return digest.hexdigest()


def manifest_files(directory: Path) -> list[str]:
    """What a manifest covers: weights, index, configs and tokenizer files."""
    keep = []
    for p in sorted(directory.iterdir()):
        if p.is_file() and p.name != MANIFEST_NAME and (p.suffix in (".safetensors", ".json", ".model", ".py", ".txt")):
            keep.append(p.name)
    return keep


def write_manifest(directory: Path, on_file: Callable[[str], None] | None = None) -> Path:
    """Write ``checkpoint.sha256`` in ``sha256sum`` format (so ``sha256sum -c`` can read it too)."""
    directory = Path(directory)
    lines = []
    for name in manifest_files(directory):
        if on_file:
            on_file(name)
        lines.append(f"{sha256_file(directory / name)}  {name}\n")
    out = directory / MANIFEST_NAME
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    tmp.write_text("".join(lines), encoding="utf-8")
    tmp.replace(out)
    return out


def read_manifest(path: Path) -> dict[str, str]:
    entries: dict[str, str] = {}
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split(None, 1)
        if len(parts) != 2 or len(parts[0]) != 64:
            raise ValueError(f"{path.name} line {n} is not '<sha256>  <file>'")
        entries[parts[1].lstrip("*").strip()] = parts[0].lower()
    return entries


def verify_manifest(directory: Path, on_file: Callable[[str], None] | None = None) -> list[Problem]:
    directory = Path(directory)
    try:
        entries = read_manifest(directory / MANIFEST_NAME)
    except ValueError as exc:
        return [Problem(MANIFEST_NAME, f"{exc}; rewrite it with --write-manifest")]
    problems = []
    for name, want in entries.items():
        path = directory / name
        if not path.exists():
            problems.append(Problem(name, f"listed in {MANIFEST_NAME} but missing; copy this file"))
            continue
        if on_file:
            on_file(name)
        got = sha256_file(path)
        if got != want:
            problems.append(
                Problem(name, f"sha256 {got[:12]}… differs from {MANIFEST_NAME} ({want[:12]}…); download this file again")
            )
    return problems


def run_preflight(
    directory: Path | str,
    *,
    manifest: str = "verify",
    on_file: Callable[[str], None] | None = None,
) -> CheckpointReport:
    """Integrity check plus the manifest step.

    ``manifest``: "verify" (check it when present), "write" (write one after a
    clean check), "skip" (never hash; what ``serve`` uses, since hashing hundreds
    of GiB would cost more than the load it protects).
    """
    report = check_checkpoint(directory)
    directory = Path(directory)
    if not report.layout:
        return report
    if manifest == "skip":
        report.manifest = "skipped" if (directory / MANIFEST_NAME).exists() else "absent"
    elif manifest == "write":
        if report.ok:
            write_manifest(directory, on_file)
            report.manifest = "written"
        else:
            report.manifest = "absent"
    elif (directory / MANIFEST_NAME).exists():
        problems = verify_manifest(directory, on_file)
        report.problems.extend(problems)
        report.manifest = "mismatch" if problems else "verified"
    return report


def looks_like_local_checkpoint(model: str | None) -> bool:
    """Preflight applies only to a local directory (not a hub name or a path inside a container)."""
    return model is not None and bool(model) and Path(model).expanduser().is_dir()
