"""What each client subcommand does: one function per command, taking the parsed arguments and the
connection and returning the exit status."""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lorasp_client.connection import ClientError, Connection, check_response
from lorasp_client.events import follow_events
from lorasp_client.follow import follow_job
from lorasp_client.output import as_dict, print_object, print_table, when

FILE_COLUMNS = ("id", "filename", "bytes", "purpose", "status", "created_at")
JOB_COLUMNS = ("id", "status", "model", "fine_tuned_model", "created_at")
MODEL_COLUMNS = ("id", "owned_by", "created")


def files_upload(args: argparse.Namespace, conn: Connection) -> int:
    path = Path(args.file)
    if not path.is_file():
        raise ClientError(f"No such file: {path}", param="FILE")
    with path.open("rb") as handle:
        uploaded = conn.openai().files.create(file=(path.name, handle), purpose=args.purpose)
    item = as_dict(uploaded)
    print(json.dumps(item, indent=2) if args.json else item["id"])
    return 0


def files_list(args: argparse.Namespace, conn: Connection) -> int:
    rows = [as_dict(item) for item in conn.openai().files.list()]
    print_table(rows, FILE_COLUMNS, args.json)
    return 0


METHODS = ("lorasp", "supervised", "dpo")
# A hyperparameter only one method has: giving it alone picks that method, with another it is an error.
METHOD_ONLY = {
    "rank": ("lorasp", "--rank"),
    "processes": ("lorasp", "--processes"),
    "beta": ("dpo", "--beta"),
}


def _hyperparameters(args: argparse.Namespace) -> dict[str, Any]:
    chosen = {
        "n_epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate_multiplier": args.learning_rate_multiplier,
        "rank": args.rank,
        "processes": args.processes,
        "beta": args.beta,
    }
    return {name: value for name, value in chosen.items() if value is not None}


def _method(args: argparse.Namespace, hyperparameters: dict[str, Any]) -> str | None:
    implied = {METHOD_ONLY[name] for name in hyperparameters if name in METHOD_ONLY}
    if len(implied) > 1:
        flags = " and ".join(sorted(flag for _, flag in implied))
        raise ClientError(f"{flags} belong to different methods: give one of them.", sorted(implied)[0][1])
    method: str | None = args.method
    for owner, flag in implied:
        if method is not None and method != owner:
            raise ClientError(f"{flag} is a {owner} setting: use --method {owner} (or leave it out).", flag)
        method = owner
    if hyperparameters and method is None:
        method = "supervised"
    return method


def job_body(args: argparse.Namespace) -> dict[str, Any]:
    """The create request: the method block only when a method or a hyperparameter was given, as the
    API takes it (`{"type": "dpo", "dpo": {"hyperparameters": {"beta": ...}}}`)."""
    body: dict[str, Any] = {"model": args.model, "training_file": args.file}
    for name in ("validation_file", "suffix", "seed"):
        if getattr(args, name) is not None:
            body[name] = getattr(args, name)
    hyperparameters = _hyperparameters(args)
    method = _method(args, hyperparameters)
    if method is not None:
        body["method"] = {"type": method, method: {"hyperparameters": hyperparameters}}
    return body


def jobs_create(args: argparse.Namespace, conn: Connection) -> int:
    body = job_body(args)
    job = as_dict(conn.openai().post("/fine_tuning/jobs", body=body, cast_to=dict))
    if args.follow:
        print(f"created {job['id']}" if not args.json else json.dumps(job), flush=True)
        with conn.http() as http:
            return follow_job(http, job["id"], args.json)
    print(json.dumps(job, indent=2) if args.json else job["id"])
    return 0


def jobs_list(args: argparse.Namespace, conn: Connection) -> int:
    page = conn.openai().fine_tuning.jobs.list(limit=args.limit)
    print_table([as_dict(job) for job in page.data], JOB_COLUMNS, args.json)
    return 0


def jobs_get(args: argparse.Namespace, conn: Connection) -> int:
    print_object(as_dict(conn.openai().fine_tuning.jobs.retrieve(args.id)), args.json)
    return 0


def jobs_move(args: argparse.Namespace, conn: Connection) -> int:
    """cancel / pause / resume: the job as the API returns it after the request."""
    jobs = conn.openai().fine_tuning.jobs
    move = {"cancel": jobs.cancel, "pause": jobs.pause, "resume": jobs.resume}[args.job_command]
    job = as_dict(move(args.id))
    print(json.dumps(job, indent=2) if args.json else f"{job['id']}: {job['status']}")
    return 0


def jobs_events(args: argparse.Namespace, conn: Connection) -> int:
    """Every event, oldest first, as a log; --stream keeps printing new ones until the job is final."""
    with conn.http() as http:
        events: Iterable[Any]
        if args.stream:
            events = follow_events(http, args.id)
        else:  # every page (the client pages on), newest first as listed: reversed for a log
            events = reversed(list(conn.openai().fine_tuning.jobs.list_events(args.id, limit=100)))
        for event in events:
            item = as_dict(event)
            if args.json:
                print(json.dumps(item), flush=True)
            else:
                print(f"{when(item['created_at'])}  {item['level']:<5}  {item['message']}", flush=True)
    return 0


def jobs_follow(args: argparse.Namespace, conn: Connection) -> int:
    with conn.http() as http:
        return follow_job(http, args.id, args.json)


def models_list(args: argparse.Namespace, conn: Connection) -> int:
    print_table([as_dict(model) for model in conn.openai().models.list()], MODEL_COLUMNS, args.json)
    return 0


def _download_name(content_disposition: str | None, adapter_id: str) -> str:
    match = re.search(r'filename="?([^";]+)"?', content_disposition or "")
    name = match.group(1) if match else re.sub(r"[^A-Za-z0-9._-]+", "-", adapter_id) + ".tar.gz"
    return Path(name).name  # never a path the server chose


def adapters_download(args: argparse.Namespace, conn: Connection) -> int:
    """The adapter's .tar.gz, checked against the server's X-Checksum-SHA256 before it is kept."""
    with conn.http() as http, http.stream("GET", f"/adapters/{args.id}/download") as response:
        check_response(response)
        target = Path(args.output or _download_name(response.headers.get("content-disposition"), args.id))
        if target.is_dir():
            target = target / _download_name(response.headers.get("content-disposition"), args.id)
        partial, digest = target.with_name(target.name + ".part"), hashlib.sha256()
        with partial.open("wb") as handle:
            for chunk in response.iter_bytes():
                digest.update(chunk)
                handle.write(chunk)
    expected = response.headers.get("x-checksum-sha256")
    if expected and expected != digest.hexdigest():
        partial.unlink()
        raise ClientError(f"The download's SHA-256 {digest.hexdigest()} is not the server's {expected}.")
    partial.replace(target)
    print(json.dumps({"path": str(target), "sha256": digest.hexdigest()}) if args.json else str(target))
    return 0
