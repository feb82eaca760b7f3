//! The balancer's policy, free of I/O: given one collection's chunk map, the bytes of each
//! chunk, the shards (draining or not, with their zones) and the collection's zone ranges, it
//! names the one next action that brings the collection closer to its goal, or says it is
//! balanced. The config server's balancer loop measures, asks, performs the action and asks
//! again; keeping the decision here lets it be tested by simulation without a cluster.
//!
//! The goal is MongoDB's since 6.0: balance by data size, not chunk count. Within each group
//! of shards eligible for the same chunks (the shards of one zone, or every shard for chunks in
//! no zone), every shard's bytes end within [`GOAL_PERCENT_OF_MEAN`] of the group's mean. The
//! policy stops tighter than that ([`Tolerance`]), and never below a byte floor, so that tiny
//! collections do not churn.
//!
//! Priorities, highest first:
//! 1. a chunk straddling a zone boundary is split there ([`Action::SplitAt`]);
//! 2. a chunk on a draining shard moves to the least-loaded non-draining shard allowed for it;
//! 3. a chunk inside a zone range but on a shard outside that zone moves to the zone's
//!    least-loaded shard;
//! 4. within each group, data moves from loaded shards to light ones ([`Action::Move`]), or a
//!    chunk too big to move usefully is split at its median first ([`Action::SplitMedian`]).
//!
//! Anti-churn: a balancing move from shard `a` (bytes `A`) to shard `b` (bytes `B < A`) of a
//! chunk of `c` bytes is only chosen when `0 < c < A - B`, so the pair's gap strictly shrinks,
//! the group's largest gap never grows and the sum of squared loads strictly falls. No sequence
//! of balancing moves can therefore cycle (no ping-pong), and empty chunks never move for
//! balance (they only leave draining shards or wrong zones).

use std::{
    cmp::Ordering,
    collections::{BTreeMap, BTreeSet},
};

use bson::{Bson, Document};

use crate::{bsonorder::compare_key_values, chunks::ChunkMap, error::CommandError, ids::ShardId};

/// The balancer's promise: within a group, every shard's bytes end within this percentage of
/// the group's mean (or within [`SPREAD_FLOOR_BYTES`] of it, for tiny collections).
pub const GOAL_PERCENT_OF_MEAN: u64 = 10;
/// The largest spread (most loaded minus least loaded shard) still called balanced, in percent
/// of the mean. Tighter than the goal so that a balanced collection meets it with room.
pub const SPREAD_PERCENT_OF_MEAN: u64 = 5;
/// Spreads up to this many bytes are always balanced: moving less is not worth a migration.
pub const SPREAD_FLOOR_BYTES: u64 = 1 << 20;

// A spread of at most S% of the mean keeps every shard within S% of the mean.
const _: () = assert!(SPREAD_PERCENT_OF_MEAN <= GOAL_PERCENT_OF_MEAN);
const _: () = assert!(SPREAD_FLOOR_BYTES > 0);

/// One shard as the policy sees it (from `config.shards`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardInfo {
    /// The shard.
    pub id: ShardId,
    /// Whether `removeShard` is draining it: it receives nothing and must end empty.
    pub draining: bool,
    /// The zones it belongs to (`tags`).
    pub zones: BTreeSet<String>,
}

/// One zone range of the collection (from `config.tags`): `[min, max)` belongs to `zone`.
#[derive(Clone, Debug, PartialEq)]
pub struct ZoneRange {
    /// Inclusive lower bound, shard-key shaped.
    pub min: Document,
    /// Exclusive upper bound. A range with `max <= min` is ignored.
    pub max: Document,
    /// The zone name.
    pub zone: String,
}

/// When a group counts as balanced: its spread is at most
/// `max(mean * spread_percent_of_mean / 100, spread_floor_bytes)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tolerance {
    /// The spread allowed, in percent of the group's mean bytes per shard.
    pub spread_percent_of_mean: u64,
    /// The spread always allowed, in bytes.
    pub spread_floor_bytes: u64,
}

impl Default for Tolerance {
    fn default() -> Self {
        Tolerance {
            spread_percent_of_mean: SPREAD_PERCENT_OF_MEAN,
            spread_floor_bytes: SPREAD_FLOOR_BYTES,
        }
    }
}

