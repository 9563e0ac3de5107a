"""`lorasp` command line: serve, worker, inference, migrate, admin create-key; and the client commands (files,
jobs, chat, adapters, models) that `lorasp_client` implements over HTTP.

Every server command reads the one `Settings` (environment variables `LORASP_*`, or `.env`); the client
commands read only their flags and LORASP_API_BASE / LORASP_API_KEY (see lorasp_client.connection).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from lorasp_client import add_commands as add_client_commands
from lorasp_client.commands import run as run_client_command
from lorasp_service.db import migrate, session_scope
from lorasp_service.settings import Settings, get_settings

log = logging.getLogger("lorasp")

DEFAULT_KEY_FILE = "default-api-key"
WORKER_STOP_GRACE_SECONDS = 10.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lorasp", description="LoRA-SP fine-tuning service")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the HTTP API (and, in the embedded default, a worker)")
    serve.add_argument("--no-worker", action="store_true", help="never start an embedded worker")
    worker = commands.add_parser("worker", help="run a Celery worker that trains jobs")
    worker.add_argument("--concurrency", type=int, default=None, help="default: LORASP_WORKER_CONCURRENCY")
    worker.add_argument("--loglevel", default="INFO")
    inference = commands.add_parser(
        "inference", help="run the serving engine as an inference process behind the API (internal HTTP API)"
    )
    inference.add_argument("--host", default=None, help="bind address (default: LORASP_INFERENCE_HOST)")
    inference.add_argument("--port", type=int, default=None, help="default: LORASP_INFERENCE_PORT")
    inference.add_argument(
        "--name", default=None, help="shown in its health and headers (default: host:port)"
    )
    commands.add_parser("migrate", help="bring the database schema up to date")
    admin = commands.add_parser("admin", help="administration")
    admin_commands = admin.add_subparsers(dest="admin_command", required=True)
    create_key = admin_commands.add_parser("create-key", help="create an API key (and the tenant if missing)")
    create_key.add_argument("--tenant", required=True, help="tenant name")
    create_key.add_argument("--admin", action="store_true", help="the key may also use /v1/admin/...")
    from lorasp_service import admin_models_cli

    admin_models_cli.add_parsers(admin_commands)
    add_client_commands(commands)
    return parser


def default_key_path(settings: Settings) -> Path:
    return settings.home / DEFAULT_KEY_FILE


def _write_secret(path: Path, text: str) -> None:
    """Write a file readable only by its owner, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def ensure_default_key(settings: Settings) -> str:
    """The embedded default API key: created once (keys are stored hashed), kept in <home>/default-api-key."""
    from lorasp_service.auth import create_tenant_with_key, tenant_for_key

    path = default_key_path(settings)
    with session_scope(settings) as session:
        if path.is_file():
            key = path.read_text().strip()
            if key and tenant_for_key(session, key) is not None:
                return key
        _, key = create_tenant_with_key(session, settings.default_tenant)
        session.commit()
    _write_secret(path, key)
    return key


def run_migrate(settings: Settings) -> int:
    migrate(settings)
    print(f"database is up to date ({_redacted(settings.database_url)})")
    return 0


def run_create_key(settings: Settings, tenant_name: str, admin: bool = False) -> int:
    from lorasp_service.auth import create_tenant_with_key

    migrate(settings)  # works before the server ever ran
    with session_scope(settings) as session:
        tenant, key = create_tenant_with_key(session, tenant_name, admin=admin)
        session.commit()
    kind = "an admin" if admin else "an API"
    print(f"created {kind} key for tenant {tenant.name!r} ({tenant.id}); it is shown only once:")
    print(key)
    return 0


