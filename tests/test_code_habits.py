"""The code's own housekeeping: nothing is computed that nobody reads."""

from __future__ import annotations

import dataclasses

from ccop.translate import ChatPlan


def test_chat_plan_carries_only_what_the_endpoint_reads() -> None:
    # Every field of the plan is read by messages.py; a field written and never read is dead weight to keep true.
    fields = {field.name for field in dataclasses.fields(ChatPlan)}
    assert fields == {"body", "ollama_model", "max_tokens", "stop_sequences", "stream", "notes", "offered_tools"}