impl Tolerance {
    /// The largest balanced spread for a group whose mean is `mean_bytes`.
    pub fn spread_max_bytes(&self, mean_bytes: u64) -> u64 {
        let relative = mean_bytes.saturating_mul(self.spread_percent_of_mean) / 100;
        relative.max(self.spread_floor_bytes)
    }
}

/// Everything the policy looks at for one collection.
#[derive(Clone, Copy, Debug)]
pub struct BalancerInput<'a> {
    /// The collection's chunks.
    pub map: &'a ChunkMap,
    /// The bytes of each chunk, parallel to `map.chunks`. Invariant: same length (a missing
    /// entry counts as 0 bytes).
    pub chunk_bytes: &'a [u64],
    /// Every shard of the cluster. Chunks owned by a shard not listed here are left alone.
    pub shards: &'a [ShardInfo],
    /// The collection's zone ranges, which never overlap.
    pub zones: &'a [ZoneRange],
    /// Chunks (indexes into `map.chunks`) whose median split was refused: they hold a single
    /// shard-key value. They may still move whole.
    pub unsplittable: &'a BTreeSet<usize>,
    /// When a group is balanced.
    pub tolerance: Tolerance,
}

/// The one next thing to do to a collection.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Split chunk `chunk` at `at`, a zone boundary strictly inside it.
    SplitAt {
        /// Index into the chunk map.
        chunk: usize,
        /// The split point.
        at: Document,
    },
    /// Move chunk `chunk` to shard `to`.
    Move {
        /// Index into the chunk map.
        chunk: usize,
        /// The recipient. Invariant: not the owner, not draining.
        to: ShardId,
    },
    /// Split chunk `chunk` at the median shard key of its documents.
    SplitMedian {
        /// Index into the chunk map.
        chunk: usize,
    },
    /// Nothing useful is left to do.
    Balanced,
}

/// Why a collection is not compliant (`balancerCollectionStatus.firstComplianceViolation`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Violation {
    /// A draining shard still owns chunks.
    Draining,
    /// A chunk straddles a zone boundary or sits on a shard outside its zone.
    ZoneViolation,
    /// Some group's spread is over the tolerance.
    ChunksImbalance,
}

impl Violation {
    /// MongoDB's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Violation::Draining => "draining",
            Violation::ZoneViolation => "zoneViolation",
            Violation::ChunksImbalance => "chunksImbalance",
        }
    }
}

/// The next action for the collection described by `input`.
pub fn next_action(input: &BalancerInput<'_>) -> Action {
    let layout = Layout::new(input);
    layout
        .zone_split()
        .or_else(|| layout.drain())
        .or_else(|| layout.zone_fix())
        .or_else(|| layout.balance())
        .unwrap_or(Action::Balanced)
}

/// The first way the collection misses its goal, in priority order, or `None` when it is
/// compliant. Unlike [`next_action`] this reports a goal missed even when no action can help
/// (a draining shard whose zone has no other shard, a chunk too big to move usefully).
pub fn first_violation(input: &BalancerInput<'_>) -> Option<Violation> {
    let layout = Layout::new(input);
    let owners = || layout.owner.iter().flatten();
    if owners().any(|&shard| input.shards[shard].draining) {
        return Some(Violation::Draining);
    }
    let misplaced = (0..input.map.chunks.len()).any(|chunk| {
        layout.straddle[chunk].is_some()
            || matches!((layout.zone[chunk], layout.owner[chunk]),
                (Some(zone), Some(shard)) if !input.shards[shard].zones.contains(zone))
    });
    if misplaced {
        return Some(Violation::ZoneViolation);
    }
    let imbalanced = layout.groups().into_iter().any(|zone| {
        let loads = layout.loads(zone);
        let (Some(max), Some(min)) = (loads.values().max(), loads.values().min()) else {
            return false;
        };
        max.bytes - min.bytes > layout.spread_max_bytes(&loads)
    });
    imbalanced.then_some(Violation::ChunksImbalance)
}

/// A shard's share of one group.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
struct Load {
    bytes: u64,
    chunks: usize,
}

/// The input resolved once per decision: each chunk's owner (index into `shards`), zone and
/// the zone boundary it straddles, if any.
struct Layout<'a> {
    input: &'a BalancerInput<'a>,
    /// The owning shard's index in `input.shards`; `None` for an unknown shard.
    owner: Vec<Option<usize>>,
    /// The zone of the range holding the whole chunk; `None` when in no zone or straddling a
    /// boundary.
    zone: Vec<Option<&'a str>>,
    /// The lowest zone boundary strictly inside the chunk.
    straddle: Vec<Option<Document>>,
}

