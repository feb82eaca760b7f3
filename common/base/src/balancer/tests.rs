//! Tests of the balancer policy: one case per rule, then a seeded simulation that applies the
//! policy's actions to random layouts until it says balanced and checks the goal was met.

use bson::{Bson, doc, oid::ObjectId};
use rand::{Rng, SeedableRng, rngs::StdRng};

use super::*;
use crate::{
    chunks::{Chunk, ShardKeyPattern},
    ids::{ChunkVersion, Epoch},
};

const MIB: u64 = 1 << 20;

fn shard_id(name: &str) -> ShardId {
    ShardId::new(name).unwrap()
}

fn shard(name: &str, draining: bool, zones: &[&str]) -> ShardInfo {
    ShardInfo {
        id: shard_id(name),
        draining,
        zones: zones.iter().map(|z| z.to_string()).collect(),
    }
}

fn key(value: i64) -> Document {
    doc! {"k": value}
}

/// Chunks `[MinKey, b0), [b0, b1), ..., [bn, MaxKey)` owned by `owners` in order.
fn map_of(bounds: &[i64], owners: &[&str]) -> ChunkMap {
    assert_eq!(owners.len(), bounds.len() + 1);
    let pattern = ShardKeyPattern::parse(&doc! {"k": 1}).unwrap();
    let version = ChunkVersion::initial(Epoch(ObjectId::new()));
    let mut mins = vec![pattern.global_min()];
    mins.extend(bounds.iter().map(|&b| key(b)));
    let mut maxes: Vec<Document> = bounds.iter().map(|&b| key(b)).collect();
    maxes.push(pattern.global_max());
    let chunks = mins
        .into_iter()
        .zip(maxes)
        .zip(owners)
        .map(|((min, max), owner)| Chunk {
            min,
            max,
            shard: shard_id(owner),
            version,
        })
        .collect();
    ChunkMap::new(pattern, chunks).unwrap()
}

fn zone(min: i64, max: i64, name: &str) -> ZoneRange {
    ZoneRange {
        min: key(min),
        max: key(max),
        zone: name.to_owned(),
    }
}

struct Case {
    map: ChunkMap,
    bytes: Vec<u64>,
    shards: Vec<ShardInfo>,
    zones: Vec<ZoneRange>,
    unsplittable: BTreeSet<usize>,
}

impl Case {
    fn new(bounds: &[i64], owners: &[&str], bytes: &[u64], shards: Vec<ShardInfo>) -> Case {
        Case {
            map: map_of(bounds, owners),
            bytes: bytes.to_vec(),
            shards,
            zones: Vec::new(),
            unsplittable: BTreeSet::new(),
        }
    }

    fn input(&self) -> BalancerInput<'_> {
        BalancerInput {
            map: &self.map,
            chunk_bytes: &self.bytes,
            shards: &self.shards,
            zones: &self.zones,
            unsplittable: &self.unsplittable,
            tolerance: Tolerance::default(),
        }
    }

    fn next(&self) -> Action {
        next_action(&self.input())
    }

    fn violation(&self) -> Option<Violation> {
        first_violation(&self.input())
    }
}

fn moves(chunk: usize, to: &str) -> Action {
    Action::Move {
        chunk,
        to: shard_id(to),
    }
}

fn two_shards() -> Vec<ShardInfo> {
    vec![shard("a", false, &[]), shard("b", false, &[])]
}

#[test]
fn one_shard_or_no_data_is_balanced() {
    let alone = Case::new(
        &[10],
        &["a", "a"],
        &[50 * MIB, 50 * MIB],
        vec![shard("a", false, &[])],
    );
    assert_eq!(alone.next(), Action::Balanced);
    assert_eq!(alone.violation(), None);
    let empty = Case::new(&[10, 20], &["a", "a", "a"], &[0, 0, 0], two_shards());
    assert_eq!(empty.next(), Action::Balanced);
    assert_eq!(empty.violation(), None);
}

