"""Messages that leave the server carry no server paths: a tenant learns what failed, not where it lives.

Engine and OS errors name files by absolute path (`FileNotFoundError: [Errno 2] ... '/srv/lorasp/...'`).
Before such text becomes a job's error or an event, every absolute path is cut to its last component,
which still tells a user which file (`…/adapter_config.json`) without the deployment's layout.
"""

from __future__ import annotations

import re

# An absolute POSIX path of two or more components (a lone "/" or "a/b" stays as it is).
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~/-])/(?:[^\s/'\"`:,;()\[\]{}<>]+/)+([^\s/'\"`:,;()\[\]{}<>]*)")


def without_paths(text: str) -> str:
    """`text` with every absolute path replaced by `…/<its last component>`."""
    return _ABSOLUTE_PATH.sub(lambda match: f"…/{match.group(1)}", text)
