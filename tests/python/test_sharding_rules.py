"""Sharding rules a client relies on, each from a bug a review found: documents never end up on a
shard that does not own their shard key, findAndModify with a sort picks the global first
document, transactions are refused rather than silently run outside a transaction, and chunk
commands name chunks the way MongoDB does.
"""

import pymongo
import pytest
from bson.max_key import MaxKey
from pymongo import ReturnDocument
from pymongo.errors import OperationFailure, WriteError


@pytest.fixture(scope="module")
def client(cluster):
    with pymongo.MongoClient(cluster.uri, serverSelectionTimeoutMS=10_000) as client:
        yield client


def shard_count(cluster, shard_index, db, coll, query):
    with pymongo.MongoClient(cluster.shard_uri(shard_index), serverSelectionTimeoutMS=10_000) as direct:
        return direct[db][coll].count_documents(query)


def sharded(client, db, key, split, move_find):
    """Shards db.c on `key`, splits at `split`, moves the upper chunk to the shard that is not the
    primary; returns (primary index, other index)."""
    client.admin.command("enableSharding", db)
    primary = client.config.databases.find_one({"_id": db})["primary"]
    other = "shard1" if primary == "shard0" else "shard0"
    client.admin.command("shardCollection", f"{db}.c", key=key)
    client.admin.command("split", f"{db}.c", middle=split)
    client.admin.command("moveChunk", f"{db}.c", find=move_find, to=other)
    return int(primary[-1]), int(other[-1])


def test_shard_key_changes_move_documents_and_never_misplace_them(cluster, client):
    low, high = sharded(client, "rules1", {"k": 1}, {"k": 50}, {"k": 50})
    c = client.rules1.c
    c.insert_many([{"_id": i, "k": i, "x": 0} for i in (3, 10, 60, 82)])

    # pymongo sends retryable writes, in which MongoDB moves the document to its new shard.
    assert c.update_one({"k": 3}, {"$set": {"k": 90}}).modified_count == 1
    assert c.find_one_and_update({"k": 90}, {"$set": {"k": 4}}, return_document=ReturnDocument.AFTER)["k"] == 4
    assert c.find_one_and_replace({"_id": 82}, {"k": 1.25})["k"] == 82
    assert c.find_one({"k": 1.25}) == {"_id": 82, "k": 1.25}
    # Upserts must pin their key, and may not insert a document with another key.
    with pytest.raises(WriteError) as error:
        c.update_one({"k": -5}, {"$setOnInsert": {"k": 95.5}}, upsert=True)
    assert error.value.code == 66
    with pytest.raises(OperationFailure) as error:
        c.find_one_and_update({"k": {"$in": [70.5, 71.5]}}, {"$set": {"y": 1}}, upsert=True)
    assert error.value.code == 61
    # Outside a retryable write MongoDB refuses the change.
    reply = client.rules1.command({"update": "c", "updates": [{"q": {"k": 10}, "u": {"$set": {"k": 99}}}]})
    assert reply["writeErrors"][0]["code"] == 20
    # An upsert inserting another key than its query's is ImmutableField, retryable or not.
    reply = client.rules1.command({"update": "c", "updates": [
        {"q": {"k": -7}, "u": {"$setOnInsert": {"k": 95.5}}, "upsert": True}]})
    assert reply["writeErrors"][0]["code"] == 66

    # What MongoDB allows still works: same key value, replacement keeping the key, pipelines.
    assert c.update_one({"_id": 10, "k": 10}, {"$set": {"k": 10}}).matched_count == 1
    assert c.replace_one({"_id": 10}, {"k": 10, "x": 5}).modified_count == 1
    assert c.update_one({"_id": 10, "k": 10}, [{"$set": {"kk": 1}}]).modified_count == 1
    assert c.find_one({"k": 10}) == {"_id": 10, "k": 10, "x": 5, "kk": 1}
    assert c.update_one({"k": -5}, {"$set": {"y": 1}}, upsert=True).upserted_id is not None

    # Every document is exactly once, where its key says.
    assert shard_count(cluster, low, "rules1", "c", {"k": {"$gte": 50}}) == 0
    assert shard_count(cluster, high, "rules1", "c", {"k": {"$lt": 50}}) == 0
    assert c.count_documents({}) == 5
    assert c.count_documents({"k": 4}) == 1
    assert c.count_documents({"k": 90}) == 0


def test_arrays_in_dotted_shard_keys_are_refused(client):
    client.admin.command("enableSharding", "rules2")
    client.admin.command("shardCollection", "rules2.c", key={"a.b": 1})
    with pytest.raises(WriteError) as error:
        client.rules2.c.insert_one({"_id": 1, "a": [{"b": 5}]})
    assert error.value.code == 2
    assert client.rules2.c.count_documents({}) == 0


