//! Forced reconfiguration (`replSetReconfig` with `force: true`): a member whose replica set
//! has lost its majority becomes a new set on its own, as MongoDB's forced reconfiguration
//! makes a survivor primary after a site is lost.
//!
//! Raft (and openraft) cannot change membership without a quorum, so the survivor does not
//! change the old set: it starts a new *incarnation* of it. It applies everything its log
//! holds (committed or not, as a MongoDB secondary has applied its whole oplog), keeps its
//! documents, catalog and session records, discards its log and vote, and restarts Raft
//! in-process from a state that reads "everything up to the last applied entry is a snapshot;
//! the membership is the new configuration". Being the only voter, it elects itself within an
//! election timeout. Members added later with `rs.add` get that snapshot, since the new log
//! starts after it.
//!
//! The incarnation (`network::Incarnation`, persisted in `raft_meta`, carried by every Raft
//! message) protects the new set from the members it left out: they keep the old incarnation,
//! their messages are refused, and a refusal tells them that a newer incarnation exists, so
//! they stop electing and serving. To rejoin, a left-out member is wiped and added with
//! `rs.add`.
//!
//! Writes that the survivor had not received are lost: that is what forcing means. The command
//! is refused while a majority of the current voting members answers, since a normal
//! reconfiguration on the primary keeps every write.

use std::{collections::BTreeMap, io, sync::Arc, time::Duration};

use bson::{Document, doc};
use openraft::{
    Membership, StoredMembership,
    alias::{LogIdOf, VoteOf},
};
use shoal_common::{CommandError, ErrorCode};
use shoal_docstore::{Kv, Space, WriteBatch};

use crate::{
    config::ReplConfig,
    log_store::{COMMITTED_KEY, LAST_PURGED_KEY, VOTE_KEY, index_key, put_incarnation},
    network::Incarnation,
    set::{ReplicaSet, start_raft},
    state_machine::{APPLIED_KEY, MEMBERSHIP_KEY, StateMachine},
    types::{MemberNode, NodeId, TypeConfig},
};

/// How long one probe of another voting member may take before it counts as unreachable.
pub const FORCE_PROBE_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long the old Raft instance may take to stop.
pub const FORCE_SHUTDOWN_WAIT: Duration = Duration::from_secs(10);
/// How long the command waits for the member to become primary of the new incarnation.
pub const FORCE_ELECTION_WAIT: Duration = Duration::from_secs(10);
/// How far a forced reconfiguration raises the term. A driver that saw the lost members elect
/// among themselves (higher terms than the survivor knows) would otherwise take the new
/// primary's `electionId` for a stale one.
pub const FORCED_TERM_STEP: u64 = 1000;

/// Checks that `new` may be forced on member `me` (at `host`): it must name this member and
/// no other. The other members of the old set hold another history; they rejoin wiped, with
/// `rs.add`, once this member is primary.
pub fn check_forced_config(new: &ReplConfig, me: NodeId, host: &str) -> Result<(), CommandError> {
    if !new.members.contains_key(&me) {
        return Err(CommandError::new(
            ErrorCode::INVALID_REPLICA_SET_CONFIG,
            format!(
                "a forced reconfiguration must keep the member it runs on ({host}) in the new configuration"
            ),
        ));
    }
    if new.members.len() != 1 {
        let others: Vec<&str> = new
            .members
            .iter()
            .filter(|(id, _)| **id != me)
            .map(|(_, m)| m.host.as_str())
            .collect();
        return Err(CommandError::new(
            ErrorCode::INVALID_REPLICA_SET_CONFIG,
            format!(
                "a forced reconfiguration keeps only the member it runs on ({host}); leave out {}: once this member is primary, wipe their data directories and add them with rs.add",
                others.join(", ")
            ),
        ));
    }
    Ok(())
}

/// Whether `reachable` of `voters` voting members are a majority.
pub fn is_majority(reachable: usize, voters: usize) -> bool {
    reachable * 2 > voters
}

