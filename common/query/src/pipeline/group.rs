//! `$group` and its accumulators. Groups are keyed by the `keycode` encoding of their `_id`, so
//! keys that MongoDB considers equal (1, 1.0, NumberLong(1)) land in one group; groups come out
//! in the order their first document arrived, which keeps the output deterministic and lets the
//! shard/router split reproduce it exactly.

use std::collections::HashMap;

use bson::{Bson, Document};
use shoal_common::bsonorder;

use crate::error::{LocationCode, QueryError, Result};
use crate::expr::{Expression, Num};
use crate::keycode;

/// A parsed `$group` stage.
#[derive(Clone, Debug)]
pub(super) struct Group {
    id: Expression,
    accumulators: Vec<(String, Accumulator)>,
}

#[derive(Clone, Debug)]
struct Accumulator {
    op: AccOp,
    argument: Expression,
}

/// The accumulators `$group` understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum AccOp {
    Sum,
    Avg,
    Min,
    Max,
    First,
    Last,
    Push,
    AddToSet,
    Count,
    MergeObjects,
    StdDevPop,
    StdDevSamp,
}

pub(super) const ACCUMULATORS: &[(&str, AccOp)] = &[
    ("$sum", AccOp::Sum),
    ("$avg", AccOp::Avg),
    ("$min", AccOp::Min),
    ("$max", AccOp::Max),
    ("$first", AccOp::First),
    ("$last", AccOp::Last),
    ("$push", AccOp::Push),
    ("$addToSet", AccOp::AddToSet),
    ("$count", AccOp::Count),
    ("$mergeObjects", AccOp::MergeObjects),
    ("$stdDevPop", AccOp::StdDevPop),
    ("$stdDevSamp", AccOp::StdDevSamp),
];

/// The running state of one accumulator in one group.
enum State {
    Sum(Num),
    Avg { total: f64, count: u64 },
    Extreme(Option<Bson>),
    First(Option<Bson>),
    Last(Bson),
    List(Vec<Bson>),
    Merged(Document),
    Moments { count: u64, mean: f64, m2: f64 },
}

/// Parses one `{name: {$acc: argument}}` entry of a `$group` spec.
pub(super) fn parse_accumulator<'a>(name: &str, spec: &'a Bson) -> Result<(AccOp, &'a Bson)> {
    if name.contains('.') {
        return Err(QueryError::location(
            LocationCode::GROUP_FIELD_DOT,
            format!("The field name '{name}' cannot contain '.'"),
        ));
    }
    if name.starts_with('$') {
        return Err(QueryError::location(
            LocationCode(40236),
            format!("The field name '{name}' cannot be an operator name"),
        ));
    }
    let Bson::Document(accumulator) = spec else {
        return Err(QueryError::location(
            LocationCode::GROUP_FIELD,
            format!("The field '{name}' must be an accumulator object"),
        ));
    };
    let mut entries = accumulator.iter();
    let (Some((op_name, argument)), None) = (entries.next(), entries.next()) else {
        return Err(QueryError::location(
            LocationCode(40238),
            format!("The field '{name}' must specify one accumulator"),
        ));
    };
    let Some((_, op)) = ACCUMULATORS.iter().find(|(n, _)| n == op_name) else {
        return Err(QueryError::location(
            LocationCode::GROUP_ACCUMULATOR,
            format!("unknown group operator '{op_name}'"),
        ));
    };
    if *op == AccOp::Count && !matches!(argument, Bson::Document(d) if d.is_empty()) {
        return Err(QueryError::location(
            LocationCode(5424200),
            "$count takes no arguments, i.e. $count:{}",
        ));
    }
    Ok((*op, argument))
}

impl Group {
    pub(super) fn parse(argument: &Bson) -> Result<Group> {
        let Bson::Document(spec) = argument else {
            return Err(QueryError::location(
                LocationCode(15947),
                "a group's fields must be specified in an object",
            ));
        };
        let Some(id) = spec.get("_id") else {
            return Err(QueryError::location(
                LocationCode::GROUP_ID,
                "a group specification must include an _id",
            ));
        };
        let mut accumulators = Vec::new();
        for (name, value) in spec {
            if name == "_id" {
                continue;
            }
            let (op, argument) = parse_accumulator(name, value)?;
            let argument = if op == AccOp::Count {
                Bson::Int32(1)
            } else {
                argument.clone()
            };
            accumulators.push((
                name.clone(),
                Accumulator {
                    op,
                    argument: Expression::parse(&argument)?,
                },
            ));
        }
        Ok(Group {
            id: Expression::parse(id)?,
            accumulators,
        })
    }

    /// `$sortByCount: expr` as its `$group` half: `{_id: expr, count: {$sum: 1}}`.
    pub(super) fn sort_by_count(argument: &Bson) -> Result<Group> {
        let valid = matches!(argument, Bson::String(s) if s.starts_with('$'))
            || matches!(argument, Bson::Document(d) if d.keys().next().is_some_and(|k| k.starts_with('$')));
        if !valid {
            return Err(QueryError::location(
                LocationCode(40148),
                "the sortByCount field must be defined as a $-prefixed path or an expression",
            ));
        }
        Ok(Group {
            id: Expression::parse(argument)?,
            accumulators: vec![(
                "count".to_owned(),
                Accumulator {
                    op: AccOp::Sum,
                    argument: Expression::parse(&Bson::Int32(1))?,
                },
            )],
        })
    }

