"""ccop: run Claude Code, and any Anthropic Messages API client, on models served by a local Ollama.

The public Python API is the token counter of the proxy's Rust core:

    >>> import ccop
    >>> ccop.count_tokens("hello world")
    4
"""

from __future__ import annotations

from ccop._core import __version__
from ccop.tokens import count_request_tokens, count_tokens

__all__ = ["__version__", "count_request_tokens", "count_tokens"]
