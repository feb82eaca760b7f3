"""pymongo against a shard replica set of `shoal up` (3 members): server discovery finds one
primary and two secondaries from `hello`, write concerns are honoured, and a read with
secondary read preference is served by a secondary."""

import time

import pymongo
from pymongo.read_preferences import Secondary
from pymongo.write_concern import WriteConcern


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
