"""Whether this deployment can honour a job's `integrations` (checked before the job is created).

A W&B integration needs the `wandb` package (`pip install lorasp[wandb]`) and, unless runs are written
offline, the deployment's W&B API key: without either the job would train but log nowhere, so it is
refused up front with a 400 saying what is missing.
"""

from __future__ import annotations

import importlib.util

from api.errors import APIError
from api.schemas.job_integrations import Integration
from lorasp_service.settings import Settings


def wandb_installed() -> bool:
    """Module-level so that tests can stand in for a deployment without the extra."""
    return importlib.util.find_spec("wandb") is not None


def check_integrations(integrations: list[Integration] | None, settings: Settings) -> None:
    for index, integration in enumerate(integrations or []):
        param = f"integrations.{index}.type"
        if not wandb_installed():
            raise APIError(
                400,
                f"The '{integration.type}' integration needs the wandb package, which this deployment "
                "lacks: install lorasp[wandb] (pip install 'lorasp[wandb]').",
                param=param,
                code="integration_unavailable",
            )
        key = settings.wandb_api_key
        if settings.wandb_mode == "online" and (key is None or not key.get_secret_value()):
            raise APIError(
                400,
                f"The '{integration.type}' integration needs a W&B API key, and this deployment has "
                "none (LORASP_WANDB_API_KEY).",
                param=param,
                code="integration_unavailable",
            )
