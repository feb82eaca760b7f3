//! Projections: `find`'s `projection`, aggregation `$project`/`$unset`, and the field tree of
//! `$addFields`/`$set`. A spec is parsed into a tree keyed by path component, so `{"a.b": 1}`
//! and `{a: {b: 1}}` are the same projection and overlapping paths are caught at parse time.
//!
//! Positional projection (`"field.$": 1`) needs the query that selected the document. Attach it
//! with [`Projection::with_query`]; without one, `field.$` includes the whole field (documented
//! best effort: the projection alone cannot know which element matched).

use bson::{Bson, Document};

use crate::error::{LocationCode, QueryError, Result};
use crate::expr::{Ctx, Expr, Expression, Num, eval, parse_expr};
use crate::filter::Filter;
use crate::path;

/// Whether a projection keeps only the listed fields or drops them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Inclusion,
    Exclusion,
}

/// Which syntax a spec is parsed with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Syntax {
    /// `find`: `$slice`, `$elemMatch` and `field.$` are projection operators.
    Find,
    /// `$project`: every `$` document is an expression.
    Aggregation,
}

#[derive(Clone, Debug)]
enum Item {
    Include,
    Exclude,
    Computed(Expression),
    Slice {
        skip: Option<i64>,
        limit: i64,
    },
    ElemMatch(Filter),
    /// `path.$`: the first element of the array at `parts` that the query matched.
    Positional(Vec<String>),
    Sub(Tree),
}

type Tree = Vec<(String, Item)>;

/// A parsed projection.
#[derive(Clone, Debug)]
pub struct Projection {
    mode: Mode,
    tree: Tree,
    query: Option<Filter>,
}

impl Projection {
    /// Parses a `find` projection: inclusion (`{a: 1}`), exclusion (`{a: 0}`), computed values
    /// (`{b: "$x"}`), `$slice`, `$elemMatch` and positional `field.$`.
    pub fn parse(spec: &Document) -> Result<Projection> {
        parse_projection(spec, Syntax::Find)
    }

    /// Parses an aggregation `$project` (no projection operators; the spec may not be empty).
    pub fn parse_aggregation(spec: &Document) -> Result<Projection> {
        if spec.is_empty() {
            return Err(QueryError::location(
                LocationCode::PROJECT_STAGE,
                "Invalid $project :: caused by :: projection specification must have at least one field",
            ));
        }
        parse_projection(spec, Syntax::Aggregation)
    }

    /// An exclusion of the given paths (`$unset`).
    pub fn exclusion(paths: &[String]) -> Result<Projection> {
        let mut tree = Tree::new();
        for field in paths {
            insert_path(&mut tree, &path::split(field), field, Item::Exclude)?;
        }
        Ok(Projection {
            mode: Mode::Exclusion,
            tree,
            query: None,
        })
    }

    /// Attaches the query that selected the documents, for positional `field.$` projection.
    pub fn with_query(mut self, query: Filter) -> Projection {
        self.query = Some(query);
        self
    }

    /// Whether this projection keeps only listed fields.
    pub fn is_inclusion(&self) -> bool {
        self.mode == Mode::Inclusion
    }