impl<'a> Layout<'a> {
    fn new(input: &'a BalancerInput<'a>) -> Layout<'a> {
        debug_assert_eq!(input.chunk_bytes.len(), input.map.chunks.len());
        let zones: Vec<&ZoneRange> = input
            .zones
            .iter()
            .filter(|z| compare_key_values(&z.min, &z.max) == Ordering::Less)
            .collect();
        let n_chunks = input.map.chunks.len();
        let mut layout = Layout {
            input,
            owner: Vec::with_capacity(n_chunks),
            zone: Vec::with_capacity(n_chunks),
            straddle: Vec::with_capacity(n_chunks),
        };
        for chunk in &input.map.chunks {
            let owner = input.shards.iter().position(|s| s.id == chunk.shard);
            let (zone, straddle) = place(&chunk.min, &chunk.max, &zones);
            layout.owner.push(owner);
            layout.zone.push(zone);
            layout.straddle.push(straddle);
        }
        layout
    }

    fn bytes(&self, chunk: usize) -> u64 {
        self.input.chunk_bytes.get(chunk).copied().unwrap_or(0)
    }

    /// The zones holding chunks, then `None` (the chunks in no zone), in a fixed order.
    fn groups(&self) -> Vec<Option<&'a str>> {
        let names: BTreeSet<&'a str> = self.zone.iter().flatten().copied().collect();
        let mut groups: Vec<Option<&'a str>> = names.into_iter().map(Some).collect();
        groups.push(None);
        groups
    }

    /// Whether shard `shard` may receive chunks of `zone`.
    fn eligible(&self, shard: usize, zone: Option<&str>) -> bool {
        let info = &self.input.shards[shard];
        !info.draining && zone.is_none_or(|zone| info.zones.contains(zone))
    }

    /// The load of each shard eligible for `zone`, counting only that group's chunks.
    fn loads(&self, zone: Option<&str>) -> BTreeMap<usize, Load> {
        let mut loads: BTreeMap<usize, Load> = (0..self.input.shards.len())
            .filter(|&shard| self.eligible(shard, zone))
            .map(|shard| (shard, Load::default()))
            .collect();
        for chunk in 0..self.owner.len() {
            let Some(owner) = self.owner[chunk] else {
                continue;
            };
            if self.zone[chunk] != zone {
                continue;
            }
            if let Some(load) = loads.get_mut(&owner) {
                load.bytes = load.bytes.saturating_add(self.bytes(chunk));
                load.chunks += 1;
            }
        }
        loads
    }

    fn spread_max_bytes(&self, loads: &BTreeMap<usize, Load>) -> u64 {
        let total: u64 = loads.values().map(|l| l.bytes).fold(0, u64::saturating_add);
        let n_shards = u64::try_from(loads.len().max(1)).unwrap_or(u64::MAX);
        self.input.tolerance.spread_max_bytes(total / n_shards)
    }

    /// The least-loaded shard eligible for `zone`, ties to fewer chunks, then to the name.
    fn least_loaded(&self, zone: Option<&str>) -> Option<usize> {
        let loads = self.loads(zone);
        loads
            .into_iter()
            .min_by(|(a, load_a), (b, load_b)| {
                load_a
                    .cmp(load_b)
                    .then_with(|| self.input.shards[*a].id.cmp(&self.input.shards[*b].id))
            })
            .map(|(shard, _)| shard)
    }

    fn move_to(&self, chunk: usize, shard: usize) -> Action {
        Action::Move {
            chunk,
            to: self.input.shards[shard].id.clone(),
        }
    }

    fn zone_split(&self) -> Option<Action> {
        let chunk = self.straddle.iter().position(Option::is_some)?;
        let at = self.straddle[chunk].clone()?;
        Some(Action::SplitAt { chunk, at })
    }

    fn drain(&self) -> Option<Action> {
        (0..self.owner.len()).find_map(|chunk| {
            let owner = self.owner[chunk]?;
            if !self.input.shards[owner].draining {
                return None;
            }
            let to = self.least_loaded(self.zone[chunk])?;
            Some(self.move_to(chunk, to))
        })
    }

    fn zone_fix(&self) -> Option<Action> {
        (0..self.owner.len()).find_map(|chunk| {
            let owner = self.owner[chunk]?;
            let zone = self.zone[chunk]?;
            if self.input.shards[owner].zones.contains(zone) {
                return None;
            }
            let to = self.least_loaded(Some(zone))?;
            Some(self.move_to(chunk, to))
        })
    }

    fn balance(&self) -> Option<Action> {
        self.groups()
            .into_iter()
            .find_map(|zone| self.balance_group(zone))
    }

    /// Tries every donor/recipient pair whose gap is over the tolerance, widest gap first.
    fn balance_group(&self, zone: Option<&str>) -> Option<Action> {
        let loads = self.loads(zone);
        let spread_max_bytes = self.spread_max_bytes(&loads);
        let mut pairs: Vec<(u64, usize, usize)> = Vec::new();
        for (&donor, donor_load) in &loads {
            for (&recipient, recipient_load) in &loads {
                let gap = donor_load.bytes.saturating_sub(recipient_load.bytes);
                if gap > spread_max_bytes {
                    pairs.push((gap, donor, recipient));
                }
            }
        }
        let name = |shard: usize| &self.input.shards[shard].id;
        pairs.sort_by(|a, b| {
            b.0.cmp(&a.0)
                .then_with(|| name(a.1).cmp(name(b.1)))
                .then_with(|| name(a.2).cmp(name(b.2)))
        });
        pairs.into_iter().find_map(|(gap, donor, recipient)| {
            self.pair_action(zone, donor, recipient, gap, spread_max_bytes)
        })
    }

    /// What to do so that `donor` gives `recipient` about half their `gap`: move its largest
    /// chunk not above the half; failing that, its smallest chunk if the overshoot is within
    /// the tolerance; failing that, split that chunk; and if it cannot be split, move it whole
    /// as long as the gap still shrinks.
    fn pair_action(
        &self,
        zone: Option<&str>,
        donor: usize,
        recipient: usize,
        gap: u64,
        spread_max_bytes: u64,
    ) -> Option<Action> {
        assert!(spread_max_bytes < gap);
        let half = gap / 2;
        let candidates: Vec<(usize, u64)> = (0..self.owner.len())
            .filter(|&chunk| self.owner[chunk] == Some(donor) && self.zone[chunk] == zone)
            .map(|chunk| (chunk, self.bytes(chunk)))
            .filter(|&(_, bytes)| bytes > 0)
            .collect();
        let under = candidates
            .iter()
            .filter(|&&(_, bytes)| bytes <= half)
            .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(&a.0)));
        if let Some(&(chunk, _)) = under {
            return Some(self.move_to(chunk, recipient));
        }
        let &(chunk, bytes) = candidates
            .iter()
            .min_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)))?;
        let shrinks = bytes < gap;
        let overshoot = bytes.saturating_mul(2).saturating_sub(gap);
        if shrinks && overshoot <= spread_max_bytes {
            return Some(self.move_to(chunk, recipient));
        }
        if !self.input.unsplittable.contains(&chunk) {
            return Some(Action::SplitMedian { chunk });
        }
        shrinks.then(|| self.move_to(chunk, recipient))
    }
}