#[test]
fn spreads_below_the_floor_do_not_churn() {
    let tiny = Case::new(&[10], &["a", "a"], &[MIB / 2, MIB / 2], two_shards());
    assert_eq!(tiny.next(), Action::Balanced);
    assert_eq!(tiny.violation(), None);
}

#[test]
fn moves_the_largest_chunk_not_above_half_the_gap() {
    let case = Case::new(
        &[10, 20, 30],
        &["a", "a", "a", "a"],
        &[10 * MIB, 30 * MIB, 40 * MIB, 20 * MIB],
        two_shards(),
    );
    // Gap 100 MiB: half is 50, the largest chunk up to that is the 40 MiB one.
    assert_eq!(case.next(), moves(2, "b"));
    assert_eq!(case.violation(), Some(Violation::ChunksImbalance));
}

#[test]
fn a_chunk_overshooting_within_tolerance_moves_instead_of_splitting() {
    // a: 51 + 49 = 100, b: 0. Half the gap is 50; the smaller chunk is 49: moved.
    let under = Case::new(&[10], &["a", "a"], &[51 * MIB, 49 * MIB], two_shards());
    assert_eq!(under.next(), moves(1, "b"));
    // a: 30 + 30 MiB, b: 0.5 MiB. Half the gap is 29.75 MiB, below both chunks, but moving
    // one overshoots by only 0.5 MiB, within the tolerance: no split needed.
    let over = Case::new(
        &[10, 20],
        &["a", "a", "b"],
        &[30 * MIB, 30 * MIB, MIB / 2],
        two_shards(),
    );
    assert_eq!(over.next(), moves(0, "b"));
}

#[test]
fn a_chunk_too_big_to_move_is_split_at_its_median() {
    let mut case = Case::new(&[10], &["a", "b"], &[100 * MIB, 10 * MIB], two_shards());
    assert_eq!(case.next(), Action::SplitMedian { chunk: 0 });
    // Known unsplittable: moving 100 MiB against a 90 MiB gap would not shrink it.
    case.unsplittable.insert(0);
    assert_eq!(case.next(), Action::Balanced);
    assert_eq!(case.violation(), Some(Violation::ChunksImbalance));
    // Unsplittable chunks that still shrink the gap (60 < 110) move whole.
    let mut whole = Case::new(
        &[10, 20],
        &["a", "a", "b"],
        &[60 * MIB, 60 * MIB, 10 * MIB],
        two_shards(),
    );
    whole.unsplittable.extend([0, 1]);
    assert_eq!(whole.next(), moves(0, "b"));
}

#[test]
fn empty_chunks_never_move_for_balance() {
    // b owns many empty chunks, a none: nothing to even out.
    let case = Case::new(
        &[10, 20, 30],
        &["b", "b", "b", "b"],
        &[0, 0, 0, 0],
        two_shards(),
    );
    assert_eq!(case.next(), Action::Balanced);
    // The donor's empty chunk is skipped in favour of one holding data.
    let mixed = Case::new(
        &[10, 20],
        &["a", "a", "a"],
        &[0, 20 * MIB, 20 * MIB],
        two_shards(),
    );
    assert_eq!(mixed.next(), moves(1, "b"));
}

#[test]
fn a_lone_chunk_on_the_only_loaded_shard_does_not_ping_pong() {
    let mut case = Case::new(&[], &["a"], &[100 * MIB], two_shards());
    case.unsplittable.insert(0);
    assert_eq!(case.next(), Action::Balanced);
}

#[test]
fn the_widest_gap_goes_first_and_recipients_are_the_lightest() {
    let shards = vec![
        shard("a", false, &[]),
        shard("b", false, &[]),
        shard("c", false, &[]),
    ];
    let case = Case::new(
        &[10, 20, 30],
        &["a", "a", "b", "b"],
        &[30 * MIB, 30 * MIB, 20 * MIB, 10 * MIB],
        shards,
    );
    // a has 60, b 30, c 0: a gives c up to 30 MiB.
    assert_eq!(case.next(), moves(0, "c"));
}