    /// Applies the projection to one document.
    pub fn apply(&self, doc: &Document) -> Result<Document> {
        let mut ctx = Ctx::new(doc);
        match self.mode {
            Mode::Inclusion => self.include(&self.tree, doc, true, &mut ctx),
            Mode::Exclusion => self.exclude(&self.tree, doc),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------------

fn parse_projection(spec: &Document, syntax: Syntax) -> Result<Projection> {
    crate::nesting::check_document(spec)?;
    let mut tree = Tree::new();
    let mut mode: Option<Mode> = None;
    let mut has_elem_match = false;
    for (field, value) in spec {
        let mut leaves = Vec::new();
        classify(field, value, syntax, &mut leaves)?;
        for (full_path, item) in leaves {
            let is_id = full_path == "_id";
            let wanted = match &item {
                Item::Include | Item::Computed(_) | Item::Positional(_) if !is_id => {
                    Some(Mode::Inclusion)
                }
                Item::Exclude if !is_id => Some(Mode::Exclusion),
                Item::ElemMatch(_) => {
                    has_elem_match = true;
                    None
                }
                _ => None,
            };
            check_mode(&mut mode, wanted, &full_path, &item)?;
            let parts = path::split(&full_path);
            insert_path(&mut tree, &parts, &full_path, item)?;
        }
    }
    let mode = mode.unwrap_or_else(|| default_mode(&tree, has_elem_match));
    Ok(Projection {
        mode,
        tree,
        query: None,
    })
}

fn check_mode(
    mode: &mut Option<Mode>,
    wanted: Option<Mode>,
    field: &str,
    item: &Item,
) -> Result<()> {
    match (*mode, wanted) {
        (_, None) => Ok(()),
        (None, Some(new)) => {
            *mode = Some(new);
            Ok(())
        }
        (Some(Mode::Inclusion), Some(Mode::Exclusion)) => Err(QueryError::ExclusionInInclusion(
            format!("Cannot do exclusion on field {field} in inclusion projection"),
        )),
        (Some(Mode::Exclusion), Some(Mode::Inclusion)) => {
            let what = if matches!(item, Item::Computed(_)) {
                "a computed field"
            } else {
                "inclusion"
            };
            Err(QueryError::InclusionInExclusion(format!(
                "Cannot do {what} on field {field} in exclusion projection"
            )))
        }
        _ => Ok(()),
    }
}

/// The mode when no field decided it: `$elemMatch` or `{_id: 1}` alone include, else exclude.
fn default_mode(tree: &Tree, has_elem_match: bool) -> Mode {
    let id_included = tree
        .iter()
        .any(|(k, item)| k == "_id" && matches!(item, Item::Include | Item::Computed(_)));
    if has_elem_match || id_included {
        Mode::Inclusion
    } else {
        Mode::Exclusion
    }
}

/// Turns one spec entry into (full path, item) leaves, expanding nested sub-projections.
fn classify(
    field: &str,
    value: &Bson,
    syntax: Syntax,
    out: &mut Vec<(String, Item)>,
) -> Result<()> {
    if field.split('.').any(str::is_empty) {
        return Err(QueryError::location(
            LocationCode::FIELD_PATH,
            format!("FieldPath '{field}' is not valid"),
        ));
    }
    if let Some(array_path) = field.strip_suffix(".$") {
        if syntax == Syntax::Aggregation || array_path.contains(".$") {
            return Err(QueryError::bad_value(format!(
                "Positional projection '{field}' is not allowed here"
            )));
        }
        out.push((
            array_path.to_owned(),
            Item::Positional(path::split(array_path)),
        ));
        return Ok(());
    }
    if field.starts_with('$') {
        return Err(QueryError::location(
            LocationCode::OBJECT_FIELD,
            format!("FieldPath field names may not start with '$'. ({field})"),
        ));
    }
    let item = match value {
        Bson::Boolean(b) => bool_item(*b),
        Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) | Bson::Decimal128(_) => {
            bool_item(Num::of(value).is_some_and(|n| n.as_f64() != 0.0))
        }
        Bson::Document(spec) => return classify_document(field, spec, syntax, out),
        other => Item::Computed(Expression::parse(other)?),
    };
    out.push((field.to_owned(), item));
    Ok(())
}

fn bool_item(include: bool) -> Item {
    if include {
        Item::Include
    } else {
        Item::Exclude
    }
}

fn classify_document(
    field: &str,
    spec: &Document,
    syntax: Syntax,
    out: &mut Vec<(String, Item)>,
) -> Result<()> {
    let Some(first) = spec.keys().next() else {
        return Err(QueryError::location(
            LocationCode(51270),
            format!(
                "An empty sub-projection is not a valid value. Found empty object at path {field}"
            ),
        ));
    };
    if !first.starts_with('$') {
        for (sub_field, sub_value) in spec {
            classify(&format!("{field}.{sub_field}"), sub_value, syntax, out)?;
        }
        return Ok(());
    }
    let item = match (syntax, first.as_str(), spec.len()) {
        (Syntax::Find, "$slice", 1) => parse_slice(spec.get("$slice").unwrap_or(&Bson::Null))?,
        (Syntax::Find, "$elemMatch", 1) => {
            if field.contains('.') {
                return Err(QueryError::bad_value(
                    "Cannot use $elemMatch projection on a nested field.",
                ));
            }
            let condition = spec.get("$elemMatch").unwrap_or(&Bson::Null);
            Item::ElemMatch(Filter::parse(
                &bson::doc! {"e": {"$elemMatch": condition.clone()}},
            )?)
        }
        (_, "$meta", _) => {
            return Err(QueryError::bad_value("$meta projections are not supported"));
        }
        _ => Item::Computed(Expression::parse(&Bson::Document(spec.clone()))?),
    };
    out.push((field.to_owned(), item));
    Ok(())
}

fn parse_slice(value: &Bson) -> Result<Item> {
    let whole = |v: &Bson| Num::of(v).and_then(Num::as_whole);
    match value {
        Bson::Array(items) if items.len() == 2 => {
            let skip = whole(&items[0]);
            let limit = whole(&items[1]);
            match (skip, limit) {
                (Some(skip), Some(limit)) if limit > 0 => Ok(Item::Slice {
                    skip: Some(skip),
                    limit,
                }),
                (Some(_), Some(_)) => Err(QueryError::location(
                    LocationCode::PROJECTION_SLICE,
                    "$slice limit must be positive",
                )),
                _ => Err(QueryError::location(
                    LocationCode::PROJECTION_SLICE,
                    "$slice arguments must be numbers",
                )),
            }
        }
        other => match whole(other) {
            Some(limit) => Ok(Item::Slice { skip: None, limit }),
            None => Err(QueryError::location(
                LocationCode::PROJECTION_SLICE,
                "$slice only supports numbers and [skip, limit] arrays",
            )),
        },
    }
}

fn collision(full_path: &str) -> QueryError {
    QueryError::ProjectionPathCollision(format!("Path collision at {full_path}"))
}

fn insert_path(tree: &mut Tree, parts: &[String], full_path: &str, item: Item) -> Result<()> {
    let Some((head, rest)) = parts.split_first() else {
        return Err(collision(full_path));
    };
    let existing = tree.iter().position(|(k, _)| k == head);
    if rest.is_empty() {
        if existing.is_some() {
            return Err(collision(full_path));
        }
        tree.push((head.clone(), item));
        return Ok(());
    }
    let index = match existing {
        Some(index) => index,
        None => {
            tree.push((head.clone(), Item::Sub(Tree::new())));
            tree.len() - 1
        }
    };
    match &mut tree[index].1 {
        Item::Sub(sub) => insert_path(sub, rest, full_path, item),
        _ => Err(collision(full_path)),
    }
}

// ---------------------------------------------------------------------------------------------
// Applying
// ---------------------------------------------------------------------------------------------

fn has_computed(tree: &Tree) -> bool {
    tree.iter().any(|(_, item)| match item {
        Item::Computed(_) => true,
        Item::Sub(sub) => has_computed(sub),
        _ => false,
    })
}

impl Projection {
    fn include(
        &self,
        tree: &Tree,
        doc: &Document,
        top: bool,
        ctx: &mut Ctx<'_>,
    ) -> Result<Document> {
        let mut out = Document::new();
        for (key, value) in doc {
            let item = tree.iter().find(|(k, _)| k == key).map(|(_, item)| item);
            let projected = match item {
                None if top && key == "_id" => Some(value.clone()),
                None | Some(Item::Exclude) | Some(Item::Computed(_)) => None,
                Some(Item::Include) => Some(value.clone()),
                Some(Item::Sub(sub)) => self.include_value(sub, value, ctx)?,
                Some(Item::Slice { skip, limit }) => Some(slice_value(value, *skip, *limit)),
                Some(Item::ElemMatch(filter)) => elem_match_value(filter, value),
                Some(Item::Positional(parts)) => {
                    Some(self.positional_value(parts, value, ctx.root())?)
                }
            };
            if let Some(projected) = projected {
                out.insert(key.clone(), projected);
            }
        }
        for (key, item) in tree {
            match item {
                Item::Computed(expression) => {
                    if let Some(value) = eval(&expression.0, ctx)? {
                        out.insert(key.clone(), value);
                    }
                }
                Item::Sub(sub) if !doc.contains_key(key) && has_computed(sub) => {
                    let created = self.include(sub, &Document::new(), false, ctx)?;
                    out.insert(key.clone(), created);
                }
                _ => {}
            }
        }
        Ok(out)
    }

    fn include_value(&self, sub: &Tree, value: &Bson, ctx: &mut Ctx<'_>) -> Result<Option<Bson>> {
        match value {
            Bson::Document(inner) => {
                Ok(Some(Bson::Document(self.include(sub, inner, false, ctx)?)))
            }
            Bson::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for item in items {
                    if let Some(projected) = self.include_value(sub, item, ctx)? {
                        out.push(projected);
                    }
                }
                Ok(Some(Bson::Array(out)))
            }
            _ if has_computed(sub) => Ok(Some(Bson::Document(self.include(
                sub,
                &Document::new(),
                false,
                ctx,
            )?))),
            _ => Ok(None),
        }
    }

    fn exclude(&self, tree: &Tree, doc: &Document) -> Result<Document> {
        let mut out = Document::new();
        for (key, value) in doc {
            let item = tree.iter().find(|(k, _)| k == key).map(|(_, item)| item);
            let projected = match item {
                None
                | Some(Item::Include)
                | Some(Item::Computed(_))
                | Some(Item::Positional(_)) => Some(value.clone()),
                Some(Item::Exclude) => None,
                Some(Item::Sub(sub)) => Some(self.exclude_value(sub, value)?),
                Some(Item::Slice { skip, limit }) => Some(slice_value(value, *skip, *limit)),
                Some(Item::ElemMatch(filter)) => elem_match_value(filter, value),
            };
            if let Some(projected) = projected {
                out.insert(key.clone(), projected);
            }
        }
        Ok(out)
    }

    fn exclude_value(&self, sub: &Tree, value: &Bson) -> Result<Bson> {
        match value {
            Bson::Document(inner) => Ok(Bson::Document(self.exclude(sub, inner)?)),
            Bson::Array(items) => {
                let projected = items
                    .iter()
                    .map(|item| self.exclude_value(sub, item))
                    .collect::<Result<_>>()?;
                Ok(Bson::Array(projected))
            }
            other => Ok(other.clone()),
        }
    }

    /// `field.$`: the first element the query matched, or the whole field without a query or
    /// when it is not an array. An array none of whose elements the query matched is MongoDB's
    /// 51246 (the query did not select the document through this array).
    fn positional_value(&self, parts: &[String], value: &Bson, root: &Document) -> Result<Bson> {
        let Bson::Array(items) = value else {
            return Ok(value.clone());
        };
        let Some(query) = &self.query else {
            return Ok(value.clone());
        };
        let index = first_matching_element(query, root, parts, items).ok_or_else(|| {
            QueryError::location(
                LocationCode(51246),
                "positional operator '.$' couldn't find a matching element in the array",
            )
        })?;
        Ok(Bson::Array(vec![items[index].clone()]))
    }
}

/// The index of the first element of the array at `parts` for which `query` matches the
/// document with that array narrowed to the element alone. This is how positional `$` finds
/// "the element the query matched" without the matcher recording positions.
pub(crate) fn first_matching_element(
    query: &Filter,
    root: &Document,
    parts: &[String],
    items: &[Bson],
) -> Option<usize> {
    if !query.references_prefix(parts) {
        return None;
    }
    (0..items.len()).find(|index| {
        let narrowed = replace_path(root, parts, Bson::Array(vec![items[*index].clone()]));
        narrowed.is_some_and(|doc| query.matches(&doc))
    })
}

/// A copy of `doc` with the value at `parts` (through documents only) replaced.
fn replace_path(doc: &Document, parts: &[String], value: Bson) -> Option<Document> {
    let (head, rest) = parts.split_first()?;
    let mut out = doc.clone();
    if rest.is_empty() {
        out.insert(head.clone(), value);
        return Some(out);
    }
    let Some(Bson::Document(inner)) = doc.get(head) else {
        return None;
    };
    out.insert(head.clone(), replace_path(inner, rest, value)?);
    Some(out)
}

fn slice_value(value: &Bson, skip: Option<i64>, limit: i64) -> Bson {
    let Bson::Array(items) = value else {
        return value.clone();
    };
    let sliced = match skip {
        None => crate::expr::slice_count(items, limit),
        Some(skip) => crate::expr::slice_from(items, skip, limit),
    };
    Bson::Array(sliced)
}

fn elem_match_value(filter: &Filter, value: &Bson) -> Option<Bson> {
    let Bson::Array(items) = value else {
        return None;
    };
    items
        .iter()
        .find(|item| filter.matches(&bson::doc! {"e": [(*item).clone()]}))
        .map(|item| Bson::Array(vec![item.clone()]))
}

// ---------------------------------------------------------------------------------------------
// $addFields / $set
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum AddItem {
    Value(Expr),
    Sub(Vec<(String, AddItem)>),
}

/// The field tree of `$addFields`/`$set`: every value is an expression, nested objects without
/// operators merge into existing embedded documents, and `$$REMOVE` removes a field.
#[derive(Clone, Debug)]
pub struct AddFields {
    tree: Vec<(String, AddItem)>,
}

impl AddFields {
    /// Parses `{field: expression, "a.b": expression, nested: {...}}`.
    pub fn parse(spec: &Document) -> Result<AddFields> {
        crate::nesting::check_document(spec)?;
        let mut tree = Vec::new();
        for (field, value) in spec {
            add_entry(&mut tree, field, value)?;
        }
        Ok(AddFields { tree })
    }

