//! `findAndModify`: pick one document (the first by `sort`, else the first the plan yields),
//! then remove it, update it or upsert one, and return the old or new version. Unlike the batch
//! write commands, every failure here is a command error (there is no `writeErrors` array).

use bson::{Bson, Document, doc};
use shoal_common::CommandError;
use shoal_query::{Filter, Projection, SortSpec, Update};

use crate::{
    args::{Fields, collection_ns},
    catalog,
    engine::Engine,
    index,
    keys::CollectionEntry,
    matching::{find_matching, first_by_sort},
    shard_key::ShardKeyGuard,
    txn::Txn,
    write::{apply_update, stage_upsert},
};

/// The parsed options of one `findAndModify`.
struct Request<'a> {
    query: Document,
    sort_doc: Document,
    sort: SortSpec,
    projection: Option<Projection>,
    action: Action<'a>,
    return_new: bool,
    upsert: bool,
    guard: Option<ShardKeyGuard>,
}

enum Action<'a> {
    Remove,
    Update(&'a Bson, Option<&'a [Bson]>),
}

fn parse_request<'a>(command: &'a Document, name: &'a str) -> Result<Request<'a>, CommandError> {
    let fields = Fields::new(command, name);
    let query = fields.doc("query")?.cloned().unwrap_or_default();
    let sort_doc = fields.doc("sort")?.cloned().unwrap_or_default();
    let sort = SortSpec::parse(&sort_doc)?;
    let projection = fields.doc("fields")?.map(Projection::parse).transpose()?;
    let remove = fields.flag("remove", false)?;
    let return_new = fields.flag("new", false)?;
    let upsert = fields.flag("upsert", false)?;
    let update = match command.get("update") {
        None | Some(Bson::Null) => None,
        Some(update @ (Bson::Document(_) | Bson::Array(_))) => Some(update),
        Some(other) => {
            return Err(CommandError::type_mismatch(
                &format!("{name}.update"),
                "object",
                other,
            ));
        }
    };
    let action = match (remove, update) {
        (true, Some(_)) => {
            return Err(CommandError::failed_to_parse(
                "Cannot specify both an update and remove=true",
            ));
        }
        (true, None) if upsert => {
            return Err(CommandError::failed_to_parse(
                "Cannot specify both upsert=true and remove=true",
            ));
        }
        (true, None) if return_new => {
            return Err(CommandError::failed_to_parse(
                "Cannot specify both new=true and remove=true; 'remove' always returns the deleted document",
            ));
        }
        (true, None) => Action::Remove,
        (false, Some(update)) => Action::Update(update, fields.array("arrayFilters")?),
        (false, None) => {
            return Err(CommandError::failed_to_parse(
                "Either an update or remove=true must be specified",
            ));
        }
    };
    Ok(Request {
        query,
        sort_doc,
        sort,
        projection,
        action,
        return_new,
        upsert,
        guard: ShardKeyGuard::parse(&fields)?,
    })
}

/// The document `findAndModify` acts on: the first match by sort order, or in plan order.
fn pick_target(
    txn: &Txn<'_>,
    entry: &CollectionEntry,
    request: &Request<'_>,
    filter: &Filter,
) -> Result<Option<(Vec<u8>, Document)>, CommandError> {
    if request.sort.is_empty() {
        let mut found = find_matching::<CommandError>(txn, entry, &request.query, filter, Some(1))?;
        return Ok(found.pop());
    }
    first_by_sort(
        txn,
        entry,
        &request.query,
        filter,
        &request.sort_doc,
        &request.sort,
    )
}

impl Engine {
    /// `findAndModify` (also spelled `findandmodify`).
    pub(crate) fn find_and_modify(
        &self,
        db: &str,
        name: &str,
        command: &Document,
    ) -> Result<Document, CommandError> {
        let ns = collection_ns(db, command, name)?.to_string();
        let request = parse_request(command, name)?;
        let filter = Filter::parse(&request.query)?;
        let update = match &request.action {
            // The query goes with the update for positional `$` paths.
            Action::Update(update, array_filters) => {
                Some(Update::parse(update, *array_filters)?.with_query(filter.clone()))
            }
            Action::Remove => None,
        };
        let _writer = self.lock_writer();
        let mut txn = Txn::new(self.kv.as_ref());
        let entry = catalog::lookup(&txn, &ns)?;
        let target = match &entry {
            Some(entry) => pick_target(&txn, entry, &request, &filter)?,
            None => None,
        };
        let (last_error, value) = match (entry, target, update) {
            (Some(mut entry), Some((key, old)), None) => {
                index::unstage_document(&mut txn, &mut entry, key, &old)?;
                (doc! {"n": 1}, Some(old))
            }
            (Some(mut entry), Some((key, old)), Some(update)) => {
                let new = match apply_update(&update, &old, request.guard.as_ref())? {
                    Some(prepared) => {
                        index::stage_document(
                            &mut txn,
                            &mut entry,
                            key,
                            Some(&old),
                            &prepared.document,
                            prepared.bytes,
                        )?;
                        prepared.document
                    }
                    None => old.clone(),
                };
                let value = if request.return_new { new } else { old };
                (doc! {"n": 1, "updatedExisting": true}, Some(value))
            }
            (_, None, Some(update)) if request.upsert => {
                let (id, stored) = stage_upsert(
                    &mut txn,
                    &ns,
                    &update,
                    &request.query,
                    request.guard.as_ref(),
                )?;
                let value = request.return_new.then_some(stored);
                (
                    doc! {"n": 1, "updatedExisting": false, "upserted": id},
                    value,
                )
            }
            (_, None, Some(_)) => (doc! {"n": 0, "updatedExisting": false}, None),
            (_, _, None) => (doc! {"n": 0}, None),
            (None, Some(_), _) => {
                return Err(CommandError::internal("a target without a collection"));
            }
        };
        txn.commit()?;
        let projection = request
            .projection
            .map(|projection| projection.with_query(filter));
        let value = match (value, &projection) {
            (Some(document), Some(projection)) => Bson::Document(projection.apply(&document)?),
            (Some(document), None) => Bson::Document(document),
            (None, _) => Bson::Null,
        };
        Ok(doc! {"lastErrorObject": last_error, "value": value})
    }
}
