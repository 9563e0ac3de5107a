"""Webhooks: tenants' endpoints, job events signed as OpenAI signs them, and their delivery.

The job code calls only `emit_job_event(session, job_id, status)` where a job reaches a terminal status;
the API manages endpoints through `endpoints`; the worker's task runs `delivery.deliver_and_schedule`.
"""

from lorasp_service.webhooks.emit import (
    DELIVER_WEBHOOK_TASK,
    EVENT_TYPES,
    WebhookEventType,
    emit_job_event,
)

__all__ = ["DELIVER_WEBHOOK_TASK", "EVENT_TYPES", "WebhookEventType", "emit_job_event"]
