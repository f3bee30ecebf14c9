"""Show a long pip build as a few progress lines instead of silent minutes.

Reads `pip install -v` output on stdin (the Makefile tees the whole of it to a
log file) and prints a line when the compile starts, then one per 10% of
CMake's own progress counter with the elapsed time. Compiler errors pass
through. pip's exit status reaches make through `set -o pipefail`.
"""

from __future__ import annotations

import re
import sys
import time

# Make prints "[ 42%] Building ...", Ninja "[120/287] Building ...".
_PROGRESS = re.compile(rb"^\s*\[\s*(\d+)(%|/(\d+))\]")


def _percent(line: bytes) -> int | None:
    match = _PROGRESS.match(line)
    if match is None:
        return None
    if match.group(3) is None:
        return int(match.group(1))
    return int(match.group(1)) * 100 // max(1, int(match.group(3)))


def main() -> int:
    started = time.monotonic()
    shown = -10
    building = False
    for line in sys.stdin.buffer:
        percent = _percent(line)
        if not building and (b"-- The C compiler" in line or percent is not None):
            building = True
            print("  compiling llama.cpp (about 5 minutes on 2 cores; once: pip caches the wheel)", flush=True)
        if percent is None:
            if line.startswith(b"ERROR") or b"error:" in line:
                sys.stdout.buffer.write(b"  " + line)
                sys.stdout.flush()
            continue
        if percent >= shown + 10:
            shown = percent - percent % 10
            minutes, seconds = divmod(int(time.monotonic() - started), 60)
            print(f"  {percent:3d}% after {minutes} m {seconds:02d} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