    pub(super) fn run(&self, docs: &[Document]) -> Result<Vec<Document>> {
        let mut keys: Vec<Bson> = Vec::new();
        let mut states: Vec<Vec<State>> = Vec::new();
        let mut index: HashMap<Vec<u8>, usize> = HashMap::new();
        for doc in docs {
            let key = self.id.evaluate_or_null(doc)?;
            let slot = *index
                .entry(keycode::encode_to_vec(&key))
                .or_insert_with(|| {
                    keys.push(key);
                    states.push(
                        self.accumulators
                            .iter()
                            .map(|(_, acc)| State::new(acc.op))
                            .collect(),
                    );
                    keys.len() - 1
                });
            for ((_, accumulator), state) in self.accumulators.iter().zip(states[slot].iter_mut()) {
                state.add(accumulator.op, accumulator.argument.evaluate(doc)?)?;
            }
        }
        let mut out = Vec::with_capacity(keys.len());
        for (key, group_states) in keys.into_iter().zip(states) {
            let mut result = bson::doc! {"_id": key};
            for ((name, accumulator), state) in self.accumulators.iter().zip(group_states) {
                result.insert(name.clone(), state.finish(accumulator.op));
            }
            out.push(result);
        }
        Ok(out)
    }
}

impl State {
    fn new(op: AccOp) -> State {
        match op {
            AccOp::Sum | AccOp::Count => State::Sum(Num::I32(0)),
            AccOp::Avg => State::Avg {
                total: 0.0,
                count: 0,
            },
            AccOp::Min | AccOp::Max => State::Extreme(None),
            AccOp::First => State::First(None),
            AccOp::Last => State::Last(Bson::Null),
            AccOp::Push | AccOp::AddToSet => State::List(Vec::new()),
            AccOp::MergeObjects => State::Merged(Document::new()),
            AccOp::StdDevPop | AccOp::StdDevSamp => State::Moments {
                count: 0,
                mean: 0.0,
                m2: 0.0,
            },
        }
    }

    fn add(&mut self, op: AccOp, value: Option<Bson>) -> Result<()> {
        match self {
            State::Sum(total) => {
                if let Some(number) = value.as_ref().and_then(Num::of) {
                    *total = total.add(number);
                }
            }
            State::Avg { total, count } => {
                if let Some(number) = value.as_ref().and_then(Num::of) {
                    *total += number.as_f64();
                    *count += 1;
                }
            }
            State::Extreme(_) => self.add_extreme(op, value),
            State::First(first) => {
                if first.is_none() {
                    *first = Some(value.unwrap_or(Bson::Null));
                }
            }
            State::Last(last) => *last = value.unwrap_or(Bson::Null),
            State::List(items) => {
                let Some(value) = value else {
                    return Ok(());
                };
                let duplicate = op == AccOp::AddToSet
                    && items
                        .iter()
                        .any(|item| bsonorder::compare(item, &value).is_eq());
                if !duplicate {
                    items.push(value);
                }
            }
            State::Merged(merged) => match value {
                None | Some(Bson::Null) | Some(Bson::Undefined) => {}
                Some(Bson::Document(doc)) => merged.extend(doc),
                Some(other) => {
                    return Err(QueryError::location(
                        LocationCode(40400),
                        format!(
                            "$mergeObjects requires object inputs, but input {other} is of type {}",
                            crate::expr::type_label(&Some(other.clone()))
                        ),
                    ));
                }
            },
            State::Moments { count, mean, m2 } => {
                if let Some(number) = value.as_ref().and_then(Num::of) {
                    let x = number.as_f64();
                    *count += 1;
                    let delta = x - *mean;
                    *mean += delta / *count as f64;
                    *m2 += delta * (x - *mean);
                }
            }
        }
        Ok(())
    }

    /// `$min`/`$max` need to know which one they are; the state alone does not say.
    fn add_extreme(&mut self, op: AccOp, value: Option<Bson>) {
        let State::Extreme(best) = self else {
            return;
        };
        let Some(value) = value.filter(|v| !matches!(v, Bson::Null | Bson::Undefined)) else {
            return;
        };
        let replace = match best {
            None => true,
            Some(current) => {
                let order = bsonorder::compare(&value, current);
                if op == AccOp::Min {
                    order.is_lt()
                } else {
                    order.is_gt()
                }
            }
        };
        if replace {
            *best = Some(value);
        }
    }

    fn finish(self, op: AccOp) -> Bson {
        match self {
            State::Sum(total) => total.to_bson(),
            State::Avg { total, count } => {
                if count == 0 {
                    Bson::Null
                } else {
                    Bson::Double(total / count as f64)
                }
            }
            State::Extreme(best) => best.unwrap_or(Bson::Null),
            State::First(first) => first.unwrap_or(Bson::Null),
            State::Last(last) => last,
            State::List(items) => Bson::Array(items),
            State::Merged(merged) => Bson::Document(merged),
            State::Moments { count, m2, .. } => {
                let divisor = if op == AccOp::StdDevSamp {
                    count.saturating_sub(1)
                } else {
                    count
                };
                if divisor == 0 {
                    Bson::Null
                } else {
                    Bson::Double((m2 / divisor as f64).sqrt())
                }
            }
        }
    }
}
