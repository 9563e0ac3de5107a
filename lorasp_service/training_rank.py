"""One of ranks 1..N-1 of a data-parallel job: `python -m lorasp_service.training_rank REQUEST.json`.

Started by rank 0 (`rank_processes.data_parallel_ranks`). It reads the job's inputs as rank 0 did and
trains its share of every batch; it writes nothing: rank 0 alone reports progress, checkpoints and
registers the adapter. It exits 0 when training ended (finished or cancelled by rank 0), non-zero on
any error (rank 0 then fails at its next collective).
"""

from __future__ import annotations

import argparse
import datetime
import logging
import sys
from dataclasses import replace
from pathlib import Path

from torch._C._distributed_c10d import TCPStore  # torch.distributed re-exports it untyped

from lorasp_core.distributed import init_rank
from lorasp_core.trainer import train
from lorasp_core.training_ops import resolve_device
from lorasp_service.rank_processes import HOST, RankRequest, ready_key
from lorasp_service.settings import Settings
from lorasp_service.storage import BlobStorage
from lorasp_service.training import build_configs, read_job_inputs, wrapped_model

log = logging.getLogger(__name__)


def run_rank(request: RankRequest, request_path: Path) -> None:
    settings = Settings(**request.settings)
    storage = BlobStorage(settings.blob_dir)
    inputs = read_job_inputs(settings, storage, request.job_id)
    resume_from = storage.path(request.resume_key) if request.resume_key else None
    lora, config = build_configs(inputs.job, settings, inputs.task, request_path.parent, resume_from)
    config = replace(config, checkpoint_dir=None, checkpoint_every_steps=None)  # rank 0 writes them
    model = wrapped_model(inputs, lora, resuming=resume_from is not None)
    timeout = settings.distributed_timeout_seconds
    store = TCPStore(
        HOST,
        request.port,
        request.world_size,
        is_master=False,
        timeout=datetime.timedelta(seconds=timeout),
    )
    store.set(ready_key(request.rank), "1")  # rank 0 waits for this, watching that we are alive
    with init_rank(request.rank, request.world_size, store, resolve_device(config.device), timeout):
        train(config, model, inputs.loaded.tokenizer, inputs.train_data, label_names=inputs.label_names)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("request", type=Path, help="the RankRequest JSON file rank 0 wrote")
    parser.add_argument("--job", help="the job id (shown in process listings; the request holds it too)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s rank %(process)d %(levelname)s %(message)s")
    request = RankRequest.read(args.request)
    run_rank(request, args.request)
    return 0


if __name__ == "__main__":
    sys.exit(main())
