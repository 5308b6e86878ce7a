"""Tiny models for the real vLLM engine (docs/development.md): random weights, tokenizers made here.

No weights can be downloaded, and none are needed: the engine tier checks the server's contract (status
codes, fields, finish reasons, metrics, the Harmony reasoning path), not the quality of the answers.

- ``llama``: ``LlamaForCausalLM``, hidden 128, 2 layers, 4 heads of 32 (the CPU attention backend has no
  head size 16), 2 KV heads, intermediate 256, tied embeddings, bf16; a byte-level BPE of about 2,000
  tokens trained with ``tokenizers`` on the starter policies and the demo's samples, with a ChatML-like
  chat template. About 0.5 M parameters: the fast one, for structured output.
- ``gpt-oss``: ``GptOssForCausalLM``, hidden 128, 2 layers (sliding, then full attention), 4 heads of
  64, 4 experts top-2, and the real ``o200k_harmony`` vocabulary (201,088 ids): the ``o200k_base`` ranks
  the npm package ``js-tiktoken`` ships, checked against the hash ``tiktoken`` expects, converted with
  ``transformers``' ``TikTokenConverter``, the Harmony special tokens at their real ids (``<|start|>``
  200006, ...). About 52 M parameters, almost all of them the two embedding matrices.

Two halves. The recipe (sizes, seeds, digests of the inputs) and its hash are plain data the launcher
(:mod:`streams.devtools.vllm_engine`) reads in the project's venv; a model lives in the cache under its
recipe's hash, so a changed recipe makes a new model and an unchanged one is never made twice. The
making runs this file as a script in the engine's own venv, which has torch, transformers and tokenizers
(``python -I engine_models.py JOB.json``): below the recipe part, nothing imports ``streams``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

MODEL_NAMES = ("llama", "gpt-oss")
# Bump when the making changes in a way the sizes do not show (a template, a file written): every cached
# model of an older maker is then made again.
MAKER_VERSION = 1

# The o200k_base ranks, from the npm package js-tiktoken (the registry's sha512 integrity of the tarball),
# and the sha256 tiktoken and openai-harmony expect of the rebuilt ``o200k_base.tiktoken``.
JS_TIKTOKEN_VERSION = "1.0.21"
JS_TIKTOKEN_INTEGRITY = ("sha512-biOj/6M5qdgx5TKjDnFT1ymSpM5tbd3ylwDtrQvFQSu0Z7bBYko2dF+W/aUkXUPuk6IVpRxk/3Q2"
                         "sHOzGlS36g==")
JS_TIKTOKEN_RANKS = "package/dist/ranks/o200k_base.js"
O200K_BASE_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"

LLAMA_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHATML_TEMPLATE = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] "
                   "+ '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
                   "{% endif %}")
# vLLM renders gpt-oss conversations with openai-harmony, not with this template; it is here so that
# transformers (and anyone reading the model directory) renders the same turns.
HARMONY_TEMPLATE = ("{% for message in messages %}{{ '<|start|>' + message['role'] + '<|message|>' "
                    "+ message['content'] + '<|end|>' }}{% endfor %}{% if add_generation_prompt %}"
                    "{{ '<|start|>assistant' }}{% endif %}")


def harmony_special_tokens() -> dict[str, int]:
    """o200k_harmony's special tokens past the 199,998 ranks of o200k_base (as tiktoken defines them)."""
    named = {199998: "<|startoftext|>", 199999: "<|endoftext|>", 200002: "<|return|>", 200003: "<|constrain|>",
             200005: "<|channel|>", 200006: "<|start|>", 200007: "<|end|>", 200008: "<|message|>",
             200012: "<|call|>"}
    return {named.get(i, f"<|reserved_{i}|>"): i for i in range(199998, 201088)}


def llama_recipe(corpus_sha256: str) -> dict[str, Any]:
    """The Llama-shaped model: sizes, seed, tokenizer settings and the training text's digest."""
    return {
        "name": "llama", "maker": MAKER_VERSION, "architecture": "LlamaForCausalLM", "seed": 0,
        "dtype": "bfloat16",
        "config": {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "head_dim": 32,
                   "num_key_value_heads": 2, "intermediate_size": 256, "tie_word_embeddings": True,
                   # long enough for the tier's slot-holding generations (tests/engine/test_server.py)
                   "max_position_embeddings": 32768, "rms_norm_eps": 1e-5},
        "tokenizer": {"kind": "byte-level-bpe", "vocab_size": 2000, "specials": list(LLAMA_SPECIALS),
                      "eos": "<|im_end|>", "pad": "<|endoftext|>", "corpus_sha256": corpus_sha256},
    }


