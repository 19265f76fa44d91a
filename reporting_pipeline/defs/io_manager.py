"""IO manager that streams batches between steps through files or S3, so steps may run in separate processes.

An asset returns a `BatchStream`; the IO manager writes it chunk by chunk and the next step reads it
back lazily, one chunk at a time: memory holds one batch, however many subscribers a shard has.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterable, Iterator

from dagster import ConfigurableIOManager, InputContext, OutputContext

from reporting_pipeline.objectstore import BlobStore, DirectoryBlobStore, S3BlobStore

from .partitions import split_partition_key
from .resources import S3Resource

MANIFEST = "manifest.json"


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


class _BatchIO:
    def _store(self) -> BlobStore:
        raise NotImplementedError

    def handle_output(self, context: OutputContext, obj) -> None:
        store, prefix = self._store(), _prefix(context)
        if not isinstance(obj, BatchStream):
            store.put(f"{prefix}/value.pkl", pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))
            store.put(f"{prefix}/{MANIFEST}", json.dumps({"value": True}).encode())
            return
        chunks = items = 0
        for batch in obj:
            store.put(f"{prefix}/chunk-{chunks:06d}.pkl", pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL))
            chunks += 1
            items += len(batch)
        # Written last: a reader sees either the previous complete output or this one, never half.
        store.put(f"{prefix}/{MANIFEST}", json.dumps({"chunks": chunks, "items": items}).encode())
        context.add_output_metadata({"batches": chunks, "items": items, **obj.stats})

    def load_input(self, context: InputContext):
        store, prefix = self._store(), _prefix(context)
        manifest = json.loads(store.get(f"{prefix}/{MANIFEST}"))
        if manifest.get("value"):
            return pickle.loads(store.get(f"{prefix}/value.pkl"))

        def chunks() -> Iterator[list]:
            for i in range(manifest["chunks"]):
                yield pickle.loads(store.get(f"{prefix}/chunk-{i:06d}.pkl"))

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