/// The new incarnation's Raft state, as one storage batch: no log, everything up to `applied`
/// counted as purged (a snapshot), committed and applied; a vote for this member in a term
/// above every term it has seen; `new` as the membership; `incarnation`.
pub(crate) fn rebuilt_state(
    applied: LogIdOf<TypeConfig>,
    vote: Option<VoteOf<TypeConfig>>,
    me: NodeId,
    new: &ReplConfig,
    incarnation: Incarnation,
) -> io::Result<WriteBatch> {
    let seen_term = vote
        .map_or(0, |v| v.leader_id.term)
        .max(applied.leader_id.term);
    let vote = VoteOf::<TypeConfig>::new(seen_term.saturating_add(FORCED_TERM_STEP), me);
    let voters = new.voters();
    let nodes: BTreeMap<NodeId, MemberNode> = new.members.clone();
    let membership =
        Membership::new(vec![voters], nodes).map_err(|e| io::Error::other(e.to_string()))?;
    let stored = StoredMembership::new(Some(applied), membership);
    let mut batch = WriteBatch::new();
    batch.delete_range(Space::RaftLog, index_key(0).to_vec(), vec![0xff; 9]);
    batch.put(Space::RaftMeta, VOTE_KEY.to_vec(), json(&vote)?);
    batch.put(Space::RaftMeta, LAST_PURGED_KEY.to_vec(), json(&applied)?);
    batch.put(
        Space::RaftMeta,
        COMMITTED_KEY.to_vec(),
        json(&Some(applied))?,
    );
    batch.put(Space::RaftMeta, APPLIED_KEY.to_vec(), json(&Some(applied))?);
    batch.put(Space::RaftMeta, MEMBERSHIP_KEY.to_vec(), json(&stored)?);
    put_incarnation(&mut batch, Some(incarnation))?;
    Ok(batch)
}

/// The JSON form `raft_meta` stores values in (as the log store and state machine do).
fn json<T: serde::Serialize>(value: &T) -> io::Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| io::Error::other(e.to_string()))
}

/// Applies the log's tail on `state_machine` and writes the new incarnation's state; returns
/// the incarnation and the last entry kept. Blocking (RocksDB).
fn prepare_new_incarnation(
    state_machine: &StateMachine,
    kv: &dyn Kv,
    me: NodeId,
    new: &ReplConfig,
    previous: Option<Incarnation>,
) -> io::Result<(Incarnation, LogIdOf<TypeConfig>)> {
    let applied = state_machine.apply_log_tail()?.ok_or_else(|| {
        io::Error::other("this member has applied nothing yet; initiate a new set instead")
    })?;
    let vote: Option<VoteOf<TypeConfig>> = match kv
        .get(Space::RaftMeta, VOTE_KEY)
        .map_err(|e| io::Error::other(e.to_string()))?
    {
        Some(bytes) => Some(
            serde_json::from_slice(&bytes)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?,
        ),
        None => None,
    };
    let incarnation = Incarnation::after(previous);
    let batch = rebuilt_state(applied, vote, me, new, incarnation)?;
    kv.write(batch, true)
        .map_err(|e| io::Error::other(e.to_string()))?;
    Ok((incarnation, applied))
}

impl ReplicaSet {
    /// `replSetReconfig` with `force: true`; see the module documentation.
    pub async fn reconfig_forced(&self, config: &Document) -> Result<Document, CommandError> {
        if !self.is_initiated() {
            return Err(CommandError::new(
                ErrorCode::NOT_YET_INITIALIZED,
                "no replset config has been received",
            ));
        }
        let new = ReplConfig::parse(config, &self.set_name)?;
        check_forced_config(&new, self.me, &self.host)?;
        let Ok(_running) = self.force_lock.try_lock() else {
            return Err(CommandError::new(
                ErrorCode::CONFLICTING_OPERATION_IN_PROGRESS,
                "a forced reconfiguration is already running on this member",
            ));
        };
        self.refuse_if_majority_reachable().await?;
        self.restart_as_new_incarnation(&new).await?;
        if let Err(error) = self.wait_for_primary(FORCE_ELECTION_WAIT).await {
            tracing::warn!(set = %self.set_name, %error, "the forced configuration is in place but this member is not primary yet");
        }
        Ok(doc! {"ok": 1.0})
    }

    /// Refuses (NewReplicaSetConfigurationIncompatible) while a majority of the current
    /// voting members, this one included, answers `hello`.
    async fn refuse_if_majority_reachable(&self) -> Result<(), CommandError> {
        let current = self.config();
        let voters = current.voters();
        let probes = current
            .members
            .iter()
            .filter(|(id, _)| voters.contains(id) && **id != self.me)
            .map(|(_, member)| self.probe_member(member.host.clone()));
        let answered: Vec<String> = futures::future::join_all(probes)
            .await
            .into_iter()
            .flatten()
            .collect();
        let reachable = answered.len() + usize::from(voters.contains(&self.me));
        if !is_majority(reachable, voters.len()) {
            return Ok(());
        }
        Err(CommandError::new(
            ErrorCode::NEW_REPLICA_SET_CONFIGURATION_INCOMPATIBLE,
            format!(
                "{reachable} of the {} voting members are reachable (this member and {}), a majority: a forced reconfiguration would discard the writes only they hold. Run replSetReconfig without force on the primary",
                voters.len(),
                if answered.is_empty() {
                    "no other".to_owned()
                } else {
                    answered.join(", ")
                },
            ),
        ))
    }