    /// Computes the fields and sets them in a copy of `doc`.
    pub fn apply(&self, doc: &Document) -> Result<Document> {
        let mut ctx = Ctx::new(doc);
        let mut out = doc.clone();
        set_fields(&self.tree, &mut out, &mut ctx)?;
        Ok(out)
    }
}

fn add_entry(tree: &mut Vec<(String, AddItem)>, field: &str, value: &Bson) -> Result<()> {
    if field.starts_with('$') || field.is_empty() || field.split('.').any(str::is_empty) {
        return Err(QueryError::location(
            LocationCode::OBJECT_FIELD,
            format!("Invalid $addFields :: caused by :: FieldPath '{field}' is not valid"),
        ));
    }
    if let Bson::Document(spec) = value
        && spec.keys().next().is_some_and(|k| !k.starts_with('$'))
    {
        for (sub_field, sub_value) in spec {
            add_entry(tree, &format!("{field}.{sub_field}"), sub_value)?;
        }
        return Ok(());
    }
    let mut scope = Vec::new();
    let item = AddItem::Value(parse_expr(value, &mut scope)?);
    insert_add(tree, &path::split(field), field, item)
}

fn insert_add(
    tree: &mut Vec<(String, AddItem)>,
    parts: &[String],
    full: &str,
    item: AddItem,
) -> Result<()> {
    let Some((head, rest)) = parts.split_first() else {
        return Err(collision(full));
    };
    let existing = tree.iter().position(|(k, _)| k == head);
    if rest.is_empty() {
        if existing.is_some() {
            return Err(collision(full));
        }
        tree.push((head.clone(), item));
        return Ok(());
    }
    let index = match existing {
        Some(index) => index,
        None => {
            tree.push((head.clone(), AddItem::Sub(Vec::new())));
            tree.len() - 1
        }
    };
    match &mut tree[index].1 {
        AddItem::Sub(sub) => insert_add(sub, rest, full, item),
        AddItem::Value(_) => Err(collision(full)),
    }
}

fn set_fields(tree: &[(String, AddItem)], target: &mut Document, ctx: &mut Ctx<'_>) -> Result<()> {
    for (key, item) in tree {
        match item {
            AddItem::Value(expr) => match eval(expr, ctx)? {
                Some(value) => {
                    target.insert(key.clone(), value);
                }
                None => {
                    target.remove(key);
                }
            },
            AddItem::Sub(sub) => {
                let current = target.remove_entry_value(key);
                let updated = set_nested(sub, current, ctx)?;
                target.insert(key.clone(), updated);
            }
        }
    }
    Ok(())
}

fn set_nested(sub: &[(String, AddItem)], current: Option<Bson>, ctx: &mut Ctx<'_>) -> Result<Bson> {
    match current {
        Some(Bson::Document(mut inner)) => {
            set_fields(sub, &mut inner, ctx)?;
            Ok(Bson::Document(inner))
        }
        Some(Bson::Array(items)) => {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                out.push(set_nested(sub, Some(item), ctx)?);
            }
            Ok(Bson::Array(out))
        }
        _ => {
            let mut fresh = Document::new();
            set_fields(sub, &mut fresh, ctx)?;
            Ok(Bson::Document(fresh))
        }
    }
}

