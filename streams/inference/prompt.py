"""Prompt rendering (docs/policies.md), pure functions.

Chat Completions layout prescribed by the model's guide: system message = policy text, user message
= the content. The policy always comes first so every request sharing a policy shares a cacheable
prefix on the replica (vLLM prefix caching). Content is never concatenated into the policy: text
that tries to instruct the model stays in the user turn (instruction hierarchy: developer > user).
Chats are rendered as a transcript so the model classifies the conversation instead of answering
it: one JSON object per turn, so no text inside a turn can open another (a line break in content is
``\n`` inside a JSON string, a quote is ``\"``). Control-token openers (``<|``, which starts every
special token of Harmony, ChatML and Llama 3) never reach the replica literally, in chats or text:
a tokenizer would read ``<|start|>`` in content as the real control token.
"""

from __future__ import annotations

import json
from typing import Any

from streams.policy.model import Policy
from streams.wire.events import ContentEvent

VERDICT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "violation": {"type": "integer", "enum": [0, 1]},
        "policy_category": {"type": ["string", "null"]},
        "rule_ids": {"type": "array", "items": {"type": "string"}},
        "confidence": {"type": ["string", "null"], "enum": ["low", "medium", "high", None]},
        "rationale": {"type": ["string", "null"]},
    },
    "required": ["violation", "policy_category"],
    "additionalProperties": False,
}


CHAT_HEADER = "Conversation to classify, one JSON object per message, oldest first:"
CONTROL_OPENER = "<|"
CONTROL_OPENER_SAFE = "<\uff5c"  # FULLWIDTH VERTICAL LINE: reads alike, is no tokenizer's control token


# json.dumps leaves these raw; each is escaped inside the JSON strings (the only place they can be):
# the control-token opener, and the line breaks beyond \n that some readers split lines on.
_JSON_UNSAFE = [(CONTROL_OPENER, "<\\u007c"), ("\x85", "\\u0085"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")]


def render_content(event: ContentEvent) -> str:
    """The user message for an event: its text, or a chat as a header line and one JSON object per
    message (``{"role": ..., "content": ...}``), with control-token openers made inert."""
    if event.kind == "chat" and event.messages:
        turns = (json.dumps({"role": m.role, "content": m.content}, ensure_ascii=False) for m in event.messages)
        rendered = "\n".join([CHAT_HEADER, *turns])
        for raw, escaped in _JSON_UNSAFE:  # "<\u007c" in a JSON string is "<|" again for a parser, never the token
            if raw in rendered:
                rendered = rendered.replace(raw, escaped)
        return rendered
    return inert(event.text or "")


def inert(text: str) -> str:
    """``text`` with every control-token opener ``<|`` written ``<\uff5c`` (a full-width bar): the
    words stay readable to the model, and no tokenizer of a Harmony, ChatML or Llama 3 model turns
    them into a turn boundary or a channel switch."""
    return text.replace(CONTROL_OPENER, CONTROL_OPENER_SAFE) if CONTROL_OPENER in text else text


def build_request(
    policy: Policy,
    content: str,
    *,
    model: str,
    reasoning_effort: str,
    structured_output: bool = False,
) -> dict[str, Any]:
    """OpenAI-compatible chat completions body for one (policy, content) pair.

    No ``max_tokens``: the model guide warns that capping output truncates reasoning and yields an
    empty label; effort is the lever for latency, sent as the ``reasoning_effort`` parameter.
    """
    body: dict[str, Any] = {
        "model": model,
        "messages": [
            {"role": "system", "content": policy.body},
            {"role": "user", "content": content},
        ],
        "reasoning_effort": reasoning_effort,
    }
    if structured_output and policy.meta.output == "json":
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "safeguard_verdict", "schema": VERDICT_SCHEMA, "strict": True},
        }
    return body


COMBINED_MARKER = "=== POLICY {id} ==="


def build_combined_request(
    policies: list[Policy],
    content: str,
    *,
    model: str,
    reasoning_effort: str,
) -> dict[str, Any]:
    """One request evaluating several policies (``policies.mode: combined``).

    The model's guide supports several policies in one prompt but reports a small accuracy loss,
    so this is opt-in. Each policy keeps its own text under a ``=== POLICY <id> ===`` marker; the
    answer is one JSON object keyed by policy id, each value a verdict object.
    """
    ids = [p.id for p in policies]
    header = (
        "# Multi-policy classification\n\n"
        "Evaluate the content against each policy below independently, as if it were the only policy. "
        "Answer with exactly one JSON object and nothing else, with one key per policy id "
        f"({', '.join(ids)}) and, as each value, that policy's verdict: "
        '{"violation": 0 or 1, "policy_category": "<rule id or null>", "rule_ids": ["<rule ids>"], '
        '"confidence": "low|medium|high", "rationale": "<one or two sentences>"}.\n'
    )
    sections = [f"\n{COMBINED_MARKER.format(id=p.id)}\n{p.body}" for p in policies]
    return {
        "model": model,
        "messages": [
            {"role": "system", "content": header + "".join(sections)},
            {"role": "user", "content": content},
        ],
        "reasoning_effort": reasoning_effort,
    }
