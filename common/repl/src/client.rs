//! How routers and the config server reach replica sets: a monitor per set that finds the
//! primary and the secondaries (`hello` every [`MONITOR_INTERVAL`]), and a call that targets a
//! member by read preference and retries across a failover.
//!
//! A target is either one `host:port` (a cursor's `getMore` must return to its member) or a
//! replica-set connection string `name/host1,host2,...`. When two members claim to be primary
//! (a partitioned old primary has not heard of the election yet), the one with the higher
//! `electionId` (term) wins, as in drivers' server discovery.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use bson::{Bson, Document, doc};
use shoal_common::{CommandError, ErrorCode};
use shoal_rpc::RpcClient;
use tokio::sync::watch;

/// How often a monitor asks every member of its set for `hello`.
pub const MONITOR_INTERVAL: Duration = Duration::from_millis(100);
/// How long one `hello` probe may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(1000);
/// How long a call keeps retrying across a failover before it gives up.
pub const FAILOVER_WINDOW: Duration = Duration::from_secs(20);
/// Attempts one call makes at most within [`FAILOVER_WINDOW`].
pub const CALL_ATTEMPTS_MAX: u32 = 400;
/// Replica sets one process monitors at most.
pub const MONITORED_SETS_MAX: usize = 1024;
/// Idle time after which a monitor stops (it restarts on the next call).
pub const MONITOR_IDLE_STOP: Duration = Duration::from_secs(600);

/// Which member a call may go to (MongoDB read preference modes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadMode {
    /// The primary only (every write).
    Primary,
    /// The primary, or a secondary when there is none.
    PrimaryPreferred,
    /// A secondary only.
    Secondary,
    /// A secondary, or the primary when there is none.
    SecondaryPreferred,
    /// Any member, the closest first.
    Nearest,
}

/// A parsed `$readPreference`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ReadPreference {
    /// The mode.
    pub mode: ReadMode,
    /// `maxStalenessSeconds`, when set.
    pub max_staleness: Option<Duration>,
}

impl ReadPreference {
    /// Reads and writes on the primary.
    pub const PRIMARY: ReadPreference = ReadPreference {
        mode: ReadMode::Primary,
        max_staleness: None,
    };

    /// The read preference of `command` (primary when absent).
    pub fn of(command: &Document) -> Result<ReadPreference, CommandError> {
        let Some(value) = command.get("$readPreference") else {
            return Ok(ReadPreference::PRIMARY);
        };
        let Bson::Document(spec) = value else {
            return Err(CommandError::type_mismatch(
                "$readPreference",
                "object",
                value,
            ));
        };
        let mode = match spec.get_str("mode") {
            Ok("primary") => ReadMode::Primary,
            Ok("primaryPreferred") => ReadMode::PrimaryPreferred,
            Ok("secondary") => ReadMode::Secondary,
            Ok("secondaryPreferred") => ReadMode::SecondaryPreferred,
            Ok("nearest") => ReadMode::Nearest,
            Ok(other) => {
                return Err(CommandError::new(
                    ErrorCode::FAILED_TO_PARSE,
                    format!("Could not parse $readPreference mode '{other}'"),
                ));
            }
            Err(_) => {
                return Err(CommandError::new(
                    ErrorCode::FAILED_TO_PARSE,
                    "$readPreference needs a mode",
                ));
            }
        };
        let max_staleness = match spec.get("maxStalenessSeconds") {
            None => None,
            Some(value) => {
                let seconds = match value {
                    Bson::Int32(v) => i64::from(*v),
                    Bson::Int64(v) => *v,
                    Bson::Double(v) => *v as i64,
                    _ => -2,
                };
                if seconds == -1 {
                    None
                } else if mode == ReadMode::Primary {
                    return Err(CommandError::bad_value(
                        "mode 'primary' does not allow for 'maxStalenessSeconds'",
                    ));
                } else if seconds < 90 {
                    return Err(CommandError::bad_value(format!(
                        "maxStalenessSeconds must be -1 or at least 90, got {seconds}"
                    )));
                } else {
                    Some(Duration::from_secs(seconds.unsigned_abs()))
                }
            }
        };
        Ok(ReadPreference {
            mode,
            max_staleness,
        })
    }
}

