"""The issue's acceptance scenario, shorter, with pymongo: a cluster from `shoal up`, a collection
sharded on {k: 1}, split at 500 with the upper chunk moved to the other shard, CRUD through the
router, per-shard placement checked through each shard's own wire port, and DuplicateKey errors.
"""

import pymongo
import pytest
from pymongo.errors import BulkWriteError, OperationFailure

DB = "py"
COLL = "c"
NS = f"{DB}.{COLL}"
DOCS = 1000
MIDDLE = 500
GROUPS = 10


@pytest.fixture(scope="module")
def client(cluster):
    client = pymongo.MongoClient(cluster.uri, serverSelectionTimeoutMS=10_000)
    yield client
    client.close()


def shard_client(cluster, shard_name):
    index = int(shard_name.removeprefix("shard"))
    return pymongo.MongoClient(cluster.shard_uri(index), serverSelectionTimeoutMS=10_000)


def test_router_is_a_mongos(client):
    hello = client.admin.command("hello")
    assert hello["ok"] == 1
    assert hello["msg"] == "isdbgrid"
    shards = sorted(shard["_id"] for shard in client.admin.command("listShards")["shards"])
    assert shards == ["shard0", "shard1"]


def test_sharded_crud(cluster, client):
    admin = client.admin
    admin.command("enableSharding", DB)
    admin.command("shardCollection", NS, key={"k": 1})
    admin.command("split", NS, middle={"k": MIDDLE})
    lower = client.config.databases.find_one({"_id": DB})["primary"]
    upper = next(s["_id"] for s in admin.command("listShards")["shards"] if s["_id"] != lower)
    admin.command("moveChunk", NS, find={"k": MIDDLE}, to=upper)
    chunks = list(client.config.chunks.find({"uuid": client.config.collections.find_one({"_id": NS})["uuid"]}))
    assert sorted(chunk["shard"] for chunk in chunks) == sorted([lower, upper])

    coll = client[DB][COLL]
    result = coll.insert_many([{"k": k, "group": k % GROUPS} for k in range(DOCS)])
    assert len(result.inserted_ids) == DOCS
    assert coll.count_documents({}) == DOCS

    top = [d["k"] for d in coll.find({"group": {"$gte": 0}}).sort("k", -1).limit(5)]
    assert top == [999, 998, 997, 996, 995]

    one = coll.update_one({"k": 10}, {"$set": {"tag": "one"}})
    assert (one.matched_count, one.modified_count) == (1, 1)
    assert coll.find_one({"k": 10})["tag"] == "one"
    many = coll.update_many({"group": 3}, {"$inc": {"n": 1}})
    assert (many.matched_count, many.modified_count) == (100, 100)
    assert coll.count_documents({"n": 1}) == 100

    assert coll.delete_one({"k": 777}).deleted_count == 1
    assert coll.delete_many({"group": 5}).deleted_count == 100
    assert coll.count_documents({}) == DOCS - 101

    with shard_client(cluster, lower) as direct:
        on_lower = direct[DB][COLL]
        assert on_lower.count_documents({}) == 450
        assert on_lower.count_documents({"k": {"$gte": MIDDLE}}) == 0
    with shard_client(cluster, upper) as direct:
        on_upper = direct[DB][COLL]
        assert on_upper.count_documents({}) == 449
        assert on_upper.count_documents({"k": {"$lt": MIDDLE}}) == 0


def test_duplicate_key(client):
    coll = client[DB]["dups"]
    with pytest.raises(BulkWriteError) as failure:
        coll.insert_many([{"_id": 1}, {"_id": 2}, {"_id": 1}, {"_id": 3}])
    details = failure.value.details
    assert details["nInserted"] == 2
    assert [(e["index"], e["code"]) for e in details["writeErrors"]] == [(2, 11000)]
    assert coll.count_documents({}) == 2

    with pytest.raises(BulkWriteError) as failure:
        coll.insert_many([{"_id": 4}, {"_id": 1}, {"_id": 5}], ordered=False)
    assert failure.value.details["nInserted"] == 2
    assert coll.count_documents({}) == 4


def test_unknown_command(client):
    with pytest.raises(OperationFailure) as failure:
        client.admin.command("nosuchcommand")
    assert failure.value.code == 59


def test_catalog(client):
    assert DB in client.list_database_names()
    assert {COLL, "dups"} <= set(client[DB].list_collection_names())
    client[DB].drop_collection("dups")
    assert "dups" not in client[DB].list_collection_names()