def gpt_oss_recipe() -> dict[str, Any]:
    """The gpt-oss-shaped model: sizes, seed, and the vocabulary's provenance and digest."""
    return {
        "name": "gpt-oss", "maker": MAKER_VERSION, "architecture": "GptOssForCausalLM", "seed": 0,
        "dtype": "bfloat16",
        "config": {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "head_dim": 64,
                   "num_key_value_heads": 2, "intermediate_size": 128, "num_local_experts": 4,
                   "num_experts_per_tok": 2, "layer_types": ["sliding_attention", "full_attention"],
                   "sliding_window": 128, "vocab_size": 201088, "tie_word_embeddings": False,
                   "bos_token_id": 199998, "eos_token_id": 200002, "pad_token_id": 199999},
        "tokenizer": {"kind": "o200k_harmony", "js_tiktoken": JS_TIKTOKEN_VERSION,
                      "o200k_base_sha256": O200K_BASE_SHA256, "bos": "<|startoftext|>", "eos": "<|return|>",
                      "pad": "<|endoftext|>"},
        # The stop tokens of the released models' generation_config.json: <|return|>, <|endoftext|>, <|call|>.
        "generation_eos": [200002, 199999, 200012],
    }


def recipe_hash(recipe: dict[str, Any]) -> str:
    """A short, stable digest of a recipe (key order does not matter): the model's cache key."""
    canonical = json.dumps(recipe, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canonical).hexdigest()[:16]


def corpus_digest(paths: list[Path]) -> str:
    """sha256 over the training text's files, in the order given (their names do not count)."""
    digest = hashlib.sha256()
    for path in paths:
        data = path.read_bytes()
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()


def tiktoken_from_js_ranks(source: str) -> tuple[bytes, str]:
    """``js-tiktoken``'s ``dist/ranks/*.js`` module → (the ``.tiktoken`` file's bytes, the split pattern).

    The module exports ``{"pat_str", "special_tokens", "bpe_ranks"}``; ``bpe_ranks`` holds lines of
    ``! OFFSET TOKEN TOKEN ...`` (base64 tokens with consecutive ranks from OFFSET), the ``.tiktoken`` file
    one ``TOKEN RANK`` line per token in rank order."""
    body = json.loads(source[source.index("{"): source.rindex("}") + 1])
    ranks: dict[int, str] = {}
    for line in body["bpe_ranks"].split("\n"):
        if not line:
            continue
        _marker, offset, *tokens = line.split(" ")
        for i, token in enumerate(tokens):
            ranks[int(offset) + i] = token
    for token in ranks.values():
        base64.b64decode(token, validate=True)  # a corrupt file fails here, not in the converter
    text = "".join(f"{ranks[r]} {r}\n" for r in sorted(ranks))
    return text.encode(), str(body["pat_str"])


# ---- making (in the engine's venv) ---------------------------------------------------------------------

def _log(message: str) -> None:
    sys.stderr.write(f"engine-models: {message}\n")
    sys.stderr.flush()