/// What one probe learned about a member.
#[derive(Clone, Debug, PartialEq)]
pub struct MemberView {
    /// `host:port`.
    pub host: String,
    /// Claims to be primary.
    pub primary: bool,
    /// Is a readable secondary.
    pub secondary: bool,
    /// The primary's term (`electionId`), when primary.
    pub term: u64,
    /// Time of the last write it applied (milliseconds since the epoch).
    pub last_write_millis: i64,
    /// Round-trip time of the probe.
    pub rtt: Duration,
}

/// A set's members as last probed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SetView {
    /// Members that answered.
    pub members: Vec<MemberView>,
    /// Every host known (seeds plus what members reported).
    pub hosts: Vec<String>,
}

impl SetView {
    /// The primary: of the members claiming it, the one of the highest term.
    pub fn primary(&self) -> Option<&MemberView> {
        self.members
            .iter()
            .filter(|m| m.primary)
            .max_by_key(|m| m.term)
    }

    /// Members a read with `preference` may go to, best first.
    pub fn readable(&self, preference: ReadPreference) -> Vec<String> {
        let primary = self.primary();
        let primary_write = primary.map_or(0, |p| p.last_write_millis);
        let freshest = self
            .members
            .iter()
            .filter(|m| m.secondary)
            .map(|m| m.last_write_millis)
            .max()
            .unwrap_or(0);
        let mut secondaries: Vec<&MemberView> = self
            .members
            .iter()
            .filter(|m| m.secondary && !m.primary)
            .filter(|m| {
                preference.max_staleness.is_none_or(|max| {
                    // The server-selection formula, with the probe interval standing in for
                    // the heartbeat frequency.
                    let reference = if primary.is_some() {
                        primary_write
                    } else {
                        freshest
                    };
                    let lag = (reference - m.last_write_millis).max(0);
                    let staleness = lag + MONITOR_INTERVAL.as_millis() as i64;
                    staleness <= max.as_millis() as i64
                })
            })
            .collect();
        secondaries.sort_by_key(|m| m.rtt);
        let secondaries: Vec<String> = secondaries.iter().map(|m| m.host.clone()).collect();
        let primary: Vec<String> = primary.map(|p| p.host.clone()).into_iter().collect();
        match preference.mode {
            ReadMode::Primary => primary,
            ReadMode::PrimaryPreferred => primary.into_iter().chain(secondaries).collect(),
            ReadMode::Secondary => secondaries,
            ReadMode::SecondaryPreferred => secondaries.into_iter().chain(primary).collect(),
            ReadMode::Nearest => {
                let mut all: Vec<&MemberView> = self
                    .members
                    .iter()
                    .filter(|m| m.primary || secondaries.contains(&m.host))
                    .collect();
                all.sort_by_key(|m| m.rtt);
                all.iter().map(|m| m.host.clone()).collect()
            }
        }
    }
}

struct Monitor {
    name: String,
    view: watch::Sender<SetView>,
    last_used: Mutex<Instant>,
    kick: tokio::sync::Notify,
}

/// Calls to replica sets (and single hosts) with primary discovery and failover retries.
#[derive(Clone)]
pub struct Topology {
    rpc: RpcClient,
    monitors: Arc<Mutex<HashMap<String, Arc<Monitor>>>>,
}

impl std::fmt::Debug for Topology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Topology").finish_non_exhaustive()
    }
}