#[test]
fn draining_shards_empty_first_even_of_empty_chunks() {
    let shards = vec![
        shard("a", true, &[]),
        shard("b", false, &[]),
        shard("c", false, &[]),
    ];
    let case = Case::new(&[10, 20], &["a", "b", "c"], &[0, 5 * MIB, 3 * MIB], shards);
    assert_eq!(case.next(), moves(0, "c"));
    assert_eq!(case.violation(), Some(Violation::Draining));
}

#[test]
fn draining_ties_go_to_the_shard_with_fewer_chunks() {
    let shards = vec![
        shard("a", true, &[]),
        shard("b", false, &[]),
        shard("c", false, &[]),
    ];
    let case = Case::new(&[10, 20], &["a", "b", "b"], &[0, 0, 0], shards);
    assert_eq!(case.next(), moves(0, "c"));
}

#[test]
fn draining_keeps_chunks_in_their_zone() {
    let shards = vec![
        shard("a", true, &["east"]),
        shard("b", false, &[]),
        shard("c", false, &["east"]),
    ];
    let mut case = Case::new(
        &[10, 20],
        &["b", "a", "b"],
        &[MIB / 4, MIB, MIB / 4],
        shards,
    );
    case.zones = vec![zone(10, 20, "east")];
    assert_eq!(case.next(), moves(1, "c"));
    // With no other shard in the zone the chunk has nowhere to go: reported, not moved.
    case.shards[2].zones.clear();
    assert_eq!(case.next(), Action::Balanced);
    assert_eq!(case.violation(), Some(Violation::Draining));
}

#[test]
fn chunks_straddling_a_zone_boundary_split_there_first() {
    let shards = vec![shard("a", true, &[]), shard("b", false, &["z"])];
    let mut case = Case::new(&[100], &["a", "b"], &[MIB, MIB], shards);
    case.zones = vec![zone(20, 50, "z")];
    assert_eq!(
        case.next(),
        Action::SplitAt {
            chunk: 0,
            at: key(20)
        }
    );
    assert_eq!(case.violation(), Some(Violation::Draining));
    case.map.split_at(&key(20)).unwrap();
    case.bytes = vec![MIB, 0, MIB];
    assert_eq!(
        case.next(),
        Action::SplitAt {
            chunk: 1,
            at: key(50)
        }
    );
}

#[test]
fn compound_boundaries_holding_min_key_are_split_points() {
    let pattern = ShardKeyPattern::parse(&doc! {"a": 1, "b": 1}).unwrap();
    let chunk = Chunk {
        min: pattern.global_min(),
        max: pattern.global_max(),
        shard: shard_id("a"),
        version: ChunkVersion::initial(Epoch(ObjectId::new())),
    };
    let case = Case {
        map: ChunkMap::new(pattern, vec![chunk]).unwrap(),
        bytes: vec![MIB],
        shards: vec![shard("a", false, &[]), shard("b", false, &["z"])],
        zones: vec![ZoneRange {
            min: doc! {"a": 5, "b": Bson::MinKey},
            max: doc! {"a": 9, "b": 1},
            zone: "z".into(),
        }],
        unsplittable: BTreeSet::new(),
    };
    let at = doc! {"a": 5, "b": Bson::MinKey};
    let expected = Action::SplitAt {
        chunk: 0,
        at: at.clone(),
    };
    assert_eq!(case.next(), expected);
    let mut split = case.map.clone();
    split.split_at(&at).unwrap();
}

#[test]
fn chunks_outside_their_zone_move_into_it() {
    let shards = vec![
        shard("a", false, &[]),
        shard("b", false, &["z"]),
        shard("c", false, &["z"]),
    ];
    let mut case = Case::new(
        &[10, 20, 30],
        &["a", "a", "b", "a"],
        &[MIB, 0, 0, 0],
        shards,
    );
    case.zones = vec![zone(10, 30, "z")];
    // Chunk 1 is in zone z on a; c has fewer z chunks than b.
    assert_eq!(case.next(), moves(1, "c"));
    assert_eq!(case.violation(), Some(Violation::ZoneViolation));
}

