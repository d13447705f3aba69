"""The webhooks the benchmarks send: VAPI end-of-call reports grown to a chosen size.

A report grows the way real ones do, by conversation turns: each adds one entry to
`artifact.messages` and one line to `artifact.transcript`, so a 5 MB report is mostly
small JSON objects and strings, as costly to parse as a real one.
"""

from __future__ import annotations

import json

from relay.providers.samples import sample

#: Stands for the call id in a template; the load generators put a unique id there.
CALL_ID = "__CALL_ID__"
INGEST_BYTES = 7 * 1024
LARGE_BYTES = 5 * 1024 * 1024

_TURNS = (
    ("bot", "Of course. Could you tell me the name on the appointment and your date of birth?"),
    ("user", "Sure, it's Dana Whitfield, born March fourth, nineteen eighty-eight."),
    ("bot", "Thank you, Dana. I can see your cleaning on Tuesday at nine. Which day suits you?"),
    ("user", "Friday morning would be ideal, anything before eleven is fine for me."),
)


def report(size: int, call_id: str = CALL_ID) -> bytes:
    """A VAPI end-of-call report of at least `size` bytes (at most one turn more)."""
    document = json.loads(sample("vapi/end-of-call-report"))
    message = document["message"]
    message["call"]["id"] = call_id
    artifact = message["artifact"]
    time_ms, lines = artifact["messages"][-1]["time"], [artifact["transcript"]]
    text = json.dumps(document, ensure_ascii=False).encode()
    grown = 0
    while len(text) + grown < size:
        role, words = _TURNS[len(lines) % len(_TURNS)]
        time_ms += 4000
        turn = {"role": role, "message": words, "time": time_ms, "endTime": time_ms + 3500,
                "secondsFromStart": round(len(lines) * 4.0, 2), "duration": 3500}
        artifact["messages"].append(turn)
        lines.append(f"{'AI' if role == 'bot' else 'User'}: {words}")
        grown += len(json.dumps(turn, ensure_ascii=False)) + len(words) + 10
    artifact["transcript"] = "\n".join(lines)
    return json.dumps(document, ensure_ascii=False).encode()


def template(size: int) -> tuple[bytes, bytes]:
    """(prefix, suffix) of a report of about `size` bytes: prefix + call id + suffix."""
    prefix, _, suffix = report(size).partition(CALL_ID.encode())
    return prefix, suffix