/// Errors after which the command did not run at all: always safe to send again.
fn not_executed(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::NOT_WRITABLE_PRIMARY
            | ErrorCode::NOT_PRIMARY_NO_SECONDARY_OK
            | ErrorCode::NOT_PRIMARY_OR_SECONDARY
            | ErrorCode::NOT_YET_INITIALIZED
    )
}

/// Errors after which the command may or may not have run: safe to send again only when the
/// command is idempotent (a read) or deduplicated (a retryable write).
fn outcome_unknown(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::INTERRUPTED_DUE_TO_REPL_STATE_CHANGE
            | ErrorCode::PRIMARY_STEPPED_DOWN
            | ErrorCode::SHUTDOWN_IN_PROGRESS
            | ErrorCode::INTERRUPTED_AT_SHUTDOWN
            | ErrorCode::HOST_UNREACHABLE
            | ErrorCode::HOST_NOT_FOUND
            | ErrorCode::NETWORK_TIMEOUT
            | ErrorCode::SOCKET_EXCEPTION
    )
}

/// Commands that change data and are not safe to repeat unless they carry a `txnNumber`.
const NON_IDEMPOTENT: &[&str] = &[
    "insert",
    "update",
    "delete",
    "findAndModify",
    "findandmodify",
    "_shoalApplyAtomic",
    "renameCollection",
];

fn may_repeat(command: &Document) -> bool {
    let name = command.keys().next().map_or("", String::as_str);
    !NON_IDEMPOTENT.contains(&name) || command.contains_key("txnNumber")
}

fn unreachable(host: &str, reason: &str) -> CommandError {
    CommandError::new(ErrorCode::HOST_UNREACHABLE, format!("{host}: {reason}"))
        .with_label("RetryableWriteError")
}

