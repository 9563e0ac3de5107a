"""Job creation refuses tool-calling data for a base model whose chat template cannot render tools.

The upload is validated without a tokenizer (no model is known then), so it only counts the file's
tool examples (`stats.tool_examples`). Here the base model is known: its tokenizer (no weights) is
probed once. Training such a file on a template that drops tools would silently teach plain text.
"""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session

from api.errors import APIError
from lorasp_core.data import tool_support_problem
from lorasp_core.models import ModelUnavailableError
from lorasp_service import base_models
from lorasp_service.orm import BaseModelRecord, File
from lorasp_service.settings import Settings
from lorasp_service.storage import BlobStorage

logger = logging.getLogger(__name__)


def tool_examples(row: File) -> int:
    count = (row.stats or {}).get("tool_examples") or 0
    return count if isinstance(count, int) else 0


def check_tool_support(
    session: Session, settings: Settings, storage: BlobStorage, model: str, files: dict[str, File]
) -> None:
    """A 400 naming the file parameter when a file has tool calls and `model`'s template renders none."""
    with_tools = {param: row for param, row in files.items() if tool_examples(row) > 0}
    if not with_tools:
        return
    row = session.get(BaseModelRecord, model)
    if row is None:
        return  # resolving the base already refused unknown models
    try:
        tokenizer = base_models.load_tokenizer(settings, storage, row)
    except (ModelUnavailableError, OSError, ValueError):
        # the worker validates with the same tokenizer and fails the job with the same reason
        logger.warning("could not load the tokenizer of %s to check its tool support", model, exc_info=True)
        return
    problem = tool_support_problem(tokenizer)
    if problem is None:
        return
    param, file_row = sorted(with_tools.items())[0]
    raise APIError(
        400,
        f"File '{file_row.id}' has tool calls ({tool_examples(file_row)} examples), but {problem} "
        f"(model '{model}'). Fine-tune tool-calling data on a base model whose chat template renders "
        "tools, tool_calls and tool messages.",
        param=param,
        code="unsupported_tool_calls",
    )
