"""A real pseudo-terminal for tests of interactive programs (Claude Code's TUI, the launcher's model choice).

pexpect runs the program in a pty; pyte, a VT100 emulator, keeps the screen the program drew, so a test reads what a
person would see rather than a stream of escape sequences.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import pexpect
import pyte

__all__ = ["Terminal"]

ROWS, COLUMNS = 50, 140


class Terminal:
    def __init__(self, command: str, args: Sequence[str], *, env: Mapping[str, str], cwd: Path) -> None:
        self.screen = pyte.Screen(COLUMNS, ROWS)
        self._stream = pyte.ByteStream(self.screen)
        # Everything the program wrote, for failure messages (the screen only keeps what is still shown).
        self.transcript = ""
        self.child = pexpect.spawn(
            command, list(args), env={"TERM": "xterm-256color", **env}, cwd=str(cwd), dimensions=(ROWS, COLUMNS)
        )

    def text(self) -> str:
        return "\n".join(line.rstrip() for line in self.screen.display)

    def pump(self, seconds: float) -> None:
        """Read what the program writes for `seconds` (or until it exits)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                data = self.child.read_nonblocking(65536, timeout=0.1)
            except pexpect.TIMEOUT:
                continue
            except pexpect.EOF:
                return
            self._stream.feed(data)
            self.transcript += data.decode(errors="replace")

    def wait_for(self, *texts: str, timeout: float = 30.0) -> str:
        """Wait until one of `texts` is on the screen; returns the one that appeared."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.text()
            for text in texts:
                if text in screen:
                    return text
            if not self.child.isalive() or time.monotonic() > deadline:
                break
            self.pump(0.2)
        raise AssertionError(f"none of {texts!r} appeared on the screen:\n{self.text()}")

    def send(self, keys: str) -> None:
        self.child.send(keys)

    def type_line(self, text: str) -> None:
        """Type `text` and Enter, as a person would (Claude Code treats a pasted text-plus-newline as a paste)."""
        self.child.send(text)
        self.pump(0.5)
        self.child.send("\r")

    def wait_exit(self, timeout: float = 30.0) -> int:
        """Read until the program exits; its exit status."""
        deadline = time.monotonic() + timeout
        while self.child.isalive() and time.monotonic() < deadline:
            self.pump(0.2)
        self.pump(0.2)
        self.child.wait() if not self.child.isalive() else None
        assert not self.child.isalive(), f"still running after {timeout:g} s:\n{self.text()}"
        status: int = self.child.exitstatus if self.child.exitstatus is not None else -1
        return status

    def close(self) -> None:
        if self.child.isalive():
            self.child.terminate(force=True)
