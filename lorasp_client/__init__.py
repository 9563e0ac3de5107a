"""lorasp's client command line: files, jobs (with a live progress bar), chat, models and adapters, spoken
over HTTP only, through the official `openai` client and httpx.

It imports nothing of the server (lorasp_service, api, lorasp_core): it runs against any lorasp
deployment. `lorasp_service.cli` registers its subcommands (`add_commands`) and dispatches to them.
"""

from lorasp_client.commands import add_commands

__all__ = ["add_commands"]