#[test]
fn zones_balance_separately_from_the_rest() {
    let shards = vec![
        shard("a", false, &["z"]),
        shard("b", false, &["z"]),
        shard("c", false, &[]),
    ];
    let mut case = Case::new(
        &[10, 20, 30],
        &["c", "a", "a", "c"],
        &[50 * MIB, 40 * MIB, 40 * MIB, 50 * MIB],
        shards,
    );
    case.zones = vec![zone(10, 30, "z")];
    // Zone z: a 80, b 0 (c is not eligible). Zone-less chunks: c 100, a and b 0.
    assert_eq!(case.next(), moves(1, "b"));
    case.map.chunks[1].shard = shard_id("b");
    assert_eq!(case.next(), moves(0, "a"));
}

#[test]
fn chunks_of_unknown_shards_are_left_alone() {
    let case = Case::new(&[10], &["gone", "a"], &[90 * MIB, 0], two_shards());
    assert_eq!(case.next(), Action::Balanced);
    assert_eq!(case.violation(), None);
}

#[test]
fn tolerance_has_a_floor_and_a_relative_part() {
    let tolerance = Tolerance::default();
    assert_eq!(tolerance.spread_max_bytes(0), SPREAD_FLOOR_BYTES);
    assert_eq!(tolerance.spread_max_bytes(1000 * MIB), 50 * MIB);
    assert_eq!(tolerance.spread_max_bytes(u64::MAX), u64::MAX / 100);
}

#[test]
fn violation_names_are_mongodbs() {
    assert_eq!(Violation::Draining.as_str(), "draining");
    assert_eq!(Violation::ZoneViolation.as_str(), "zoneViolation");
    assert_eq!(Violation::ChunksImbalance.as_str(), "chunksImbalance");
}

#[test]
fn windows_parse_and_wrap_midnight() {
    let at = |text: &str| MinuteOfDay::parse(text).unwrap();
    assert_eq!(at("0:05").get(), 5);
    assert_eq!(at("23:59").get(), 1439);
    assert_eq!(MinuteOfDay::wrapping(1440 + 61), at("1:01"));
    for bad in [
        "24:00", "12:60", "12", "12:5", "a:00", "-1:00", "123:00", " 1:00", "",
    ] {
        assert_eq!(MinuteOfDay::parse(bad), None, "{bad}");
    }
    let day = ActiveWindow::from_document(&doc! {"start": "08:00", "stop": "17:30"}).unwrap();
    assert!(day.contains(at("08:00")));
    assert!(day.contains(at("17:29")));
    assert!(!day.contains(at("17:30")));
    assert!(!day.contains(at("07:59")));
    let night = ActiveWindow::from_document(&doc! {"start": "23:00", "stop": "6:00"}).unwrap();
    assert!(night.contains(at("23:00")));
    assert!(night.contains(at("0:00")));
    assert!(night.contains(at("5:59")));
    assert!(!night.contains(at("6:00")));
    assert!(!night.contains(at("22:59")));
    let always = ActiveWindow::from_document(&doc! {"start": "10:00", "stop": "10:00"}).unwrap();
    assert!(always.contains(at("3:00")));
    assert!(ActiveWindow::from_document(&doc! {"start": "10:00"}).is_err());
    assert!(ActiveWindow::from_document(&doc! {"start": 10, "stop": "11:00"}).is_err());
}

#[test]
fn settings_switch_the_balancer_and_its_window() {
    let noon = MinuteOfDay::new(12, 0).unwrap();
    let night = MinuteOfDay::new(2, 0).unwrap();
    let absent = BalancerSettings::from_document(None).unwrap();
    assert!(absent.runs_at(noon));
    let parse = |d: Document| BalancerSettings::from_document(Some(&d)).unwrap();
    assert!(!parse(doc! {"_id": "balancer", "stopped": true}).runs_at(noon));
    assert!(!parse(doc! {"_id": "balancer", "mode": "off", "stopped": false}).runs_at(noon));
    assert!(parse(doc! {"_id": "balancer", "mode": "full", "stopped": false}).runs_at(noon));
    let windowed = parse(doc! {"mode": "full", "activeWindow": {"start": "1:00", "stop": "3:00"}});
    assert!(windowed.runs_at(night));
    assert!(!windowed.runs_at(noon));
    assert!(parse(doc! {"activeWindow": Bson::Null}).runs_at(noon));
    let bad = doc! {"activeWindow": {"start": "25:00", "stop": "3:00"}};
    assert!(BalancerSettings::from_document(Some(&bad)).is_err());
    let wrong_type = doc! {"activeWindow": "1:00-3:00"};
    assert!(BalancerSettings::from_document(Some(&wrong_type)).is_err());
}