    /// `Some(host)` when the member at `host` answers `hello` as a member of this set.
    async fn probe_member(&self, host: String) -> Option<String> {
        let hello = doc! {"hello": 1, "$db": "admin"};
        let reply = self
            .rpc
            .call(&host, hello, FORCE_PROBE_TIMEOUT)
            .await
            .ok()?;
        (reply.get_str("setName").ok() == Some(self.set_name.as_str())).then_some(host)
    }

    /// Stops the Raft instance, writes the new incarnation's state and starts a new instance
    /// on it. A failure after the stop restarts Raft on whatever storage holds (the batch is
    /// atomic: the old state or the new).
    async fn restart_as_new_incarnation(&self, new: &ReplConfig) -> Result<(), CommandError> {
        let stopping = tokio::time::timeout(FORCE_SHUTDOWN_WAIT, self.raft().shutdown()).await;
        if stopping.is_err() {
            return Err(CommandError::new(
                ErrorCode::EXCEEDED_TIME_LIMIT,
                "replication did not stop in time; restart the member and run the forced reconfiguration again",
            ));
        }
        let successor = self.state_machine().successor();
        let prepared = {
            let successor = successor.clone();
            let kv = Arc::clone(&self.kv);
            let (me, new, previous) = (self.me, new.clone(), self.incarnation.get());
            tokio::task::spawn_blocking(move || {
                // The old incarnation's snapshots carry its membership: none may serve the new.
                successor.remove_snapshots()?;
                prepare_new_incarnation(&successor, kv.as_ref(), me, &new, previous)
            })
            .await
            .map_err(|e| io::Error::other(e.to_string()))
            .and_then(|result| result)
        };
        let outcome = match prepared {
            Ok((incarnation, kept)) => {
                self.incarnation.set(Some(incarnation));
                tracing::warn!(set = %self.set_name, %incarnation, last_kept = %kept, members = new.members.len(), "forced reconfiguration: starting a new incarnation of the replica set from this member's data");
                Ok(())
            }
            Err(error) => Err(CommandError::new(
                ErrorCode::OPERATION_FAILED,
                format!("forced reconfiguration failed: {error}"),
            )),
        };
        self.start_replacement_raft(successor).await?;
        outcome
    }