def test_move_chunk_find_names_the_chunk_by_dotted_key(client):
    client.admin.command("enableSharding", "rules3")
    primary = client.config.databases.find_one({"_id": "rules3"})["primary"]
    other = "shard1" if primary == "shard0" else "shard0"
    client.admin.command("shardCollection", "rules3.c", key={"a.b": 1})
    client.admin.command("split", "rules3.c", middle={"a.b": 50})
    client.admin.command("moveChunk", "rules3.c", find={"a.b": 50}, to=other)
    uuid = client.config.collections.find_one({"_id": "rules3.c"})["uuid"]
    owners = sorted(chunk["shard"] for chunk in client.config.chunks.find({"uuid": uuid}))
    assert owners == sorted([primary, other])
    upper = client.config.chunks.find_one({"uuid": uuid, "min": {"a.b": 50}})
    assert upper["shard"] == other
    with pytest.raises(OperationFailure) as error:
        client.admin.command("moveChunk", "rules3.c", find={"x": 1}, to=primary)
    assert error.value.code == 61
    # A move to the owner is a no-op success, as in MongoDB.
    client.admin.command("moveChunk", "rules3.c", find={"a.b": 50}, to=other)


def test_sorted_find_and_modify_takes_the_global_first(client):
    sharded(client, "rules4", {"k": 1}, {"k": 50}, {"k": 50})
    c = client.rules4.c
    c.insert_many([{"_id": i, "k": i, "x": i % 7} for i in range(0, 100, 3)])
    doc = c.find_one_and_delete({"x": {"$gte": 0}}, sort=[("k", -1)])
    assert doc["k"] == 99
    doc = c.find_one_and_update({"x": {"$gte": 0}}, {"$set": {"t": 1}}, sort=[("k", 1)],
                                return_document=ReturnDocument.AFTER)
    assert doc["k"] == 0 and doc["t"] == 1


def test_transactions_are_refused_not_ignored(client):
    c = client.rules5.c
    c.insert_one({"_id": 0})
    with client.start_session() as session:
        session.start_transaction()
        with pytest.raises(OperationFailure) as error:
            c.insert_one({"_id": 1}, session=session)
        assert error.value.code == 20
        try:
            session.abort_transaction()
        except OperationFailure:
            pass
    assert c.count_documents({"_id": 1}) == 0


def test_shard_collection_creates_the_collection_and_key_index(client):
    client.admin.command("shardCollection", "rules6.d", key={"k": 1})
    assert "d" in client.rules6.list_collection_names()
    assert [ix["name"] for ix in client.rules6.d.list_indexes()] == ["_id_", "k_1"]
    client.admin.command("shardCollection", "rules6.u", key={"k": 1}, unique=True)
    key_index = [ix for ix in client.rules6.u.list_indexes() if ix["name"] == "k_1"][0]
    assert key_index["unique"] is True
    client.rules6.u.insert_one({"k": 1})
    with pytest.raises(WriteError) as error:
        client.rules6.u.insert_one({"k": 1})
    assert error.value.code == 11000


def test_writes_that_match_nothing_create_no_database(client):
    assert client.ghost.c.update_one({"a": 1}, {"$set": {"b": 1}}).matched_count == 0
    assert client.ghost.c.delete_many({}).deleted_count == 0
    assert client.ghost.c.find_one_and_update({"a": 1}, {"$set": {"b": 1}}) is None
    assert client.config.databases.find_one({"_id": "ghost"}) is None


def test_database_names_differing_only_in_case_are_refused(client):
    client.casedb.c.insert_one({"a": 1})
    with pytest.raises(OperationFailure) as error:
        client.CaseDB.c.insert_one({"a": 1})
    assert error.value.code == 13297


def test_error_codes(client):
    with pytest.raises(OperationFailure) as error:
        client.rules7.command({"insert": "c", "documents": []})
    assert error.value.code == 16
    with pytest.raises(OperationFailure) as error:
        client.rules7.command({"delete": "c", "deletes": [{"q": {}, "limit": 2}]})
    assert error.value.code == 9
    client.rules7.c.insert_many([{"i": i} for i in range(10)])
    assert client.rules7.command({"count": "c", "limit": -3})["n"] == 3
    client.admin.command("shardCollection", "rules7.s", key={"k": 1})
    with pytest.raises(OperationFailure) as error:
        client.admin.command("split", "rules7.s", middle={"k": MaxKey()})
    assert error.value.code == 2
    with pytest.raises(OperationFailure) as error:
        client.admin.command("shardCollection", "rules7.s", key={"other": 1})
    assert error.value.code == 23 and error.value.details["codeName"] == "AlreadyInitialized"
