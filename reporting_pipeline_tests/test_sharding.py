import json
import os
import subprocess
import sys
from collections import Counter

import mongomock
import pytest

from reporting_pipeline.sharding import VIRTUAL_BUCKETS, shard_bucket, shard_filter, shard_ids, shard_of

IDS = [f"sub_{i:05d}" for i in range(2000)]


def test_shard_ids_are_zero_padded_and_sortable():
    assert shard_ids(8) == ["00", "01", "02", "03", "04", "05", "06", "07"]
    ids = shard_ids(120)
    assert ids[0] == "000" and ids[-1] == "119" and ids == sorted(ids)
    with pytest.raises(ValueError):
        shard_ids(0)


def test_assignment_is_the_same_in_other_processes_whatever_their_hash_seed():
    here = {i: shard_of(i, 8) for i in IDS[:300]}
    code = (
        "import json,sys; from reporting_pipeline.sharding import shard_of; "
        "print(json.dumps({i: shard_of(i, 8) for i in json.loads(sys.stdin.read())}))"
    )
    for seed in ("0", "12345"):
        out = subprocess.run([sys.executable, "-c", code], input=json.dumps(IDS[:300]), capture_output=True,
                             text=True, check=True, env={**os.environ, "PYTHONHASHSEED": seed}).stdout
        assert json.loads(out) == here


def test_assignment_is_pinned_so_a_code_change_cannot_silently_reshuffle_subscribers():
    # sha256("sub_00000")[:8] as a big-endian integer, modulo 4096, modulo the shard count.
    import hashlib

    expected = int.from_bytes(hashlib.sha256(b"sub_00000").digest()[:8], "big") % VIRTUAL_BUCKETS
    assert shard_bucket("sub_00000") == expected
    assert shard_of("sub_00000", 8) == f"{expected % 8:02d}"


def test_shards_are_balanced():
    counts = Counter(shard_of(i, 8) for i in IDS)
    assert set(counts) == set(shard_ids(8))
    assert max(counts.values()) < 1.3 * len(IDS) / 8


@pytest.mark.parametrize("count", [1, 3, 8, 16])
def test_mongodb_filter_selects_each_subscription_in_exactly_one_shard(count):
    coll = mongomock.MongoClient().db.subscriptions
    coll.insert_many([{"_id": i, "shard_bucket": shard_bucket(i)} for i in IDS])
    seen = Counter()
    for shard in shard_ids(count):
        for doc in coll.find(shard_filter(shard, count)):
            assert shard_of(doc["_id"], count) == shard
            seen[doc["_id"]] += 1
    assert len(seen) == len(IDS) and set(seen.values()) == {1}