    /// Waits until this member is primary (bounded by `limit`).
    async fn wait_for_primary(&self, limit: Duration) -> Result<(), CommandError> {
        let deadline = tokio::time::Instant::now() + limit;
        while !self.is_primary() {
            if tokio::time::Instant::now() >= deadline {
                return Err(CommandError::new(
                    ErrorCode::EXCEEDED_TIME_LIMIT,
                    "not elected within the wait",
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Starts a Raft instance over this member's storage with `state_machine` and installs it.
    async fn start_replacement_raft(
        &self,
        state_machine: StateMachine,
    ) -> Result<(), CommandError> {
        let raft = start_raft(
            self.me,
            &self.raft_config,
            self.network(),
            Arc::clone(&self.kv),
            state_machine.clone(),
        )
        .await
        .map_err(|error| {
            tracing::error!(set = %self.set_name, %error, "replication did not restart after a forced reconfiguration; restart the member");
            CommandError::new(ErrorCode::OPERATION_FAILED, error)
        })?;
        self.replace_raft(raft, state_machine);
        self.removed_at
            .store(0, std::sync::atomic::Ordering::Relaxed);
        self.majority_lost
            .store(false, std::sync::atomic::Ordering::Relaxed);
        self.apply_electability();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use bson::doc;
    use openraft::{RaftLogReader, RaftSnapshotBuilder, storage::RaftLogStorage};
    use shoal_docstore::MemKv;

    use super::*;
    use crate::{
        log_store::{LogStore, read_incarnation},
        node_id_for, replicated_engine,
    };

    fn log_id(term: u64, index: u64) -> LogIdOf<TypeConfig> {
        LogIdOf::<TypeConfig>::new_term_index(term, index)
    }

    fn one_member(host: &str) -> ReplConfig {
        ReplConfig::parse(
            &doc! {"_id": "rs", "members": [{"_id": 2, "host": host}]},
            "rs",
        )
        .unwrap()
    }

    #[test]
    fn forced_configs_keep_only_this_member() {
        let me = node_id_for("127.0.0.1:3");
        check_forced_config(&one_member("127.0.0.1:3"), me, "127.0.0.1:3").unwrap();
        let other = check_forced_config(&one_member("127.0.0.1:4"), me, "127.0.0.1:3");
        assert_eq!(
            other.unwrap_err().code,
            ErrorCode::INVALID_REPLICA_SET_CONFIG
        );
        let two = ReplConfig::parse(
            &doc! {"_id": "rs", "members": [
                {"_id": 0, "host": "127.0.0.1:3"},
                {"_id": 1, "host": "127.0.0.1:4"},
            ]},
            "rs",
        )
        .unwrap();
        let error = check_forced_config(&two, me, "127.0.0.1:3").unwrap_err();
        assert!(error.errmsg.contains("127.0.0.1:4"), "{}", error.errmsg);
    }

    #[test]
    fn majorities() {
        assert!(is_majority(2, 3));
        assert!(!is_majority(1, 3));
        assert!(!is_majority(2, 4));
        assert!(is_majority(1, 1));
        assert!(!is_majority(0, 1));
    }

    #[tokio::test]
    async fn the_new_incarnation_starts_after_the_kept_data() {
        let kv: Arc<dyn Kv> = Arc::new(MemKv::new());
        let engine = Arc::new(replicated_engine(Arc::clone(&kv)).unwrap());
        let me = node_id_for("127.0.0.1:3");
        let dir = tempfile::tempdir().unwrap();
        let snapshots = Arc::new(crate::snapshot::SnapshotStore::open(dir.path()).unwrap());
        let machine = StateMachine::new(Arc::clone(&engine), Arc::clone(&kv), me, snapshots);
        // An applied entry at 7 and an unapplied one at 8, both of term 3, and a vote in term 5.
        let mut log = LogStore::new(Arc::clone(&kv));
        let mut seed = WriteBatch::new();
        seed.put(
            Space::RaftMeta,
            APPLIED_KEY.to_vec(),
            serde_json::to_vec(&Some(log_id(3, 7))).unwrap(),
        );
        seed.put(
            Space::RaftMeta,
            VOTE_KEY.to_vec(),
            serde_json::to_vec(&VoteOf::<TypeConfig>::new_committed(5, 9)).unwrap(),
        );
        let insert = doc! {"insert": "c", "documents": [{"_id": 1}]};
        let entry = openraft::alias::EntryOf::<TypeConfig> {
            log_id: log_id(3, 8),
            payload: openraft::EntryPayload::Normal(crate::types::Proposal {
                db: "d".into(),
                command: bson::to_vec(&insert).unwrap(),
                now_millis: 1,
                session: None,
            }),
        };
        seed.put(
            Space::RaftLog,
            index_key(8).to_vec(),
            serde_json::to_vec(&entry).unwrap(),
        );
        kv.write(seed, true).unwrap();
        let successor = machine.successor();
        successor.remove_snapshots().unwrap();
        let previous = Some(Incarnation::first());
        let (incarnation, kept) = prepare_new_incarnation(
            &successor,
            kv.as_ref(),
            me,
            &one_member("127.0.0.1:3"),
            previous,
        )
        .unwrap();
        assert_eq!(kept, log_id(3, 8));
        assert_eq!(incarnation.generation, 2);
        assert_eq!(read_incarnation(kv.as_ref()).unwrap(), Some(incarnation));
        // The unapplied entry was applied: the survivor keeps everything it received.
        let found = engine.execute("d", &doc! {"count": "c"});
        assert_eq!(found.get_i32("n").unwrap(), 1, "{found}");
        // The log is empty and purged up to the kept entry; the vote is above every term seen.
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(3, 8)));
        assert_eq!(state.last_log_id, Some(log_id(3, 8)));
        let vote = log.read_vote().await.unwrap().unwrap();
        assert_eq!(vote.leader_id.term, 5 + FORCED_TERM_STEP);
        assert!(!vote.is_committed());
        // The membership is the new configuration, and a snapshot carries it with the data.
        let mut fresh = successor.clone();
        let (applied, membership) = openraft::storage::RaftStateMachine::applied_state(&mut fresh)
            .await
            .unwrap();
        assert_eq!(applied, Some(log_id(3, 8)));
        let voters: Vec<NodeId> = membership.membership().voter_ids().collect();
        assert_eq!(voters, vec![me]);
        let snapshot = fresh.build_snapshot().await.unwrap();
        assert_eq!(snapshot.meta.last_log_id, Some(log_id(3, 8)));
        // The fenced machine refuses to apply for the old Raft instance.
        assert!(machine.apply_log_tail().is_err());
    }
}