/// The zone holding the whole of `[min, max)`, or the lowest zone boundary strictly inside it
/// (any such boundary is a valid split point: it cannot be the key space's own bounds).
fn place<'z>(
    min: &Document,
    max: &Document,
    zones: &[&'z ZoneRange],
) -> (Option<&'z str>, Option<Document>) {
    let inside = |bound: &Document| {
        compare_key_values(min, bound) == Ordering::Less
            && compare_key_values(bound, max) == Ordering::Less
    };
    let straddled = zones
        .iter()
        .flat_map(|zone| [&zone.min, &zone.max])
        .filter(|bound| inside(bound))
        .min_by(|a, b| compare_key_values(a, b));
    if let Some(bound) = straddled {
        return (None, Some(bound.clone()));
    }
    let holder = zones.iter().find(|zone| {
        compare_key_values(&zone.min, min) != Ordering::Greater
            && compare_key_values(max, &zone.max) != Ordering::Greater
    });
    (holder.map(|zone| zone.zone.as_str()), None)
}

/// A minute of the day, `0..1440`, in the config server's local time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct MinuteOfDay(u16);

/// Minutes in a day.
const MINUTES_PER_DAY: u16 = 24 * 60;

impl MinuteOfDay {
    /// The minute `hour:minute`; `None` outside `0..24` hours or `0..60` minutes.
    pub fn new(hour: u16, minute: u16) -> Option<MinuteOfDay> {
        (hour < 24 && minute < 60).then_some(MinuteOfDay(hour * 60 + minute))
    }