// ---- Simulation ----

/// The logical key space of simulated chunks: the first chunk's `MinKey` stands for 0 and the
/// last one's `MaxKey` for this.
const KEY_SPACE: i64 = 1 << 40;
/// Actions one simulated layout may take before the test calls it a livelock.
const SIM_ACTIONS_MAX: usize = 20_000;
/// Seeds each simulation test runs.
const SIM_SEEDS: u64 = 300;

/// A collection whose chunks know their key range and bytes, so splits can be simulated.
struct Sim {
    map: ChunkMap,
    bytes: Vec<u64>,
    /// `[lo, hi)` per chunk, parallel to `map.chunks`.
    range: Vec<(i64, i64)>,
    /// Chunks that refuse a median split (one key value), parallel to `map.chunks`.
    jumbo: Vec<bool>,
    shards: Vec<ShardInfo>,
    /// `[lo, hi)` and zone name.
    zones: Vec<(i64, i64, String)>,
}

impl Sim {
    fn random(rng: &mut StdRng, with_zones: bool, with_jumbo: bool) -> Sim {
        let n_shards = rng.random_range(2..=6);
        let n_chunks: usize = rng.random_range(1..=40);
        let stride = KEY_SPACE / n_chunks as i64;
        let bounds: Vec<i64> = (1..n_chunks as i64)
            .map(|i| i * stride + rng.random_range(-stride / 4..stride / 4))
            .collect();
        let names: Vec<String> = (0..n_shards).map(|i| format!("s{i}")).collect();
        let piled = rng.random_bool(0.5);
        let owners: Vec<&str> = (0..n_chunks)
            .map(|_| {
                let owner = if piled {
                    0
                } else {
                    rng.random_range(0..n_shards)
                };
                names[owner].as_str()
            })
            .collect();
        let bytes: Vec<u64> = (0..n_chunks)
            .map(|_| {
                if rng.random_bool(0.2) {
                    0
                } else {
                    rng.random_range(1..=64 * MIB)
                }
            })
            .collect();
        let mut edges = vec![0];
        edges.extend(bounds.iter().copied());
        edges.push(KEY_SPACE);
        let range = edges.windows(2).map(|w| (w[0], w[1])).collect();
        let jumbo = (0..n_chunks)
            .map(|_| with_jumbo && rng.random_bool(0.2))
            .collect();
        let mut shards: Vec<ShardInfo> = names
            .iter()
            .map(|name| shard(name, rng.random_bool(0.2), &[]))
            .collect();
        shards[rng.random_range(0..n_shards)].draining = false;
        let zones = if with_zones {
            random_zones(rng, &mut shards)
        } else {
            Vec::new()
        };
        Sim {
            map: map_of(&bounds, &owners),
            bytes,
            range,
            jumbo,
            shards,
            zones,
        }
    }

    fn zone_ranges(&self) -> Vec<ZoneRange> {
        self.zones
            .iter()
            .map(|(lo, hi, name)| zone(*lo, *hi, name))
            .collect()
    }

    fn unsplittable(&self) -> BTreeSet<usize> {
        (0..self.range.len())
            .filter(|&i| self.jumbo[i] || self.range[i].1 - self.range[i].0 < 2)
            .collect()
    }

    fn owner(&self, chunk: usize) -> &ShardInfo {
        let id = &self.map.chunks[chunk].shard;
        self.shards.iter().find(|s| &s.id == id).unwrap()
    }

