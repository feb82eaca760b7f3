//! Named failpoints for multi-step metadata operations. A test starts a process with
//! `SHOAL_FAILPOINTS=name[,name...]`; when execution reaches [`hit`] with a listed name the
//! process aborts on the spot, exactly as a crash would leave it. Restarting without the
//! variable must then find consistent state and let the operation be retried.
//!
//! An entry `name:pause=MILLIS` pauses there instead (see [`pause_millis`]).
//!
//! The list is read once; with the variable unset a failpoint costs one atomic load.

use std::sync::OnceLock;

/// The environment variable naming the armed failpoints.
pub const FAILPOINTS_ENV: &str = "SHOAL_FAILPOINTS";

fn armed() -> &'static [String] {
    static ARMED: OnceLock<Vec<String>> = OnceLock::new();
    ARMED.get_or_init(|| match std::env::var(FAILPOINTS_ENV) {
        Ok(list) => list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        Err(_) => Vec::new(),
    })
}

/// How long the named failpoint pauses, when armed as `name:pause=MILLIS`: the operation
/// stops there for that long (announcing it on stderr), so a test can kill another process at
/// exactly that step, then lets the operation go on against whatever it finds.
pub fn pause_millis(name: &str) -> Option<u64> {
    armed().iter().find_map(|armed_name| {
        let (armed_name, mode) = armed_name.split_once(':')?;
        if armed_name != name {
            return None;
        }
        mode.strip_prefix("pause=")?.parse().ok()
    })
}

/// Whether the named failpoint is armed in this process.
pub fn is_armed(name: &str) -> bool {
    armed().iter().any(|armed_name| armed_name == name)
}

/// Crashes the process here if `name` is armed.
pub fn hit(name: &str) {
    if is_armed(name) {
        eprintln!("failpoint {name} hit: aborting");
        std::process::abort();
    }
}
