//! `explain` of `find`, `count`, `distinct`, `aggregate` (also as `aggregate` with
//! `explain: true`), `update`, `delete` and `findAndModify`: the chosen plan (`COLLSCAN`, or
//! `FETCH` over an `IXSCAN` with its bounds) and execution statistics from actually running the
//! query, as verbosity `executionStats` does. Writes are explained without writing: only their
//! query part runs.

use std::time::Instant;

use bson::{Bson, Document, doc};
use shoal_common::{CommandError, ErrorCode, Namespace};

use crate::{
    aggregate::AggregateRequest,
    args::{Fields, collection_ns, documents},
    catalog,
    cursor::Source,
    engine::Engine,
    matching::count_matching,
    plan::{self, Plan, QueryShape},
    read::{CountRequest, DistinctRequest, FindRequest, hint_field, number},
    scan::ExecStats,
    txn::Direct,
};

const VERBOSITIES: &[&str] = &["queryPlanner", "executionStats", "allPlansExecution"];

/// What one explained query did.
struct Explained {
    ns: String,
    filter: Document,
    plan: Option<Plan>,
    returned: u64,
    stats: ExecStats,
}

impl Explained {
    fn reply(self, started: Instant) -> Document {
        let winning = match &self.plan {
            Some(plan) => plan.winning_plan(&self.filter),
            None => doc! {"stage": "EOF"},
        };
        let millis = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
        doc! {
            "queryPlanner": {
                "namespace": self.ns,
                "indexFilterSet": false,
                "parsedQuery": self.filter,
                "winningPlan": winning,
                "rejectedPlans": [],
            },
            "executionStats": {
                "executionSuccess": true,
                "nReturned": number(self.returned),
                "executionTimeMillis": number(u64::try_from(millis).unwrap_or(0)),
                "totalKeysExamined": number(self.stats.keys_examined),
                "totalDocsExamined": number(self.stats.docs_examined),
            },
        }
    }
}

fn add(stats: &mut ExecStats, more: ExecStats) {
    stats.keys_examined += more.keys_examined;
    stats.docs_examined += more.docs_examined;
}

impl Engine {
    /// `{explain: {<command>}, verbosity?}`.
    pub(crate) fn explain(&self, db: &str, command: &Document) -> Result<Document, CommandError> {
        let inner = match command.get("explain") {
            Some(Bson::Document(inner)) => inner,
            Some(other) => return Err(CommandError::type_mismatch("explain", "object", other)),
            None => return Err(Fields::new(command, "explain").missing("explain")),
        };
        if let Some(verbosity) = Fields::new(command, "explain").str("verbosity")?
            && !VERBOSITIES.contains(&verbosity)
        {
            return Err(CommandError::bad_value(format!(
                "verbosity string must be one of {{'queryPlanner', 'executionStats', 'allPlansExecution'}}, got '{verbosity}'"
            )));
        }
        let started = Instant::now();
        let name = inner.keys().next().map_or("", String::as_str);
        let explained = match name {
            "find" => self.explain_find(db, inner)?,
            "count" => self.explain_count(db, inner)?,
            "distinct" => self.explain_distinct(db, inner)?,
            "aggregate" => return self.explain_aggregate(db, inner),
            "update" | "delete" => self.explain_write(db, name, inner)?,
            "findAndModify" | "findandmodify" => self.explain_find_and_modify(db, name, inner)?,
            other => {
                return Err(CommandError::new(
                    ErrorCode::COMMAND_NOT_FOUND,
                    format!("Explain failed due to unknown command: {other}"),
                ));
            }
        };
        Ok(explained.reply(started))
    }

    fn explain_find(&self, db: &str, command: &Document) -> Result<Explained, CommandError> {
        let request = FindRequest::parse(db, command)?;
        let ns = request.ns.to_string();
        let mut explained = Explained {
            ns: ns.clone(),
            filter: request.filter_doc.clone(),
            plan: None,
            returned: 0,
            stats: ExecStats::default(),
        };
        let Some(entry) = catalog::lookup(&Direct(self.kv.as_ref()), &ns)? else {
            return Ok(explained);
        };
        let plan = plan::choose(&entry, request.shape())?;
        let mut source = self.find_source(&request, &plan, &mut explained.stats)?;
        explained.returned = self.drain(&mut source)?;
        if let Source::Scan(state) = &source {
            add(&mut explained.stats, state.scan.stats);
        }
        explained.plan = Some(plan);
        Ok(explained)
    }

    fn explain_count(&self, db: &str, command: &Document) -> Result<Explained, CommandError> {
        let request = CountRequest::parse(db, command)?;
        let reader = Direct(self.kv.as_ref());
        let mut explained = Explained {
            ns: request.ns.clone(),
            filter: request.query.clone(),
            plan: None,
            returned: 0,
            stats: ExecStats::default(),
        };
        if let Some(entry) = catalog::lookup(&reader, &request.ns)? {
            let plan = plan::choose(&entry, request.shape())?;
            let (n, stats) = count_matching(
                &reader,
                &entry,
                &request.query,
                Some(&plan),
                request.skip,
                request.limit,
            )?;
            explained.returned = n;
            explained.stats = stats;
            explained.plan = Some(plan);
        }
        Ok(explained)
    }

