"""`lorasp chat MODEL`: a conversation with a model, tokens printed as they stream in."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from lorasp_client.connection import Connection

PROMPT = "> "


def _turn(client: Any, args: argparse.Namespace, messages: list[dict[str, str]]) -> str:
    """Send the conversation; print the reply as it streams; return it."""
    options: dict[str, Any] = {"max_tokens": args.max_tokens} if args.max_tokens is not None else {}
    stream = client.chat.completions.create(model=args.model, messages=messages, stream=True, **options)
    parts: list[str] = []
    for chunk in stream:
        for choice in chunk.choices:
            text = choice.delta.content or ""
            parts.append(text)
            print(text, end="", flush=True)
    print(flush=True)
    return "".join(parts)


def chat(args: argparse.Namespace, conn: Connection) -> int:
    client = conn.openai()
    messages: list[dict[str, str]] = []
    if args.system:
        messages.append({"role": "system", "content": args.system})
    if args.message is not None:
        messages.append({"role": "user", "content": args.message})
        _turn(client, args, messages)
        return 0
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"Chatting with {args.model}; an empty line or Ctrl-D ends.", file=sys.stderr)
    while True:
        try:
            line = input(PROMPT if interactive else "")
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            return 0
        if not line.strip():
            return 0
        messages.append({"role": "user", "content": line})
        messages.append({"role": "assistant", "content": _turn(client, args, messages)})