def run_worker(settings: Settings, concurrency: int | None, loglevel: str) -> int:
    from lorasp_service.queue import worker_queue_names
    from worker.app import celery_app

    known = {resource_class.name for resource_class in settings.classes}
    unknown = [name for name in settings.worker_classes if name not in known]
    if unknown:
        print(
            f"error: LORASP_WORKER_QUEUES names {', '.join(unknown)}, not among the resource classes "
            f"({', '.join(sorted(known))}; set LORASP_RESOURCE_CLASSES)",
            file=sys.stderr,
        )
        return 2

    celery_app.worker_main(
        [
            "worker",
            "--pool=prefork",
            f"--concurrency={concurrency or settings.worker_concurrency}",
            # Resume queues first: jobs whose worker died run before jobs that never started.
            f"--queues={','.join(worker_queue_names(settings))}",
            f"--loglevel={loglevel}",
            "--hostname=lorasp@%h",
            "--without-gossip",
            "--without-mingle",
        ]
    )
    return 0


def start_worker_process() -> subprocess.Popen[bytes]:
    # Its own session: a Ctrl-C in the terminal reaches `serve`, which then stops the worker itself.
    return subprocess.Popen([sys.executable, "-m", "lorasp_service.cli", "worker"], start_new_session=True)


def stop_worker_process(process: subprocess.Popen[bytes]) -> None:
    """Warm shutdown first; a job still running after the grace period is killed and resumes on restart."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(WORKER_STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        log.warning("worker did not stop within %.0f s; killing it", WORKER_STOP_GRACE_SECONDS)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def run_serve(settings: Settings, no_worker: bool) -> int:
    import uvicorn

    from api.main import create_app

    migrate(settings)
    if settings.embedded:
        key = ensure_default_key(settings)
        print(f"default API key (also in {default_key_path(settings)}): {key}", flush=True)
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host=settings.host, port=settings.port))
    worker = None if no_worker or not settings.embedded else start_worker_process()

    def watch_worker() -> None:
        assert worker is not None
        code = worker.wait()
        if not server.should_exit:
            log.error("the embedded worker exited with status %s; stopping the server", code)
            server.should_exit = True

    if worker is not None:
        threading.Thread(target=watch_worker, name="worker-watch", daemon=True).start()
    # uvicorn shuts down gracefully on SIGINT/SIGTERM and then re-raises the signal; with the default
    # SIGTERM action the process would die there, before the `finally` that stops the worker.
    signal.signal(signal.SIGTERM, _raise_system_exit)
    try:
        server.run()  # returns after SIGINT / SIGTERM
    except KeyboardInterrupt:
        pass
    finally:
        server.should_exit = True
        if worker is not None:
            stop_worker_process(worker)
    return 0


def run_inference(settings: Settings, host: str | None, port: int | None, name: str | None) -> int:
    """One inference process: the ServingEngine behind the internal API the API's router calls."""
    import uvicorn

    from api.inference_tier.server import InferenceProcess, create_inference_app

    if settings.inference_secret is None or not settings.inference_secret.get_secret_value():
        print("error: set LORASP_INFERENCE_SECRET (the API's router sends the same one)", file=sys.stderr)
        return 2
    host, port = host or settings.inference_host, port or settings.inference_port
    process = InferenceProcess(settings, name or f"{host}:{port}")
    app = create_inference_app(settings, process)
    try:
        uvicorn.run(app, host=host, port=port, log_level="info")
    finally:
        process.engine.close()
    return 0


def _raise_system_exit(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _redacted(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.split("@", 1)[1]
    return scheme + sep + rest


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if hasattr(args, "client_action"):
        return run_client_command(args)  # talks HTTP only: no server settings, no logging set-up
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    if args.command == "serve":
        return run_serve(settings, args.no_worker)
    if args.command == "worker":
        return run_worker(settings, args.concurrency, args.loglevel)
    if args.command == "inference":
        return run_inference(settings, args.host, args.port, args.name)
    if args.command == "migrate":
        return run_migrate(settings)
    if args.command == "admin" and args.admin_command == "create-key":
        return run_create_key(settings, args.tenant, args.admin)
    if args.command == "admin" and args.admin_command == "models":
        from lorasp_service import admin_models_cli

        return admin_models_cli.run(settings, args)
    raise AssertionError(f"unhandled command {args.command!r}")


if __name__ == "__main__":
    sys.exit(main())