impl Topology {
    /// A topology over `rpc`.
    pub fn new(rpc: RpcClient) -> Topology {
        Topology {
            rpc,
            monitors: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The RPC client underneath.
    pub fn rpc(&self) -> &RpcClient {
        &self.rpc
    }

    fn monitor(&self, target: &str) -> Result<Arc<Monitor>, CommandError> {
        let mut monitors = self.monitors.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(monitor) = monitors.get(target) {
            *monitor
                .last_used
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Instant::now();
            return Ok(Arc::clone(monitor));
        }
        let (name, hosts) = target.split_once('/').ok_or_else(|| {
            CommandError::bad_value(format!("'{target}' is not a replica-set connection string"))
        })?;
        if monitors.len() >= MONITORED_SETS_MAX {
            return Err(CommandError::internal("too many replica sets monitored"));
        }
        let seeds: Vec<String> = hosts
            .split(',')
            .filter(|h| !h.is_empty())
            .map(str::to_owned)
            .collect();
        let (view, _) = watch::channel(SetView {
            members: Vec::new(),
            hosts: seeds,
        });
        let monitor = Arc::new(Monitor {
            name: name.to_owned(),
            view,
            last_used: Mutex::new(Instant::now()),
            kick: tokio::sync::Notify::new(),
        });
        monitors.insert(target.to_owned(), Arc::clone(&monitor));
        tokio::spawn(run_monitor(
            self.rpc.clone(),
            Arc::clone(&monitor),
            Arc::clone(&self.monitors),
            target.to_owned(),
        ));
        Ok(monitor)
    }

    /// The current view of the set `target` (after at least one probe round).
    pub async fn view(&self, target: &str) -> Result<SetView, CommandError> {
        let monitor = self.monitor(target)?;
        let mut receiver = monitor.view.subscribe();
        let deadline = tokio::time::Instant::now() + PROBE_TIMEOUT * 2;
        while receiver.borrow().members.is_empty() {
            if tokio::time::timeout_at(deadline, receiver.changed())
                .await
                .is_err()
            {
                break;
            }
        }
        let view = receiver.borrow().clone();
        Ok(view)
    }

    /// Sends `command` (with `$db` = `db`) to a member of `target` chosen by `preference`, and
    /// retries across failovers within [`FAILOVER_WINDOW`] when that is safe. Returns the
    /// member that answered and its reply (whatever its `ok`).
    pub async fn call(
        &self,
        target: &str,
        db: &str,
        mut command: Document,
        preference: ReadPreference,
        timeout: Duration,
    ) -> Result<(String, Document), CommandError> {
        command.insert("$db", db);
        if !target.contains('/') {
            let reply = self
                .rpc
                .call(target, command, timeout)
                .await
                .map_err(CommandError::from)?;
            return Ok((target.to_owned(), reply));
        }
        let monitor = self.monitor(target)?;
        let repeatable = may_repeat(&command);
        let started = tokio::time::Instant::now();
        let deadline = started + FAILOVER_WINDOW.max(timeout.min(FAILOVER_WINDOW * 3));
        let mut receiver = monitor.view.subscribe();
        let mut last_error: Option<CommandError> = None;
        for attempt in 0..CALL_ATTEMPTS_MAX {
            let view = receiver.borrow_and_update().clone();
            let candidates = view.readable(preference);
            let Some(host) = candidates.first().cloned() else {
                if tokio::time::Instant::now() >= deadline {
                    break;
                }
                monitor.kick.notify_one();
                let _ = tokio::time::timeout_at(deadline, receiver.changed()).await;
                if attempt > 0 && receiver.borrow().members.is_empty() {
                    tokio::time::sleep(MONITOR_INTERVAL).await;
                }
                continue;
            };
            let mut request = command.clone();
            if preference.mode != ReadMode::Primary
                && Some(host.as_str()) != view.primary().map(|p| p.host.as_str())
            {
                request.insert("$readPreference", doc! {"mode": "secondaryPreferred"});
            }
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            let call = self.rpc.call(
                &host,
                request,
                timeout.min(remaining.max(Duration::from_millis(1))),
            );
            let outcome = if preference.mode == ReadMode::Primary {
                // A primary that stops answering (killed, paused, partitioned) is noticed by
                // the monitor when another member wins an election: stop waiting then.
                let mut watch_primary = monitor.view.subscribe();
                let displaced = async {
                    loop {
                        if watch_primary.changed().await.is_err() {
                            return;
                        }
                        let view = watch_primary.borrow().clone();
                        if view.primary().is_some_and(|p| p.host != host) {
                            return;
                        }
                    }
                };
                tokio::select! {
                    result = call => Some(result),
                    () = displaced => None,
                }
            } else {
                Some(call.await)
            };
            match outcome {
                Some(Ok(reply)) => {
                    let error = CommandError::from_reply(&reply);
                    match error {
                        Some(error)
                            if not_executed(error.code)
                                || (repeatable && outcome_unknown(error.code)) =>
                        {
                            tracing::debug!(
                                host,
                                code = error.code.0,
                                "member cannot serve; retrying elsewhere"
                            );
                            monitor.kick.notify_one();
                            last_error = Some(error);
                        }
                        Some(error) if outcome_unknown(error.code) => {
                            // Not repeatable and perhaps applied: report it without the
                            // member-state code a driver would pin on the router.
                            return Err(unreachable(
                                &host,
                                &format!(
                                    "the primary changed while the write was in flight, so it may or may not have been applied ({})",
                                    error.errmsg
                                ),
                            ));
                        }
                        _ => return Ok((host, reply)),
                    }
                }
                Some(Err(rpc_error)) => {
                    let error = CommandError::from(rpc_error);
                    monitor.kick.notify_one();
                    if !repeatable {
                        return Err(error.with_label("RetryableWriteError"));
                    }
                    last_error = Some(error);
                }
                None => {
                    monitor.kick.notify_one();
                    if !repeatable {
                        return Err(unreachable(
                            &host,
                            "the primary changed while the write was in flight",
                        ));
                    }
                    last_error = Some(unreachable(&host, "the primary changed"));
                }
            }
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            // Wait for the monitor to see a change (a new primary), at most a probe interval.
            let _ = tokio::time::timeout(MONITOR_INTERVAL, receiver.changed()).await;
        }
        // A member's "not primary" is about that member; passed on as-is, a driver would
        // take it as being about the router and drop it (wire-protocol brief, section 4).
        let no_host = CommandError::new(
            ErrorCode::FAILED_TO_SATISFY_READ_PREFERENCE,
            format!(
                "Could not find host matching read preference {:?} for set {}",
                preference.mode, monitor.name
            ),
        );
        let error = match last_error {
            Some(error) if !not_executed(error.code) && !outcome_unknown(error.code) => error,
            Some(error) => CommandError::new(
                no_host.code,
                format!("{} (last error: {})", no_host.errmsg, error.errmsg),
            ),
            None => no_host,
        };
        Err(error.with_label("RetryableWriteError"))
    }
}

async fn probe(rpc: &RpcClient, host: &str) -> Option<(MemberView, Vec<String>)> {
    let started = Instant::now();
    let reply = rpc
        .call(host, doc! {"hello": 1, "$db": "admin"}, PROBE_TIMEOUT)
        .await
        .ok()?;
    let rtt = started.elapsed();
    let primary = matches!(reply.get("isWritablePrimary"), Some(Bson::Boolean(true)));
    let secondary = matches!(reply.get("secondary"), Some(Bson::Boolean(true)));
    let term = match reply.get("electionId") {
        Some(Bson::ObjectId(id)) => {
            let bytes = id.bytes();
            let mut term = [0u8; 8];
            term.copy_from_slice(&bytes[4..]);
            u64::from_be_bytes(term)
        }
        _ => 0,
    };
    let last_write_millis = reply
        .get_document("lastWrite")
        .ok()
        .and_then(|w| w.get_datetime("lastWriteDate").ok())
        .map_or(0, |d| d.timestamp_millis());
    let mut hosts = Vec::new();
    for field in ["hosts", "passives"] {
        if let Ok(list) = reply.get_array(field) {
            hosts.extend(list.iter().filter_map(|h| h.as_str().map(str::to_owned)));
        }
    }
    Some((
        MemberView {
            host: host.to_owned(),
            primary,
            secondary,
            term,
            last_write_millis,
            rtt,
        },
        hosts,
    ))
}

/// Probes every known member of the set independently, so a member that stops answering
/// (killed, paused) delays nobody's view of the others: each probe result updates the view as
/// soon as it arrives, and a failed probe removes the member from it.
async fn run_monitor(
    rpc: RpcClient,
    monitor: Arc<Monitor>,
    registry: Arc<Mutex<HashMap<String, Arc<Monitor>>>>,
    key: String,
) {
    let mut probing: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
    loop {
        let idle = monitor
            .last_used
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .elapsed();
        if idle > MONITOR_IDLE_STOP {
            registry
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&key);
            for (_, task) in probing.drain() {
                task.abort();
            }
            return;
        }
        let hosts = monitor.view.borrow().hosts.clone();
        for host in hosts {
            let running = probing.get(&host).is_some_and(|task| !task.is_finished());
            if !running {
                let task =
                    tokio::spawn(probe_once(rpc.clone(), Arc::clone(&monitor), host.clone()));
                probing.insert(host, task);
            }
        }
        let _ = tokio::time::timeout(MONITOR_INTERVAL, monitor.kick.notified()).await;
    }
}

/// One probe of `host`, folded into the monitor's view.
async fn probe_once(rpc: RpcClient, monitor: Arc<Monitor>, host: String) {
    let result = probe(&rpc, &host).await;
    monitor.view.send_if_modified(|view| {
        let before: Vec<(String, bool, bool, u64)> = view
            .members
            .iter()
            .map(|m| (m.host.clone(), m.primary, m.secondary, m.term))
            .collect();
        let was_empty = view.members.is_empty();
        view.members.retain(|m| m.host != host);
        let mut hosts_changed = false;
        if let Some((member, reported)) = result {
            for reported in reported {
                if !view.hosts.contains(&reported) {
                    view.hosts.push(reported);
                    hosts_changed = true;
                }
            }
            view.members.push(member);
            view.members.sort_by(|a, b| a.host.cmp(&b.host));
        }
        let after: Vec<(String, bool, bool, u64)> = view
            .members
            .iter()
            .map(|m| (m.host.clone(), m.primary, m.secondary, m.term))
            .collect();
        // Round-trip times change on every probe; only roles wake waiting callers.
        before != after || hosts_changed || (was_empty && !view.members.is_empty())
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(host: &str, primary: bool, term: u64, write: i64) -> MemberView {
        MemberView {
            host: host.into(),
            primary,
            secondary: !primary,
            term,
            last_write_millis: write,
            rtt: Duration::from_millis(1),
        }
    }

    #[test]
    fn higher_term_primary_wins() {
        let view = SetView {
            members: vec![
                member("a", true, 3, 0),
                member("b", true, 4, 0),
                member("c", false, 0, 0),
            ],
            hosts: vec![],
        };
        assert_eq!(view.primary().unwrap().host, "b");
        assert_eq!(view.readable(ReadPreference::PRIMARY), vec!["b".to_owned()]);
    }

    #[test]
    fn read_modes_choose_members() {
        let view = SetView {
            members: vec![
                member("p", true, 1, 200_000),
                member("s1", false, 0, 199_000),
                member("s2", false, 0, 10_000),
            ],
            hosts: vec![],
        };
        let pref = |mode| ReadPreference {
            mode,
            max_staleness: None,
        };
        assert_eq!(view.readable(pref(ReadMode::Secondary)).len(), 2);
        assert_eq!(
            view.readable(pref(ReadMode::SecondaryPreferred))
                .last()
                .unwrap(),
            "p"
        );
        assert_eq!(view.readable(pref(ReadMode::PrimaryPreferred))[0], "p");
        let stale = ReadPreference {
            mode: ReadMode::Secondary,
            max_staleness: Some(Duration::from_secs(90)),
        };
        assert_eq!(view.readable(stale), vec!["s1".to_owned()]);
        let no_primary = SetView {
            members: vec![member("s1", false, 0, 1)],
            hosts: vec![],
        };
        assert!(no_primary.readable(ReadPreference::PRIMARY).is_empty());
        assert_eq!(
            no_primary.readable(pref(ReadMode::PrimaryPreferred)),
            vec!["s1".to_owned()]
        );
    }

    #[test]
    fn parses_read_preferences() {
        assert_eq!(
            ReadPreference::of(&doc! {}).unwrap(),
            ReadPreference::PRIMARY
        );
        let p = ReadPreference::of(
            &doc! {"$readPreference": {"mode": "secondary", "maxStalenessSeconds": 120}},
        )
        .unwrap();
        assert_eq!(p.mode, ReadMode::Secondary);
        assert_eq!(p.max_staleness, Some(Duration::from_secs(120)));
        assert!(
            ReadPreference::of(
                &doc! {"$readPreference": {"mode": "secondary", "maxStalenessSeconds": 10}}
            )
            .is_err()
        );
        assert!(
            ReadPreference::of(
                &doc! {"$readPreference": {"mode": "primary", "maxStalenessSeconds": 100}}
            )
            .is_err()
        );
        assert!(ReadPreference::of(&doc! {"$readPreference": {"mode": "bogus"}}).is_err());
    }

    #[test]
    fn only_unsafe_writes_are_not_repeated() {
        assert!(may_repeat(&doc! {"find": "c"}));
        assert!(!may_repeat(&doc! {"insert": "c"}));
        assert!(may_repeat(&doc! {"insert": "c", "txnNumber": 1_i64}));
    }
}
