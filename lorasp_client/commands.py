"""The client's argparse subcommands (files, jobs, chat, adapters, models) and their dispatch, with the
one error policy: an API error prints its message and param on stderr and exits 1, no traceback."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

import httpx
import openai

from lorasp_client import actions
from lorasp_client.actions import METHODS
from lorasp_client.chat import chat
from lorasp_client.connection import ClientError, Connection, error_of_body

Action = Callable[[argparse.Namespace, Connection], int]
CLIENT_COMMANDS = frozenset({"files", "jobs", "chat", "adapters", "models"})


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--base-url",
        help="API base URL (default: LORASP_API_BASE, OPENAI_BASE_URL, else http://127.0.0.1:8000/v1)",
    )
    common.add_argument("--api-key", help="API key (default: LORASP_API_KEY, else OPENAI_API_KEY)")
    common.add_argument("--json", action="store_true", help="machine-readable output")
    return common


def _leaf(group: Any, name: str, action: Action, common: argparse.ArgumentParser, **kw: Any) -> Any:
    parser = group.add_parser(name, parents=[common], **kw)
    parser.set_defaults(client_action=action)
    return parser


def _add_job_commands(jobs: Any, common: argparse.ArgumentParser) -> None:
    create = _leaf(jobs, "create", actions.jobs_create, common, help="create a fine-tuning job")
    create.add_argument("--model", required=True, help="a base model of `lorasp models list`")
    create.add_argument("--file", required=True, help="training file id (file-...)")
    create.add_argument("--validation-file", dest="validation_file", help="validation file id")
    create.add_argument("--method", choices=METHODS, help="default: the server's (dpo: with --beta)")
    create.add_argument("--epochs", type=int)
    create.add_argument("--batch-size", dest="batch_size", type=int)
    create.add_argument("--learning-rate-multiplier", dest="learning_rate_multiplier", type=float)
    create.add_argument("--rank", type=int, help="LoRA rank (method lorasp)")
    create.add_argument(
        "--processes",
        type=int,
        help="data-parallel training processes, batch split between them (method lorasp)",
    )
    create.add_argument("--beta", type=float, help="DPO's KL penalty weight (method dpo)")
    create.add_argument("--suffix", help="part of the fine-tuned model's id")
    create.add_argument("--seed", type=int)
    create.add_argument("--follow", action="store_true", help="then follow it as `jobs follow` does")
    listed = _leaf(jobs, "list", actions.jobs_list, common, help="your jobs, newest first")
    listed.add_argument("--limit", type=int, default=20)
    for name, action, text in (
        ("get", actions.jobs_get, "one job"),
        ("cancel", actions.jobs_move, "cancel a job"),
        ("pause", actions.jobs_move, "pause a job (it keeps a checkpoint)"),
        ("resume", actions.jobs_move, "resume a paused job"),
        ("follow", actions.jobs_follow, "a live progress bar until the job ends; prints the model id"),
    ):
        _leaf(jobs, name, action, common, help=text).add_argument("id", help="job id (ftjob-...)")
    events = _leaf(jobs, "events", actions.jobs_events, common, help="a job's events, oldest first")
    events.add_argument("id", help="job id (ftjob-...)")
    events.add_argument("--stream", action="store_true", help="keep printing new events until the job ends")


def add_commands(commands: Any) -> None:
    """Register the client subcommands on `lorasp`'s subparsers."""
    common = _common()
    files = commands.add_parser("files", help="upload and list training files")
    file_commands = files.add_subparsers(dest="file_command", required=True)
    upload = _leaf(file_commands, "upload", actions.files_upload, common, help="upload a JSONL file")
    upload.add_argument("file", metavar="FILE")
    upload.add_argument("--purpose", default="fine-tune")
    _leaf(file_commands, "list", actions.files_list, common, help="your files")

    jobs = commands.add_parser("jobs", help="create, follow and manage fine-tuning jobs")
    _add_job_commands(jobs.add_subparsers(dest="job_command", required=True), common)

    talk = _leaf(commands, "chat", chat, common, help="chat with a model, streaming")
    talk.add_argument("model", metavar="MODEL")
    talk.add_argument("--message", help="one turn, non-interactive: print the reply and exit")
    talk.add_argument("--system", help="a system message first")
    talk.add_argument("--max-tokens", dest="max_tokens", type=int)

    adapters = commands.add_parser("adapters", help="fine-tuned adapters")
    adapter_commands = adapters.add_subparsers(dest="adapter_command", required=True)
    download = _leaf(
        adapter_commands,
        "download",
        actions.adapters_download,
        common,
        help="download an adapter as .tar.gz (PEFT format)",
    )
    download.add_argument("id", help="adapter id (the job's fine_tuned_model)")
    download.add_argument("-o", "--output", help="file or folder (default: the server's file name)")

    models = commands.add_parser("models", help="models you can fine-tune or chat with")
    _leaf(
        models.add_subparsers(dest="model_command", required=True),
        "list",
        actions.models_list,
        common,
        help="base and fine-tuned models",
    )


def _report(error: ClientError) -> int:
    print(f"error: {error}", file=sys.stderr)
    return 1


def run(args: argparse.Namespace) -> int:
    """Run a parsed client command; every failure the user can cause or meet is a message, exit 1."""
    action: Action = args.client_action
    try:
        conn = Connection.resolve(args.base_url, args.api_key)
    except ClientError as error:
        return _report(error)
    try:
        return action(args, conn)
    except ClientError as error:
        return _report(error)
    except openai.APIStatusError as error:
        return _report(error_of_body(error.body, f"HTTP {error.status_code}: {error.message}"))
    except (openai.APIConnectionError, httpx.HTTPError) as error:
        return _report(ClientError(f"Could not reach the server at {conn.base_url}: {error}"))
    except KeyboardInterrupt:
        return 130
