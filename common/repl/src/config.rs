//! The replica-set configuration document (`rs.conf()`): parsing and validation into members,
//! and the membership changes that turn one configuration into another. Pure logic, no I/O.

use std::collections::{BTreeMap, BTreeSet};

use bson::{Bson, Document, doc};
use shoal_common::{CommandError, ErrorCode};

use crate::types::{MemberNode, NodeId, node_id_for};

/// Voting members allowed, as in MongoDB.
pub const VOTERS_MAX: usize = 7;
/// Members allowed in all, as in MongoDB.
pub const MEMBERS_MAX: usize = 50;

/// A parsed configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct ReplConfig {
    /// `_id`: the replica-set name.
    pub set_name: String,
    /// Members by node id.
    pub members: BTreeMap<NodeId, MemberNode>,
}

fn invalid(message: impl Into<String>) -> CommandError {
    CommandError::new(ErrorCode::INVALID_REPLICA_SET_CONFIG, message)
}

fn number(value: &Bson) -> Option<f64> {
    match value {
        Bson::Int32(v) => Some(f64::from(*v)),
        Bson::Int64(v) => Some(*v as f64),
        Bson::Double(v) => Some(*v),
        _ => None,
    }
}

impl ReplConfig {
    /// Parses and validates `config` for replica set `expected_name`.
    pub fn parse(config: &Document, expected_name: &str) -> Result<ReplConfig, CommandError> {
        let set_name = config
            .get_str("_id")
            .map_err(|_| invalid("replica set config needs a string _id"))?;
        if set_name != expected_name {
            return Err(invalid(format!(
                "Attempting to initiate a replica set with name {set_name}, but command line reports {expected_name}; rejecting"
            )));
        }
        let entries = config
            .get_array("members")
            .map_err(|_| invalid("replica set config needs a members array"))?;
        if entries.is_empty() || entries.len() > MEMBERS_MAX {
            return Err(invalid(format!(
                "a replica set has 1 to {MEMBERS_MAX} members, not {}",
                entries.len()
            )));
        }
        let mut members = BTreeMap::new();
        let mut ids = BTreeSet::new();
        for entry in entries {
            let entry = entry
                .as_document()
                .ok_or_else(|| invalid("each member must be a document"))?;
            let member = parse_member(entry)?;
            if !ids.insert(member.id) {
                return Err(invalid(format!("duplicate member _id {}", member.id)));
            }
            let node = node_id_for(&member.host);
            if members.insert(node, member.clone()).is_some() {
                return Err(invalid(format!("duplicate member host {}", member.host)));
            }
        }
        let voters = members.values().filter(|m| m.votes > 0).count();
        if voters == 0 || voters > VOTERS_MAX {
            return Err(invalid(format!(
                "a replica set has 1 to {VOTERS_MAX} voting members, not {voters}"
            )));
        }
        if !members.values().any(MemberNode::electable) {
            return Err(invalid("no member of the configuration can become primary"));
        }
        Ok(ReplConfig {
            set_name: set_name.to_owned(),
            members,
        })
    }

    /// The configuration document `rs.conf()` shows.
    pub fn to_document(&self, version: i64, term: u64, election_timeout_ms: u64) -> Document {
        let mut members: Vec<&MemberNode> = self.members.values().collect();
        members.sort_by_key(|m| m.id);
        let members: Vec<Bson> = members
            .into_iter()
            .map(|m| {
                Bson::Document(doc! {
                    "_id": m.id,
                    "host": m.host.clone(),
                    "arbiterOnly": false,
                    "buildIndexes": true,
                    "hidden": m.hidden,
                    "priority": m.priority(),
                    "tags": {},
                    "secondaryDelaySecs": i64::from(m.secondary_delay_secs),
                    "votes": i32::from(m.votes),
                })
            })
            .collect();
        doc! {
            "_id": self.set_name.clone(),
            "version": version,
            "term": i64::try_from(term).unwrap_or(i64::MAX),
            "protocolVersion": 1_i64,
            "writeConcernMajorityJournalDefault": true,
            "members": members,
            "settings": {
                "chainingAllowed": false,
                "heartbeatIntervalMillis": 100_i64,
                "electionTimeoutMillis": i64::try_from(election_timeout_ms).unwrap_or(i64::MAX),
                "catchUpTimeoutMillis": -1_i64,
            },
        }
    }

    /// Voting members' node ids.
    pub fn voters(&self) -> BTreeSet<NodeId> {
        self.members
            .iter()
            .filter(|(_, m)| m.votes > 0)
            .map(|(id, _)| *id)
            .collect()
    }
}

