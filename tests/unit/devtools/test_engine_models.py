"""The tiny engine models' recipes: cache keys, the Harmony ids, the js-tiktoken ranks format."""

from __future__ import annotations

import json

from streams.devtools import engine_models as em


def test_a_recipe_hash_is_stable_and_follows_every_field() -> None:
    llama = em.llama_recipe("0" * 64)
    assert em.recipe_hash(llama) == em.recipe_hash(json.loads(json.dumps(llama, sort_keys=True)))
    assert em.recipe_hash(llama) == em.recipe_hash(dict(reversed(list(llama.items()))))
    changed = em.llama_recipe("0" * 64)
    changed["config"]["num_hidden_layers"] = 3
    assert em.recipe_hash(changed) != em.recipe_hash(llama)
    assert em.recipe_hash(em.llama_recipe("1" * 64)) != em.recipe_hash(llama)  # new training text, new model
    assert em.recipe_hash(em.gpt_oss_recipe()) != em.recipe_hash(llama)


def test_the_recipes_have_the_shapes_the_cpu_backend_serves() -> None:
    llama = em.llama_recipe("0" * 64)["config"]
    assert llama["hidden_size"] == 128 and llama["head_dim"] == 32  # the CPU attention has no head size 16
    assert llama["tie_word_embeddings"] is True
    oss = em.gpt_oss_recipe()["config"]
    assert (oss["num_local_experts"], oss["num_experts_per_tok"], oss["head_dim"]) == (4, 2, 64)
    assert oss["vocab_size"] == 201088


def test_harmony_special_tokens_sit_at_their_real_ids() -> None:
    ids = em.harmony_special_tokens()
    assert ids["<|start|>"] == 200006 and ids["<|channel|>"] == 200005 and ids["<|message|>"] == 200008
    assert ids["<|end|>"] == 200007 and ids["<|return|>"] == 200002 and ids["<|call|>"] == 200012
    assert ids["<|endoftext|>"] == 199999 and ids["<|reserved_201087|>"] == 201087
    assert sorted(ids.values()) == list(range(199998, 201088))


def test_js_tiktoken_ranks_become_a_tiktoken_file() -> None:
    source = ('export default {"pat_str":"\\\\s+|\\\\S+","special_tokens":{"<|endoftext|>":9},'
              '"bpe_ranks":"! 0 IQ== Ig==\\n! 5 Iw=="};')
    ranks, pattern = em.tiktoken_from_js_ranks(source)
    assert ranks == b"IQ== 0\nIg== 1\nIw== 5\n"
    assert pattern == "\\s+|\\S+"
