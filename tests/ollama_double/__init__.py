"""A stand-in for an Ollama server, speaking its native wire format over real TCP.

Ollama cannot run on the test machines, so the proxy's tests talk to this double instead. It answers ``/``,
``/api/version``, ``/api/tags``, ``/api/show`` and ``/api/chat`` in Ollama's shapes, and reproduces the quirks the
proxy must cope with: tool calls only in the final chunk (native llama-server mode), ``{"error":…}`` lines
mid-stream, bytes split anywhere (even inside a character), a response head that arrives only with the first token,
and a limited number of parallel slots.

Modules, one concern each:

- ``script``: ``Reply`` (what to answer one chat request with), ``tool_call``, and the records tests read back;
- ``wire``: the chunks of a reply as Ollama serialises them, the ``stream:false`` aggregate, the prompt estimate;
- ``catalogue``: the installed models, Ollama's name rules, ``/api/tags`` and ``/api/show``;
- ``validation`` and ``grammar``: what Ollama refuses, where ccop's behaviour depends on it;
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