    fn explain_distinct(&self, db: &str, command: &Document) -> Result<Explained, CommandError> {
        let request = DistinctRequest::parse(db, command)?;
        let mut explained = Explained {
            ns: request.ns.clone(),
            filter: request.query.clone(),
            plan: None,
            returned: 0,
            stats: ExecStats::default(),
        };
        if let Some(entry) = catalog::lookup(&Direct(self.kv.as_ref()), &request.ns)? {
            let plan = plan::choose(&entry, QueryShape::filter(&request.query))?;
            let (values, stats) = self.distinct_values(&request, &plan)?;
            explained.returned = values.len() as u64;
            explained.stats = stats;
            explained.plan = Some(plan);
        }
        Ok(explained)
    }

    /// `aggregate` with `explain: true`, or `explain: {aggregate: ...}`.
    pub(crate) fn explain_aggregate(
        &self,
        db: &str,
        command: &Document,
    ) -> Result<Document, CommandError> {
        let started = Instant::now();
        let fields = Fields::new(command, "aggregate");
        let stages = fields
            .array("pipeline")?
            .ok_or_else(|| fields.missing("pipeline"))?;
        let hint = hint_field(command, "aggregate")?;
        let ns = match command.get("aggregate") {
            Some(Bson::String(coll)) => Namespace::new(db, coll)?,
            _ => {
                return Err(CommandError::new(
                    ErrorCode::INVALID_NAMESPACE,
                    "explain of aggregate needs a collection name",
                ));
            }
        };
        let filter = AggregateRequest::new(stages, None).filter;
        let (results, planned) = self.aggregate_collection(&ns, stages, hint)?;
        let (plan, stats) = match planned {
            Some((plan, stats)) => (Some(plan), stats),
            None => (None, ExecStats::default()),
        };
        let explained = Explained {
            ns: ns.to_string(),
            filter,
            plan,
            returned: results.len() as u64,
            stats,
        };
        Ok(explained.reply(started))
    }

    /// `update` or `delete`: the query of the first statement, run without writing.
    fn explain_write(
        &self,
        db: &str,
        name: &str,
        command: &Document,
    ) -> Result<Explained, CommandError> {
        let ns = collection_ns(db, command, name)?.to_string();
        let fields = Fields::new(command, name);
        let list = if name == "update" {
            "updates"
        } else {
            "deletes"
        };
        let items = fields.array(list)?.ok_or_else(|| fields.missing(list))?;
        let label = format!("{name}.{list}");
        let statements = documents(items, &label)?;
        let statement = statements.first().ok_or_else(|| {
            CommandError::bad_value(format!("explain of {name} needs one statement"))
        })?;
        let statement_fields = Fields::new(statement, &label);
        let query = statement_fields
            .doc("q")?
            .ok_or_else(|| statement_fields.missing("q"))?;
        let just_one = if name == "update" {
            !statement_fields.flag("multi", false)?
        } else {
            statement_fields.i64("limit")?.unwrap_or(0) == 1
        };
        let hint = hint_field(statement, &label)?;
        self.explain_query(ns, query, None, hint.as_ref(), just_one)
    }

    fn explain_find_and_modify(
        &self,
        db: &str,
        name: &str,
        command: &Document,
    ) -> Result<Explained, CommandError> {
        let ns = collection_ns(db, command, name)?.to_string();
        let fields = Fields::new(command, name);
        let query = fields.doc("query")?.cloned().unwrap_or_default();
        let sort = fields.doc("sort")?.cloned();
        let hint = hint_field(command, name)?;
        self.explain_query(ns, &query, sort.as_ref(), hint.as_ref(), true)
    }

    /// Plans and runs a write's query: how many documents it would act on.
    fn explain_query(
        &self,
        ns: String,
        query: &Document,
        sort: Option<&Document>,
        hint: Option<&Bson>,
        just_one: bool,
    ) -> Result<Explained, CommandError> {
        shoal_query::Filter::parse(query)?;
        let reader = Direct(self.kv.as_ref());
        let mut explained = Explained {
            ns: ns.clone(),
            filter: query.clone(),
            plan: None,
            returned: 0,
            stats: ExecStats::default(),
        };
        let Some(entry) = catalog::lookup(&reader, &ns)? else {
            return Ok(explained);
        };
        let shape = QueryShape {
            filter: query,
            sort,
            hint,
        };
        let plan = plan::choose(&entry, shape)?;
        let limit = u64::from(just_one && plan.sorted);
        let (n, stats) = count_matching(&reader, &entry, query, Some(&plan), 0, limit)?;
        explained.returned = if just_one { n.min(1) } else { n };
        explained.stats = stats;
        explained.plan = Some(plan);
        Ok(explained)
    }
}
