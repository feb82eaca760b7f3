"""pymongo against a shard replica set of `shoal up` (3 members): server discovery finds one
primary and two secondaries from `hello`, write concerns are honoured, and a read with
secondary read preference is served by a secondary."""

import time

import pymongo
import pytest
from pymongo.read_preferences import Secondary
from pymongo.write_concern import WriteConcern


@pytest.fixture()
def client(cluster):
    with pymongo.MongoClient(cluster.uri, serverSelectionTimeoutMS=10_000) as client:
        yield client


def test_discovery_write_concern_and_secondary_reads(cluster):
    with pymongo.MongoClient(cluster.shard_uri(0), serverSelectionTimeoutMS=10_000) as rs:
        rs.admin.command("ping")
        assert rs.primary is not None
        assert len(rs.secondaries) == 2
        status = rs.admin.command("replSetGetStatus")
        states = sorted(m["stateStr"] for m in status["members"])
        assert states == ["PRIMARY", "SECONDARY", "SECONDARY"]

        coll = rs.rsdb.get_collection("c", write_concern=WriteConcern(w=3, wtimeout=10_000))
        coll.insert_one({"_id": 1, "v": "all three"})
        assert rs.rsdb.c.find_one({"_id": 1})["v"] == "all three"

        secondary = rs.rsdb.get_collection("c", read_preference=Secondary())
        # w: 3 means every member holds it; each applies it once the commit reaches it.
        for _ in range(100):
            found = secondary.find_one({"_id": 1})
            if found:
                break
            time.sleep(0.05)
        assert found["v"] == "all three"

        bad = rs.rsdb.get_collection("c", write_concern=WriteConcern(w="noSuchTag"))
        try:
            bad.insert_one({"_id": 2})
            raise AssertionError("a write concern naming an unknown tag was accepted")
        except pymongo.errors.WriteConcernError as error:
            assert error.code == 100
        except pymongo.errors.OperationFailure as error:
            assert error.code == 100


def test_retryable_batches_apply_every_statement(cluster, client):
    """One retryable command whose statements reach the same shard in several requests (updates
    go one statement per request; ordered inserts alternate shards) applies every statement:
    the shard's retry records are per batch, not per command."""
    from pymongo import UpdateOne

    admin = client.admin
    admin.command("enableSharding", "rb")
    admin.command("shardCollection", "rb.c", key={"k": 1})
    admin.command("split", "rb.c", middle={"k": 100})
    lower = client.config.databases.find_one({"_id": "rb"})["primary"]
    upper = next(s["_id"] for s in admin.command("listShards")["shards"] if s["_id"] != lower)
    admin.command("moveChunk", "rb.c", find={"k": 100}, to=upper)
    coll = client.rb.c
    # Alternating shards: lower, upper, lower, upper.
    coll.insert_many([{"_id": i, "k": 50 + (i % 2) * 100, "n": 0} for i in range(4)], ordered=True)
    assert coll.count_documents({}) == 4
    result = coll.bulk_write([UpdateOne({"_id": i, "k": 50 + (i % 2) * 100}, {"$inc": {"n": 1}}) for i in range(4)])
    assert result.modified_count == 4
    assert sorted(d["n"] for d in coll.find({})) == [1, 1, 1, 1]