/// Takes a field's value out while keeping its position for the re-insert (`insert` on an
/// existing key keeps the key's place, so the value is swapped for a placeholder first).
trait TakeValue {
    fn remove_entry_value(&mut self, key: &str) -> Option<Bson>;
}

impl TakeValue for Document {
    fn remove_entry_value(&mut self, key: &str) -> Option<Bson> {
        self.get_mut(key)
            .map(|slot| std::mem::replace(slot, Bson::Null))
    }
}

#[cfg(test)]
mod tests {
    use bson::{bson, doc};

    use super::*;

    fn project(spec: Document, doc: Document) -> Document {
        Projection::parse(&spec)
            .unwrap_or_else(|e| panic!("{spec}: {e}"))
            .apply(&doc)
            .unwrap()
    }

    fn parse_code(spec: Document) -> i32 {
        match Projection::parse(&spec) {
            Err(err) => err.code().0,
            Ok(_) => panic!("{spec} parsed"),
        }
    }

    fn inventory() -> Document {
        doc! {
            "_id": 1, "item": "journal", "status": "A",
            "size": {"h": 14, "w": 21, "uom": "cm"},
            "instock": [{"warehouse": "A", "qty": 5}, {"warehouse": "C", "qty": 15}],
        }
    }

    #[test]
    fn inclusion_and_exclusion() {
        let d = inventory();
        assert_eq!(
            project(doc! {"item": 1, "status": 1}, d.clone()),
            doc! {"_id": 1, "item": "journal", "status": "A"}
        );
        assert_eq!(
            project(doc! {"status": 1, "item": 1}, d.clone()),
            doc! {"_id": 1, "item": "journal", "status": "A"}
        );
        assert_eq!(
            project(doc! {"item": 1, "_id": 0}, d.clone()),
            doc! {"item": "journal"}
        );
        assert_eq!(project(doc! {"_id": 1}, d.clone()), doc! {"_id": 1});
        let excluded = project(doc! {"status": 0, "instock": 0, "size": 0}, d.clone());
        assert_eq!(excluded, doc! {"_id": 1, "item": "journal"});
        assert_eq!(
            project(doc! {"_id": 0}, doc! {"_id": 1, "a": 2}),
            doc! {"a": 2}
        );
        assert_eq!(project(doc! {}, d.clone()), d);
        assert_eq!(project(doc! {"missing": 1}, d), doc! {"_id": 1});
    }

