"""Osprey's Kafka input stream, as its source reads a message (tests only).

Written from roostorg/osprey at 699ff64b6ef7891f948a921b05a5d47c91d743e8:
``osprey_worker/src/osprey/worker/sinks/sink/input_stream.py`` (``KafkaInputStream._gen``)::

    data = json.loads(record.value)
    timestamp = parse_go_timestamp(data['send_time'])
    action_data = data['data']
    action = Action(action_id=int(action_data['action_id']), action_name=action_data['action_name'],
                    data=action_data['data'], timestamp=timestamp)

``osprey_worker/src/osprey/worker/lib/utils/dates.py``: ``parse_go_timestamp`` is
``dateutil.parser.parse``. A message that raises is logged and skipped there: here it raises, so a
test fails on it. The checks Osprey makes later are added: ``action_id`` is a ``uint64`` in its protos
(execution_result.proto, verdicts.proto), ``data`` a ``dict[str, Any]`` its JsonData paths are
evaluated against, and a timestamp without an offset would be naive.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from dateutil import parser


@dataclass(frozen=True)
class Action:
    action_id: int
    action_name: str
    data: dict[str, Any]
    timestamp: datetime


def parse_action(value: bytes) -> Action:
    data = json.loads(value)
    timestamp = parser.parse(data["send_time"])
    action_data = data["data"]
    action = Action(action_id=int(action_data["action_id"]), action_name=action_data["action_name"],
                    data=action_data["data"], timestamp=timestamp)
    if not 0 <= action.action_id < 2**64:
        raise ValueError(f"action_id {action.action_id} does not fit Osprey's uint64")
    if not isinstance(action.action_name, str) or not isinstance(action.data, dict):
        raise TypeError("action_name must be a string and data an object")
    if timestamp.tzinfo is None:
        raise ValueError(f"send_time {data['send_time']!r} has no offset: Osprey would read a naive time")
    return action


def json_path(data: dict[str, Any], path: str) -> Any:
    """The few JSON paths the docs' SML rules use (``$.a.b``), as Osprey's JsonData reads them."""
    assert path.startswith("$.")
    value: Any = data
    for part in path[2:].split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value