    fn zone_of(&self, chunk: usize) -> Option<&str> {
        let (lo, hi) = self.range[chunk];
        self.zones
            .iter()
            .find(|(zlo, zhi, _)| *zlo <= lo && hi <= *zhi)
            .map(|(_, _, name)| name.as_str())
    }

    fn straddles(&self, chunk: usize) -> bool {
        let (lo, hi) = self.range[chunk];
        self.zones
            .iter()
            .any(|(zlo, zhi, _)| (lo < *zlo && *zlo < hi) || (lo < *zhi && *zhi < hi))
    }

    fn eligible(&self, shard: &ShardInfo, zone: Option<&str>) -> bool {
        !shard.draining && zone.is_none_or(|z| shard.zones.contains(z))
    }

    /// Bytes per eligible shard of one group, by shard name.
    fn loads(&self, zone: Option<&str>) -> BTreeMap<ShardId, u64> {
        let mut loads: BTreeMap<ShardId, u64> = self
            .shards
            .iter()
            .filter(|s| self.eligible(s, zone))
            .map(|s| (s.id.clone(), 0))
            .collect();
        for chunk in 0..self.map.chunks.len() {
            if self.zone_of(chunk) == zone
                && let Some(load) = loads.get_mut(&self.map.chunks[chunk].shard)
            {
                *load += self.bytes[chunk];
            }
        }
        loads
    }

    fn split(&mut self, chunk: usize, at: i64) {
        let (lo, hi) = self.range[chunk];
        assert!(lo < at && at < hi);
        let bytes = self.bytes[chunk];
        let lower = (u128::from(bytes) * (at - lo) as u128 / (hi - lo) as u128) as u64;
        self.map.split_at(&key(at)).unwrap();
        self.bytes.splice(chunk..=chunk, [lower, bytes - lower]);
        self.range.splice(chunk..=chunk, [(lo, at), (at, hi)]);
        let jumbo = self.jumbo[chunk];
        self.jumbo.insert(chunk, jumbo);
    }

    /// Applies `action` after checking it is a legal one; `false` once balanced.
    fn apply(&mut self, action: Action, seed: u64) -> bool {
        match action {
            Action::Balanced => return false,
            Action::SplitAt { chunk, at } => {
                let at = at.get_i64("k").unwrap();
                let on_boundary = self.zones.iter().any(|(lo, hi, _)| at == *lo || at == *hi);
                assert!(
                    on_boundary,
                    "seed {seed}: split at {at} is no zone boundary"
                );
                self.split(chunk, at);
            }
            Action::SplitMedian { chunk } => {
                assert!(
                    !self.unsplittable().contains(&chunk),
                    "seed {seed}: split of unsplittable chunk"
                );
                let (lo, hi) = self.range[chunk];
                self.split(chunk, lo + (hi - lo) / 2);
            }
            Action::Move { chunk, to } => self.apply_move(chunk, to, seed),
        }
        true
    }

    fn apply_move(&mut self, chunk: usize, to: ShardId, seed: u64) {
        let from = self.owner(chunk).clone();
        let zone = self.zone_of(chunk).map(str::to_owned);
        let recipient = self.shards.iter().find(|s| s.id == to).unwrap();
        assert_ne!(from.id, to, "seed {seed}: move to the owner");
        assert!(
            self.eligible(recipient, zone.as_deref()),
            "seed {seed}: move of chunk {chunk} to ineligible {to}"
        );
        let for_balance = self.eligible(&from, zone.as_deref());
        let before = self.loads(zone.as_deref());
        self.map.chunks[chunk].shard = to.clone();
        if !for_balance {
            return;
        }
        assert!(
            self.bytes[chunk] > 0,
            "seed {seed}: empty chunk moved for balance"
        );
        let after = self.loads(zone.as_deref());
        let gap_before = before[&from.id].abs_diff(before[&to]);
        let gap_after = after[&from.id].abs_diff(after[&to]);
        assert!(
            gap_after < gap_before,
            "seed {seed}: move did not shrink the gap"
        );
    }