    /// The minute `minutes` after midnight, wrapping around at the end of the day.
    pub fn wrapping(minutes: u32) -> MinuteOfDay {
        let minute = minutes % u32::from(MINUTES_PER_DAY);
        MinuteOfDay(u16::try_from(minute).unwrap_or(0))
    }

    /// Parses MongoDB's `"HH:MM"` (one or two hour digits, two minute digits).
    pub fn parse(text: &str) -> Option<MinuteOfDay> {
        let (hour, minute) = text.split_once(':')?;
        let digits = |s: &str, lengths: &[usize]| {
            (lengths.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit()))
                .then(|| s.parse::<u16>().ok())
                .flatten()
        };
        MinuteOfDay::new(digits(hour, &[1, 2])?, digits(minute, &[2])?)
    }

    /// The minute as a number, `0..1440`.
    pub fn get(self) -> u16 {
        debug_assert!(self.0 < MINUTES_PER_DAY);
        self.0
    }
}

/// `activeWindow: {start: "HH:MM", stop: "HH:MM"}`: the balancer only starts rounds inside it.
/// A window whose stop is before its start wraps midnight; equal ends mean the whole day.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ActiveWindow {
    /// The first minute inside.
    pub start: MinuteOfDay,
    /// The first minute outside again.
    pub stop: MinuteOfDay,
}

impl ActiveWindow {
    /// Parses the `activeWindow` document.
    pub fn from_document(window: &Document) -> Result<ActiveWindow, CommandError> {
        let end = |field: &str| {
            let text = window.get_str(field).map_err(|_| {
                CommandError::bad_value(format!(
                    "activeWindow.{field} must be a \"HH:MM\" string, in {window}"
                ))
            })?;
            MinuteOfDay::parse(text).ok_or_else(|| {
                CommandError::bad_value(format!(
                    "activeWindow.{field} '{text}' is not a time of day \"HH:MM\""
                ))
            })
        };
        Ok(ActiveWindow {
            start: end("start")?,
            stop: end("stop")?,
        })
    }

    /// Whether `now` is inside the window.
    pub fn contains(&self, now: MinuteOfDay) -> bool {
        match self.start.cmp(&self.stop) {
            Ordering::Less => self.start <= now && now < self.stop,
            Ordering::Greater => self.start <= now || now < self.stop,
            Ordering::Equal => true,
        }
    }
}

/// The balancer's switch and schedule, from `config.settings {_id: "balancer"}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BalancerSettings {
    /// `stopped: true` or `mode: "off"`.
    pub off: bool,
    /// The active window, when set.
    pub window: Option<ActiveWindow>,
}

impl BalancerSettings {
    /// Reads the settings document; a missing document means running with no window, as in
    /// MongoDB. A malformed window is an error (the caller must not guess when to run).
    pub fn from_document(settings: Option<&Document>) -> Result<BalancerSettings, CommandError> {
        let Some(settings) = settings else {
            return Ok(BalancerSettings {
                off: false,
                window: None,
            });
        };
        let stopped = matches!(settings.get("stopped"), Some(Bson::Boolean(true)));
        let mode_off = matches!(settings.get("mode"), Some(Bson::String(mode)) if mode == "off");
        let window = match settings.get("activeWindow") {
            None | Some(Bson::Null) => None,
            Some(Bson::Document(window)) => Some(ActiveWindow::from_document(window)?),
            Some(other) => {
                return Err(CommandError::type_mismatch("activeWindow", "object", other));
            }
        };
        Ok(BalancerSettings {
            off: stopped || mode_off,
            window,
        })
    }

    /// Whether a round may start at local time `now`.
    pub fn runs_at(&self, now: MinuteOfDay) -> bool {
        !self.off && self.window.is_none_or(|window| window.contains(now))
    }
}

#[cfg(test)]
mod tests;