    #[test]
    fn dotted_and_nested_paths() {
        let d = inventory();
        assert_eq!(
            project(doc! {"size.uom": 1}, d.clone()),
            doc! {"_id": 1, "size": {"uom": "cm"}}
        );
        assert_eq!(
            project(doc! {"size": {"uom": 1}}, d.clone()),
            doc! {"_id": 1, "size": {"uom": "cm"}}
        );
        assert_eq!(
            project(doc! {"instock.qty": 1, "_id": 0}, d.clone()),
            doc! {"instock": [{"qty": 5}, {"qty": 15}]}
        );
        let excluded = project(
            doc! {"size.uom": 0, "instock.warehouse": 0, "item": 0, "status": 0},
            d,
        );
        assert_eq!(
            excluded,
            doc! {"_id": 1, "size": {"h": 14, "w": 21}, "instock": [{"qty": 5}, {"qty": 15}]}
        );
        assert_eq!(
            project(
                doc! {"a.b": 1},
                doc! {"_id": 1, "a": [1, {"b": 2, "c": 3}, [{"b": 4}]]}
            ),
            doc! {"_id": 1, "a": [{"b": 2}, [{"b": 4}]]}
        );
        assert_eq!(
            project(doc! {"a.b": 1}, doc! {"_id": 1, "a": 5}),
            doc! {"_id": 1}
        );
    }