fn parse_member(entry: &Document) -> Result<MemberNode, CommandError> {
    let id = match entry.get("_id").and_then(number) {
        Some(id) if (0.0..=255.0).contains(&id) && id.fract() == 0.0 => id as i32,
        _ => return Err(invalid("member _id must be a number from 0 to 255")),
    };
    let host = entry
        .get_str("host")
        .map_err(|_| invalid(format!("member {id} needs a host string")))?;
    if host.parse::<std::net::SocketAddr>().is_err() {
        return Err(invalid(format!(
            "member {id}: host '{host}' must be IP:PORT"
        )));
    }
    let mut member = MemberNode::voter(id, host);
    for (key, value) in entry {
        match key.as_str() {
            "_id" | "host" | "tags" | "buildIndexes" => {}
            "arbiterOnly" => {
                if value.as_bool() == Some(true) {
                    return Err(CommandError::new(
                        ErrorCode::INVALID_REPLICA_SET_CONFIG,
                        "arbiters hold no data and add no durability; Shoal has none (use a votes: 1 member)",
                    ));
                }
            }
            "priority" => match number(value) {
                Some(p) if (0.0..=1000.0).contains(&p) => {
                    member.priority_milli = (p * 1000.0).round() as u32;
                }
                _ => return Err(invalid(format!("member {id}: priority must be 0 to 1000"))),
            },
            "votes" => match number(value) {
                Some(v) if v == 0.0 || v == 1.0 => member.votes = v as u8,
                _ => return Err(invalid(format!("member {id}: votes must be 0 or 1"))),
            },
            "hidden" => {
                member.hidden = value
                    .as_bool()
                    .ok_or_else(|| invalid(format!("member {id}: hidden must be a boolean")))?;
            }
            "secondaryDelaySecs" | "slaveDelay" => match number(value) {
                Some(s) if s >= 0.0 && s <= f64::from(u32::MAX) => {
                    member.secondary_delay_secs = s as u32;
                }
                _ => {
                    return Err(invalid(format!(
                        "member {id}: secondaryDelaySecs must be >= 0"
                    )));
                }
            },
            other => {
                return Err(invalid(format!(
                    "unexpected field '{other}' in member {id} of the replica set config"
                )));
            }
        }
    }
    let must_not_lead = member.votes == 0 || member.hidden || member.secondary_delay_secs > 0;
    if must_not_lead && member.priority_milli > 0 {
        if entry.contains_key("priority") {
            return Err(invalid(format!(
                "member {id}: priority must be 0 when votes is 0, hidden is true or secondaryDelaySecs is set"
            )));
        }
        member.priority_milli = 0;
    }
    Ok(member)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(members: Vec<Document>) -> Document {
        doc! {"_id": "rs", "members": members}
    }

    #[test]
    fn parses_members_with_options() {
        let parsed = ReplConfig::parse(
            &config(vec![
                doc! {"_id": 0, "host": "127.0.0.1:1"},
                doc! {"_id": 1, "host": "127.0.0.1:2", "priority": 2},
                doc! {"_id": 2, "host": "127.0.0.1:3", "votes": 0},
                doc! {"_id": 3, "host": "127.0.0.1:4", "hidden": true, "secondaryDelaySecs": 60},
            ]),
            "rs",
        )
        .unwrap();
        assert_eq!(parsed.voters().len(), 3);
        let by_id = |id| parsed.members.values().find(|m| m.id == id).unwrap();
        assert_eq!(by_id(1).priority_milli, 2000);
        assert!(!by_id(2).electable());
        assert_eq!(by_id(2).priority_milli, 0);
        assert!(!by_id(3).electable());
        let shown = parsed.to_document(1, 1, 500);
        assert_eq!(shown.get_array("members").unwrap().len(), 4);
    }

    #[test]
    fn rejects_bad_configs() {
        let bad = [
            doc! {"_id": "other", "members": [{"_id": 0, "host": "127.0.0.1:1"}]},
            config(vec![]),
            config(vec![
                doc! {"_id": 0, "host": "127.0.0.1:1"},
                doc! {"_id": 0, "host": "127.0.0.1:2"},
            ]),
            config(vec![
                doc! {"_id": 0, "host": "127.0.0.1:1"},
                doc! {"_id": 1, "host": "127.0.0.1:1"},
            ]),
            config(vec![doc! {"_id": 0, "host": "127.0.0.1:1", "votes": 2}]),
            config(vec![doc! {"_id": 0, "host": "127.0.0.1:1", "votes": 0}]),
            config(vec![
                doc! {"_id": 0, "host": "127.0.0.1:1", "hidden": true, "priority": 1},
            ]),
            config(vec![doc! {"_id": 0, "host": "nowhere"}]),
            config(vec![
                doc! {"_id": 0, "host": "127.0.0.1:1", "arbiterOnly": true},
            ]),
            config(
                (0..8)
                    .map(|i| doc! {"_id": i, "host": format!("127.0.0.1:{}", i + 1)})
                    .collect(),
            ),
        ];
        for config in bad {
            let error = ReplConfig::parse(&config, "rs").unwrap_err();
            assert_eq!(
                error.code,
                ErrorCode::INVALID_REPLICA_SET_CONFIG,
                "{config}"
            );
        }
    }
}
