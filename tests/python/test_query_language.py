"""Issue 4's pymongo acceptance: count_documents, find_one_and_update, bulk_write with a duplicate
key in ordered and unordered mode, create_index(unique=True) raising DuplicateKeyError, and a
multi-stage aggregate with $group and $sort over a sharded collection."""

import pymongo
import pytest
from pymongo import InsertOne, ReturnDocument, UpdateOne
from pymongo.errors import BulkWriteError, DuplicateKeyError


@pytest.fixture(scope="module")
def sales(cluster):
    with pymongo.MongoClient(cluster.uri, serverSelectionTimeoutMS=10_000) as client:
        client.admin.command("enableSharding", "ql")
        primary = client.config.databases.find_one({"_id": "ql"})["primary"]
        other = "shard1" if primary == "shard0" else "shard0"
        client.admin.command("shardCollection", "ql.sales", key={"k": 1})
        client.admin.command("split", "ql.sales", middle={"k": 500})
        client.admin.command("moveChunk", "ql.sales", find={"k": 500}, to=other)
        docs = [{"_id": i, "k": i, "region": ["north", "south", "east"][i % 3], "amount": i % 10}
                for i in range(1000)]
        client.ql.sales.insert_many(docs)
        yield client.ql.sales


def test_count_documents(sales):
    assert sales.count_documents({}) == 1000
    assert sales.count_documents({"region": "north", "amount": {"$gte": 5}}) == 167
    assert sales.count_documents({"k": {"$in": [1, 499, 500, 999, 5000]}}) == 4
    assert sales.count_documents({}, skip=990, limit=50) == 10


def test_find_one_and_update(sales):
    doc = sales.find_one_and_update({"k": 700}, {"$inc": {"amount": 100}, "$push": {"tags": "x"}},
                                    return_document=ReturnDocument.AFTER)
    assert doc["amount"] == 100 and doc["tags"] == ["x"]
    before = sales.find_one_and_update({"k": 701}, {"$set": {"seen": True}})
    assert "seen" not in before
    assert sales.find_one({"k": 701})["seen"] is True


def test_bulk_write_with_duplicate_keys(sales):
    ops = [InsertOne({"_id": 5000, "k": 5000}), InsertOne({"_id": 1, "k": 1}),
           InsertOne({"_id": 5001, "k": 5001}), UpdateOne({"k": 2}, {"$set": {"bulk": 1}})]
    with pytest.raises(BulkWriteError) as ordered:
        sales.bulk_write(ops, ordered=True)
    details = ordered.value.details
    assert details["nInserted"] == 1
    assert [(e["index"], e["code"]) for e in details["writeErrors"]] == [(1, 11000)]
    assert sales.find_one({"k": 2}).get("bulk") is None

    sales.delete_many({"k": {"$gte": 5000}})
    with pytest.raises(BulkWriteError) as unordered:
        sales.bulk_write(ops, ordered=False)
    details = unordered.value.details
    assert details["nInserted"] == 2 and details["nModified"] == 1
    assert [(e["index"], e["code"]) for e in details["writeErrors"]] == [(1, 11000)]


def test_unique_index_raises_duplicate_key(sales):
    sales.database.users.drop()
    users = sales.database.users
    users.insert_many([{"email": "a@x"}, {"email": "b@x"}])
    users.create_index("email", unique=True)
    with pytest.raises(DuplicateKeyError) as error:
        users.insert_one({"email": "a@x"})
    assert error.value.details["keyValue"] == {"email": "a@x"}
    users.insert_one({"email": "c@x"})
    # Building a unique index over existing duplicates fails the same way.
    dups = sales.database.dups
    dups.insert_many([{"e": 1}, {"e": 1}])
    with pytest.raises(DuplicateKeyError):
        dups.create_index("e", unique=True)


def test_aggregate_group_and_sort_over_shards(sales):
    result = list(sales.aggregate([
        {"$match": {"k": {"$lt": 1000}}},
        {"$group": {"_id": "$region", "total": {"$sum": "$amount"}, "n": {"$sum": 1}, "avg": {"$avg": "$amount"}}},
        {"$sort": {"total": -1, "_id": 1}},
        {"$project": {"region": "$_id", "_id": 0, "total": 1, "n": 1}},
    ]))
    expected = {}
    for doc in sales.find({"k": {"$lt": 1000}}):
        entry = expected.setdefault(doc["region"], [0, 0])
        entry[0] += doc["amount"]
        entry[1] += 1
    assert [(r["region"], r["total"], r["n"]) for r in result] == sorted(
        [(region, total, n) for region, (total, n) in expected.items()], key=lambda r: (-r[1], r[0]))
    assert sum(r["n"] for r in result) == 1000