def _make_llama(recipe: dict[str, Any], inputs: dict[str, Any], out: Path) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    spec = recipe["tokenizer"]
    files = [str(p) for p in inputs["corpus"]]
    if corpus_digest([Path(f) for f in files]) != spec["corpus_sha256"]:
        raise SystemExit("the training text changed between the recipe and the making")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=spec["vocab_size"], special_tokens=spec["specials"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train(files, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=spec["eos"], pad_token=spec["pad"],
                                   unk_token=None, bos_token=None, chat_template=CHATML_TEMPLATE,
                                   model_max_length=recipe["config"]["max_position_embeddings"])
    vocab = len(fast)
    _log(f"llama tokenizer: {vocab} tokens from {len(files)} files")
    torch.manual_seed(recipe["seed"])
    eos = fast.convert_tokens_to_ids(spec["eos"])
    pad = fast.convert_tokens_to_ids(spec["pad"])
    config = LlamaConfig(**recipe["config"], vocab_size=vocab, eos_token_id=eos, pad_token_id=pad,
                         bos_token_id=None)
    model = LlamaForCausalLM(config).to(getattr(torch, recipe["dtype"]))
    model.config.dtype = recipe["dtype"]
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = pad
    model.save_pretrained(out)
    fast.save_pretrained(out)
    _log(f"llama: {sum(p.numel() for p in model.parameters()):,} parameters")


def _make_gpt_oss(recipe: dict[str, Any], inputs: dict[str, Any], out: Path) -> None:
    import torch
    from transformers import GptOssConfig, GptOssForCausalLM, PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    spec = recipe["tokenizer"]
    with tarfile.open(inputs["js_tarball"]) as tar:
        member = tar.extractfile(inputs["js_member"])
        if member is None:
            raise SystemExit(f"{inputs['js_member']} is not a file in {inputs['js_tarball']}")
        ranks, pattern = tiktoken_from_js_ranks(member.read().decode("utf-8"))
    found = hashlib.sha256(ranks).hexdigest()
    if found != spec["o200k_base_sha256"]:
        raise SystemExit(f"o200k_base rebuilt from js-tiktoken has sha256 {found}, not {spec['o200k_base_sha256']}")
    vocab_file = out / "o200k_base.tiktoken"
    vocab_file.write_bytes(ranks)
    specials = harmony_special_tokens()
    started = time.monotonic()
    tok = TikTokenConverter(vocab_file=str(vocab_file), pattern=pattern,
                            extra_special_tokens=sorted(specials, key=specials.__getitem__)).converted()
    vocab_file.unlink()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=spec["bos"], eos_token=spec["eos"],
                                   pad_token=spec["pad"], chat_template=HARMONY_TEMPLATE,
                                   model_max_length=131072)
    wrong = {t: fast.convert_tokens_to_ids(t) for t, i in specials.items() if fast.convert_tokens_to_ids(t) != i}
    if wrong or len(fast) != recipe["config"]["vocab_size"]:
        raise SystemExit(f"special tokens off their o200k_harmony ids ({len(fast)} tokens): {list(wrong.items())[:5]}")
    _check_against_harmony(fast, "".join(Path(p).read_text(encoding="utf-8") for p in inputs["corpus"]))
    _log(f"gpt-oss tokenizer: {len(fast)} tokens in {time.monotonic() - started:.1f}s")
    torch.manual_seed(recipe["seed"])
    config = GptOssConfig(**recipe["config"])
    model = GptOssForCausalLM(config).to(getattr(torch, recipe["dtype"]))
    model.config.dtype = recipe["dtype"]
    model.generation_config.eos_token_id = recipe["generation_eos"]
    model.generation_config.bos_token_id = recipe["config"]["bos_token_id"]
    model.generation_config.pad_token_id = recipe["config"]["pad_token_id"]
    model.save_pretrained(out)
    fast.save_pretrained(out)
    _log(f"gpt-oss: {sum(p.numel() for p in model.parameters()):,} parameters")


def _check_against_harmony(fast: Any, sample: str) -> None:
    """The rebuilt tokenizer encodes as openai-harmony does (vLLM renders gpt-oss prompts with it)."""
    import openai_harmony as harmony

    enc = harmony.load_harmony_encoding(harmony.HarmonyEncodingName.HARMONY_GPT_OSS)
    probe = sample + "\nHarmony: <|start|>user<|message|>héllo wörld 1234 ¿qué? 日本語<|end|><|start|>assistant"
    ours = fast.encode(probe, add_special_tokens=False)
    theirs = enc.encode(probe, allowed_special="all")
    if ours != theirs:
        pairs = zip(ours, theirs, strict=False)
        first = next((i for i, (a, b) in enumerate(pairs) if a != b), min(len(ours), len(theirs)))
        raise SystemExit(f"the rebuilt tokenizer differs from openai-harmony's at token {first} "
                         f"({len(ours)} vs {len(theirs)} tokens)")


def make(job_path: Path) -> int:
    """Make the model a job file describes (``{"recipe", "inputs", "out"}``) into ``out``."""
    job = json.loads(job_path.read_text(encoding="utf-8"))
    recipe, out = job["recipe"], Path(job["out"])
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    if recipe["name"] == "llama":
        _make_llama(recipe, job["inputs"], out)
    elif recipe["name"] == "gpt-oss":
        _make_gpt_oss(recipe, job["inputs"], out)
    else:
        raise SystemExit(f"unknown model {recipe['name']!r}")
    (out / "recipe.json").write_text(json.dumps(recipe, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    _log(f"{recipe['name']} made in {time.monotonic() - started:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(make(Path(sys.argv[1])))
