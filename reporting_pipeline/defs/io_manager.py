"""IO manager that streams batches between steps through files or S3, so steps may run in separate processes.

An asset returns a `BatchStream`; the IO manager writes it chunk by chunk and the next step reads it
back lazily, one chunk at a time: memory holds one batch, however many subscribers a shard has.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterable, Iterator

from botocore.exceptions import ClientError
from dagster import ConfigurableIOManager, InputContext, OutputContext

from reporting_pipeline.objectstore import BlobStore, DirectoryBlobStore, S3BlobStore

from .partitions import split_partition_key
from .resources import S3Resource

MANIFEST = "manifest.json"
LATEST = "latest.json"


class BatchStream:
    """An iterable of batches (lists), consumed once; `stats` collects counts while it is consumed."""

    def __init__(self, batches: Iterable[list], stats: dict | None = None):
        self._batches = batches
        self.stats = stats if stats is not None else {}

    def __iter__(self) -> Iterator[list]:
        return iter(self._batches)


def _prefix(context: InputContext | OutputContext) -> str:
    path = "/".join(context.asset_key.path)
    if not context.has_asset_partitions:
        return path
    week, shard = split_partition_key(context.asset_partition_key)
    return f"{path}/week={week}/shard={shard}"


def _run_id(context: InputContext | OutputContext) -> str | None:
    try:
        return context.step_context.run_id
    except Exception:  # loaded outside a run (e.g. a notebook): only the latest output is there
        return None


class _BatchIO:
    """Each run writes under its own folder, then points the partition's `latest` at it.

    Two runs of the same partition at once (a double launch, a retry racing a redrive) then never
    mix their chunks: a step reads its own run's upstream output, or else the latest complete one.
    """

    def _store(self) -> BlobStore:
        raise NotImplementedError

    def handle_output(self, context: OutputContext, obj) -> None:
        store, prefix = self._store(), _prefix(context)
        run_dir = f"{prefix}/runs/{context.run_id}"
        if isinstance(obj, BatchStream):
            chunks = items = 0
            for batch in obj:
                store.put(f"{run_dir}/chunk-{chunks:06d}.pkl", pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL))
                chunks += 1
                items += len(batch)
            manifest = {"run_id": context.run_id, "chunks": chunks, "items": items}
            context.add_output_metadata({"batches": chunks, "items": items, **obj.stats})
        else:
            store.put(f"{run_dir}/value.pkl", pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))
            manifest = {"run_id": context.run_id, "value": True}
        # Manifests are written last: a reader sees a complete output or none.
        data = json.dumps(manifest).encode()
        store.put(f"{run_dir}/{MANIFEST}", data)
        store.put(f"{prefix}/{LATEST}", data)

    def load_input(self, context: InputContext):
        store, prefix = self._store(), _prefix(context)
        manifest = None
        run_id = _run_id(context)
        if run_id:
            try:
                manifest = json.loads(store.get(f"{prefix}/runs/{run_id}/{MANIFEST}"))
            except (FileNotFoundError, KeyError, ClientError):
                manifest = None
        if manifest is None:
            manifest = json.loads(store.get(f"{prefix}/{LATEST}"))
        run_dir = f"{prefix}/runs/{manifest['run_id']}"
        if manifest.get("value"):
            return pickle.loads(store.get(f"{run_dir}/value.pkl"))

        def chunks() -> Iterator[list]:
            for i in range(manifest["chunks"]):
                yield pickle.loads(store.get(f"{run_dir}/chunk-{i:06d}.pkl"))

        return BatchStream(chunks(), {"items": manifest["items"]})


class FilesystemBatchIOManager(_BatchIO, ConfigurableIOManager):
    """Batches as files under `base_dir` (local development, single machine)."""

    base_dir: str

    def _store(self) -> BlobStore:
        return DirectoryBlobStore(self.base_dir)


class S3BatchIOManager(_BatchIO, ConfigurableIOManager):
    """Batches as encrypted S3 objects under `prefix` (production: run pods share no disk)."""

    s3: S3Resource
    prefix: str = "dagster-io"

    def _store(self) -> BlobStore:
        return S3BlobStore(self.s3.get_client(), self.s3.bucket, self.prefix, self.s3.encryption())
