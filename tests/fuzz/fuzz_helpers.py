"""What the fuzz test shares with its fixtures, and the checks it leaves out (each with its reason).

An exclusion for a known defect names it; remove it once the defect's fix is merged.
"""

from __future__ import annotations

from dataclasses import dataclass

import schemathesis
from fastapi import FastAPI


@dataclass
class FuzzTarget:
    backend: str  # "sqlite" (the embedded default) or "postgres"
    app: FastAPI
    headers: dict[str, str]  # a tenant's Authorization header
    enqueued: list[str]  # job ids the API committed and would have sent to the workers


# Checks left out of the run:
# - positive_data_acceptance expects a 2xx for every schema-valid request, but a valid JSON shape can
#   name what does not exist or is not offered (model "0", an unknown base model, n > 1), which the API
#   rightly answers 400 naming the field. What this battery asserts is no 5xx and conformance.
# - negative_data_rejection expects a 4xx for every schema-violating request; but every case is sent
#   with the tenant's key, which overrides a case whose violation is a missing Authorization header,
#   so such a case is (rightly) answered 200 and reported as "invalid data accepted". The other
#   violations it mutates are unknown query parameters, which FastAPI (like OpenAI) ignores.
EXCLUDED_CHECKS = [
    schemathesis.checks.positive_data_acceptance,
    schemathesis.checks.negative_data_rejection,
]