    #[test]
    fn computed_fields_in_inclusion_projections() {
        let d = doc! {"_id": 1, "x": 3, "name": {"first": "Ada"}};
        assert_eq!(
            project(doc! {"a": 1, "b": "$x"}, d.clone()),
            doc! {"_id": 1, "b": 3}
        );
        assert_eq!(
            project(doc! {"x": 1, "lit": "hello"}, d.clone()),
            doc! {"_id": 1, "x": 3, "lit": "hello"}
        );
        assert_eq!(
            project(doc! {"s": {"$add": ["$x", 1]}, "_id": 0}, d.clone()),
            doc! {"s": 4}
        );
        assert_eq!(
            project(
                doc! {"name.len": {"$strLenCP": "$name.first"}, "_id": 0},
                d.clone()
            ),
            doc! {"name": {"len": 3}}
        );
        assert_eq!(
            project(doc! {"n.f": "$name.first", "_id": 0}, d.clone()),
            doc! {"n": {"f": "Ada"}}
        );
        assert_eq!(project(doc! {"gone": "$nope", "_id": 0}, d), doc! {});
    }

    #[test]
    fn slice_elem_match_and_positional() {
        let d = doc! {"_id": 1, "a": [1, 2, 3, 4, 5], "b": "x", "games": [{"s": 3}, {"s": 8}, {"s": 9}]};
        assert_eq!(
            project(doc! {"a": {"$slice": 2}}, d.clone()).get("a"),
            Some(&bson!([1, 2]))
        );
        assert_eq!(
            project(doc! {"a": {"$slice": 2}}, d.clone()).get("b"),
            Some(&bson!("x"))
        );
        assert_eq!(
            project(doc! {"a": {"$slice": -2}}, d.clone()).get("a"),
            Some(&bson!([4, 5]))
        );
        assert_eq!(
            project(doc! {"a": {"$slice": [1, 2]}}, d.clone()).get("a"),
            Some(&bson!([2, 3]))
        );
        assert_eq!(
            project(doc! {"a": {"$slice": [-2, 5]}}, d.clone()).get("a"),
            Some(&bson!([4, 5]))
        );
        assert_eq!(
            project(doc! {"b": 1, "a": {"$slice": 1}}, d.clone()),
            doc! {"_id": 1, "a": [1], "b": "x"}
        );
        let elem = project(doc! {"games": {"$elemMatch": {"s": {"$gt": 5}}}}, d.clone());
        assert_eq!(elem, doc! {"_id": 1, "games": [{"s": 8}]});
        let none = project(
            doc! {"games": {"$elemMatch": {"s": {"$gt": 50}}}},
            d.clone(),
        );
        assert_eq!(none, doc! {"_id": 1});
        let query = Filter::parse(&doc! {"games.s": {"$gte": 9}}).unwrap();
        let positional = Projection::parse(&doc! {"games.$": 1})
            .unwrap()
            .with_query(query)
            .apply(&d)
            .unwrap();
        assert_eq!(positional, doc! {"_id": 1, "games": [{"s": 9}]});
        let without_query = project(doc! {"games.$": 1}, d.clone());
        assert_eq!(without_query.get("games"), d.get("games"));
    }

