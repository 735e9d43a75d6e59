"""A stand-in for an Ollama server, speaking its native wire format over real TCP.

Ollama cannot run on the test machines, so the proxy's tests talk to this double instead. It answers ``/``,
``/api/version``, ``/api/tags``, ``/api/show``, ``/api/ps`` and ``/api/chat`` in Ollama's shapes, and reproduces the
quirks the proxy must cope with: tool calls only in the final chunk (native llama-server mode), ``{"error":…}`` lines
mid-stream, bytes split anywhere (even inside a character), and a response head that arrives only with the first
token.

It also behaves like Ollama's scheduler: ``num_parallel`` slots per loaded model with waiting requests served strictly
in arrival order (a waiter whose client leaves drops out of the queue); a ``load_seconds`` load that holds back the
response head when a model is not loaded or is loaded with another ``num_ctx``; ``max_loaded_models`` with eviction
of an idle runner (a busy one is waited for); ``keep_alive`` (``done_reason:"load"``/``"unload"``, expiry) and
``GET /api/ps``. Tests can preload or unload models (``load``/``unload``), read when each stream got its slot
(``ChatStream.started_at``) and the most streams per model at once, take the host down and bring it back on the same
port (``stop``/``start``), and make it answer everything with an error status (``fail_with``).

Modules, one concern each:

- ``script``: ``Reply`` (what to answer one chat request with), ``tool_call``, and the records tests read back;
- ``wire``: the chunks of a reply as Ollama serialises them, the ``stream:false`` aggregate, the prompt estimate;
- ``catalogue``: the installed models, Ollama's name rules, ``/api/tags`` and ``/api/show``;
- ``validation`` and ``grammar``: what Ollama refuses, where ccop's behaviour depends on it (and ``keep_alive``);
- ``scheduler``: runners, the FIFO of pending requests, slots, load time, eviction, expiry and ``/api/ps``;
- ``server``: HTTP/1.1 on asyncio streams with h11, in a background thread;
- ``responses``: writing one chat response with its quirks;
- ``double``: ``OllamaDouble``, the public API.
"""

from .catalogue import ModelSpec, default_models
from .double import OllamaDouble
from .grammar import check_format as _check_format
from .script import ChatStream, RecordedRequest, Reply, make_tool_call, tool_call
from .wire import estimate_prompt_tokens

__all__ = [
    "ChatStream",
    "ModelSpec",
    "OllamaDouble",
    "RecordedRequest",
    "Reply",
    "_check_format",
    "default_models",
    "estimate_prompt_tokens",
    "make_tool_call",
    "tool_call",
]
