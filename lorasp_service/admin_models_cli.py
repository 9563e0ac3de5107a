"""`lorasp admin models add | list | remove`: the operator's side of the base-model registry.

Registration errors print their message (naming the option at fault) and exit 2; a long copy into the
model store shows a tqdm progress bar.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from lorasp_service import base_models, registry
from lorasp_service.base_models import BaseModelError
from lorasp_service.db import migrate, session_scope
from lorasp_service.model_registration import Registration, register
from lorasp_service.model_store import Progress
from lorasp_service.settings import Settings
from lorasp_service.storage import BlobStorage

# Which `--option` each registry error's `param` is.
_OPTION = {"source": "--from", "name": "NAME", "chat_template": "--chat-template"}


def add_parsers(admin_commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    models = admin_commands.add_parser("models", help="register, list and remove base models")
    commands = models.add_subparsers(dest="models_command", required=True)
    add = commands.add_parser("add", help="register a base model (copied once into the model store)")
    add.add_argument("name", help="the `model` clients will send")
    add.add_argument("--from", dest="source", required=True, help="DIRECTORY, gguf:FILE or hf:ORG/REPO[@REV]")
    add.add_argument("--task", choices=["causal-lm", "seq-cls"], default=None, help="default: from config")
    add.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    add.add_argument("--max-length", type=int, default=None, help="default: the config's positions")
    add.add_argument(
        "--chat-template", type=Path, default=None, help="a Jinja file overriding the tokenizer's"
    )
    add.add_argument("--target-modules", default=None, help="comma-separated default LoRA targets")
    add.add_argument("--tenant", default=None, help="make it private to this tenant (by name)")
    commands.add_parser("list", help="list every registered base model")
    remove = commands.add_parser("remove", help="remove a base model no job or fine-tuned model uses")
    remove.add_argument("name")


def run(settings: Settings, args: argparse.Namespace) -> int:
    migrate(settings)  # works before the server ever ran
    storage = BlobStorage(settings.blob_dir)
    try:
        if args.models_command == "add":
            return _add(settings, storage, args)
        if args.models_command == "list":
            return _list(settings)
        if args.models_command == "remove":
            with session_scope(settings) as session:
                keys = base_models.remove_model(session, storage, args.name)
                session.commit()
            registry.delete_blobs(storage, keys)
            print(f"removed base model {args.name!r}")
            return 0
    except BaseModelError as error:
        option = _OPTION.get(error.param, f"--{error.param.replace('_', '-')}")
        print(f"lorasp: error ({option}): {error}", file=sys.stderr)
        return 2
    raise AssertionError(f"unhandled models command {args.models_command!r}")


def _add(settings: Settings, storage: BlobStorage, args: argparse.Namespace) -> int:
    template = None
    if args.chat_template is not None:
        try:
            template = args.chat_template.read_text(encoding="utf-8")
        except OSError as error:
            print(
                f"lorasp: error (--chat-template): cannot read {args.chat_template}: {error}", file=sys.stderr
            )
            return 2
    targets = [name.strip() for name in args.target_modules.split(",")] if args.target_modules else None
    request = Registration(
        name=args.name,
        source=args.source,
        task=args.task,
        dtype=args.dtype,
        max_length=args.max_length,
        chat_template=template,
        target_modules=targets,
        tenant=args.tenant,
    )
    bars: list[Any] = []  # made at the first byte copied, so a refused source prints no bar
    try:
        row = register(settings, storage, request, _bar_progress(args.name, bars))
    finally:
        for bar in bars:
            bar.close()
    owner = f", private to {args.tenant}" if args.tenant else ""
    print(f"registered {row.name!r}: {row.task}, {row.description}, {row.bytes} bytes{owner} ({row.status})")
    return 0


def _bar_progress(name: str, bars: list[Any]) -> Progress:
    from tqdm import tqdm

    def report(done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(total=total, unit="B", unit_scale=True, desc=f"copying {name}", file=sys.stderr))
        bars[0].update(done - bars[0].n)

    return report


def _list(settings: Settings) -> int:
    with session_scope(settings) as session:
        rows = base_models.all_models(session)
    print(f"{'NAME':<32} {'TASK':<10} {'KIND':<10} {'STATUS':<12} {'OWNER':<20} DESCRIPTION")
    for row in rows:
        owner = row.owner_tenant_id or "deployment"
        print(
            f"{row.name:<32} {row.task:<10} {row.source_kind:<10} {row.status:<12} {owner:<20} "
            + row.description
        )
    return 0