    /// The manual's positional projection examples (`grades` collection), and 51246 when the
    /// query selected the document without going through the array.
    #[test]
    fn positional_projection_follows_the_query() {
        let grades = [
            doc! {"_id": 1, "semester": 1, "grades": [70, 87, 90]},
            doc! {"_id": 2, "semester": 1, "grades": [90, 88, 92]},
            doc! {"_id": 3, "semester": 1, "grades": [85, 100, 90]},
            doc! {"_id": 4, "semester": 2, "grades": [79, 85, 80]},
        ];
        let run = |filter: Document, spec: Document| -> Vec<Result<Document>> {
            let query = Filter::parse(&filter).unwrap();
            let projection = Projection::parse(&spec).unwrap().with_query(query.clone());
            grades
                .iter()
                .filter(|d| query.matches(d))
                .map(|d| projection.apply(d))
                .collect()
        };
        let out = run(
            doc! {"semester": 1, "grades": {"$gte": 85}},
            doc! {"grades.$": 1},
        );
        assert_eq!(
            out,
            vec![
                Ok(doc! {"_id": 1, "grades": [87]}),
                Ok(doc! {"_id": 2, "grades": [90]}),
                Ok(doc! {"_id": 3, "grades": [85]}),
            ]
        );
        let out = run(doc! {"_id": 4}, doc! {"grades.$": 1});
        assert_eq!(out[0].as_ref().unwrap_err().code().0, 51246);
        let scalar = Projection::parse(&doc! {"semester.$": 1})
            .unwrap()
            .with_query(Filter::parse(&doc! {"semester": 1}).unwrap())
            .apply(&grades[0])
            .unwrap();
        assert_eq!(scalar, doc! {"_id": 1, "semester": 1});
    }