    fn run(&mut self, seed: u64) {
        for _ in 0..SIM_ACTIONS_MAX {
            let unsplittable = self.unsplittable();
            let zones = self.zone_ranges();
            let input = BalancerInput {
                map: &self.map,
                chunk_bytes: &self.bytes,
                shards: &self.shards,
                zones: &zones,
                unsplittable: &unsplittable,
                tolerance: Tolerance::default(),
            };
            let action = next_action(&input);
            if !self.apply(action, seed) {
                return;
            }
        }
        panic!("seed {seed}: not balanced after {SIM_ACTIONS_MAX} actions");
    }

    /// Draining shards are empty, zones hold, no chunk straddles a zone boundary.
    fn check_placement(&self, seed: u64) {
        for chunk in 0..self.map.chunks.len() {
            let owner = self.owner(chunk);
            assert!(
                !owner.draining,
                "seed {seed}: chunk {chunk} left on draining {}",
                owner.id
            );
            assert!(
                !self.straddles(chunk),
                "seed {seed}: chunk {chunk} straddles a zone"
            );
            if let Some(zone) = self.zone_of(chunk) {
                assert!(
                    owner.zones.contains(zone),
                    "seed {seed}: chunk {chunk} outside {zone}"
                );
            }
        }
    }

    /// Every eligible shard of every group is within the goal of the group's mean.
    fn check_balance(&self, seed: u64) {
        let mut groups: Vec<Option<&str>> = self.zones.iter().map(|z| Some(z.2.as_str())).collect();
        groups.push(None);
        for group in groups {
            let loads = self.loads(group);
            let mean = loads.values().sum::<u64>() as f64 / loads.len() as f64;
            let allowed =
                (mean * GOAL_PERCENT_OF_MEAN as f64 / 100.0).max(SPREAD_FLOOR_BYTES as f64);
            for (shard, load) in &loads {
                let off = (*load as f64 - mean).abs();
                assert!(
                    off <= allowed,
                    "seed {seed}: {shard} has {load} bytes, mean {mean} ({group:?})"
                );
            }
        }
    }
}

/// One or two disjoint zones, each given to one or two shards, one of them not draining.
fn random_zones(rng: &mut StdRng, shards: &mut [ShardInfo]) -> Vec<(i64, i64, String)> {
    let n_zones = rng.random_range(1..=2);
    let mut points: Vec<i64> = (0..2 * n_zones)
        .map(|_| rng.random_range(1..KEY_SPACE))
        .collect();
    points.sort_unstable();
    points.dedup();
    let mut zones = Vec::new();
    for (i, pair) in points.chunks_exact(2).enumerate() {
        let name = format!("z{i}");
        for _ in 0..rng.random_range(1..=2) {
            let at = rng.random_range(0..shards.len());
            shards[at].zones.insert(name.clone());
        }
        let holder = shards.iter().position(|s| s.zones.contains(&name)).unwrap();
        shards[holder].draining = false;
        zones.push((pair[0], pair[1], name));
    }
    zones
}

#[test]
fn simulated_layouts_end_balanced_within_the_goal() {
    for seed in 0..SIM_SEEDS {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut sim = Sim::random(&mut rng, false, false);
        sim.run(seed);
        sim.check_placement(seed);
        sim.check_balance(seed);
        let unsplittable = sim.unsplittable();
        let input = BalancerInput {
            map: &sim.map,
            chunk_bytes: &sim.bytes,
            shards: &sim.shards,
            zones: &[],
            unsplittable: &unsplittable,
            tolerance: Tolerance::default(),
        };
        assert_eq!(first_violation(&input), None, "seed {seed}");
    }
}

#[test]
fn simulated_zoned_layouts_respect_zones_and_balance_each() {
    for seed in 0..SIM_SEEDS {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut sim = Sim::random(&mut rng, true, false);
        sim.run(seed);
        sim.check_placement(seed);
        sim.check_balance(seed);
    }
}

#[test]
fn simulated_layouts_with_jumbo_chunks_settle_and_drain() {
    for seed in 0..SIM_SEEDS {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut sim = Sim::random(&mut rng, true, true);
        sim.run(seed);
        sim.check_placement(seed);
    }
}
