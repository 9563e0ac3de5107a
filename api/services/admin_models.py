"""Admin base-model operations: the registry's typed errors as API errors (the param they name)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.orm import Session

from api.errors import APIError
from api.schemas.admin import BaseModelAdminObject, RegisterBaseModelRequest
from lorasp_service import base_models, registry
from lorasp_service.base_models import (
    BaseModelError,
    BaseModelInUseError,
    UnknownBaseModelError,
)
from lorasp_service.model_registration import Registration, register
from lorasp_service.settings import Settings
from lorasp_service.storage import BlobStorage

# Every registration refusal is a 400 (a name already taken included: the request is what is wrong);
# 409 is kept for removing a model that jobs or adapters still use (the state may change).
_STATUS: dict[type[BaseModelError], int] = {
    UnknownBaseModelError: 404,
    BaseModelInUseError: 409,
}


@contextmanager
def registry_errors() -> Iterator[None]:
    try:
        yield
    except BaseModelError as error:
        status = _STATUS.get(type(error), 400)
        message = str(error)
        raise APIError(
            status, f"{message[:1].upper()}{message[1:]}.", param=error.param, code=error.code
        ) from error


def list_base_models(session: Session) -> list[BaseModelAdminObject]:
    return [BaseModelAdminObject.of(row) for row in base_models.all_models(session)]


def register_base_model(
    settings: Settings, storage: BlobStorage, request: RegisterBaseModelRequest
) -> BaseModelAdminObject:
    with registry_errors():
        row = register(settings, storage, Registration(**request.model_dump()))
    return BaseModelAdminObject.of(row)


def remove_base_model(session: Session, storage: BlobStorage, name: str) -> None:
    with registry_errors():
        keys = base_models.remove_model(session, storage, name)
    session.commit()
    registry.delete_blobs(storage, keys)