    #[test]
    fn mixing_and_collisions_are_errors() {
        assert_eq!(parse_code(doc! {"a": 1, "b": 0}), 31254);
        assert_eq!(parse_code(doc! {"a": 0, "b": 1}), 31253);
        assert_eq!(parse_code(doc! {"a": 0, "b": "$x"}), 31253);
        assert_eq!(parse_code(doc! {"a": 1, "a.b": 1}), 31250);
        assert_eq!(parse_code(doc! {"a.b": 1, "a": 1}), 31250);
        assert_eq!(parse_code(doc! {"a": {}}), 51270);
        assert_eq!(parse_code(doc! {"a": {"$slice": "x"}}), 28724);
        assert!(Projection::parse(&doc! {"_id": 0, "a": 1}).is_ok());
        assert!(Projection::parse(&doc! {"_id": 1, "a": 0}).is_ok());
        assert_eq!(
            Projection::parse_aggregation(&doc! {})
                .unwrap_err()
                .code()
                .0,
            51272
        );
    }

    #[test]
    fn aggregation_projection_treats_operators_as_expressions() {
        let d = doc! {"_id": 1, "a": [1, 2, 3]};
        let projection = Projection::parse_aggregation(&doc! {"a": {"$slice": ["$a", 1]}}).unwrap();
        assert_eq!(projection.apply(&d).unwrap(), doc! {"_id": 1, "a": [1]});
    }

    #[test]
    fn add_fields_merges_nested_objects_and_removes() {
        let d = doc! {"_id": 1, "specs": {"doors": 4}, "arr": [{"x": 1}, {"x": 2}], "gone": 1};
        let spec = doc! {"specs": {"fuel": "unleaded"}, "arr.y": 0, "total": {"$add": [1, 2]}, "gone": "$$REMOVE"};
        let result = AddFields::parse(&spec).unwrap().apply(&d).unwrap();
        assert_eq!(
            result,
            doc! {"_id": 1, "specs": {"doors": 4, "fuel": "unleaded"}, "arr": [{"x": 1, "y": 0}, {"x": 2, "y": 0}], "total": 3}
        );
        let replaced = AddFields::parse(&doc! {"specs": "$_id"})
            .unwrap()
            .apply(&d)
            .unwrap();
        assert_eq!(replaced.get("specs"), Some(&bson!(1)));
    }
}
