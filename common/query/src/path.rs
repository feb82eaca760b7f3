//! Dotted field paths ("a.b.0.c") and the three ways MongoDB walks them: plain lookup (index
//! arrays by number), query traversal (a condition on "a.b" looks inside every element of an
//! array `a`), and the `distinct`/sort-key walk (arrays at the end are flattened). Keeping the
//! walks in one place keeps filters, sorts and `distinct` agreeing on what a path reaches.

use bson::{Bson, Document};

/// Splits a dotted path into its components.
pub(crate) fn split(path: &str) -> Vec<String> {
    path.split('.').map(str::to_owned).collect()
}

/// A path component read as an array index: plain decimal digits only, as MongoDB requires
/// ("01" and "+1" are field names, not indexes).
pub(crate) fn array_index(component: &str) -> Option<usize> {
    if component.is_empty() || !component.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if component.len() > 1 && component.starts_with('0') {
        return None;
    }
    component.parse().ok()
}

/// Plain lookup through embedded documents, and through arrays by numeric index ("a.0.b").
pub fn lookup<'a>(doc: &'a Document, path: &str) -> Option<&'a Bson> {
    let mut parts = path.split('.');
    let first = parts.next()?;
    let mut current = doc.get(first)?;
    for part in parts {
        current = match current {
            Bson::Document(inner) => inner.get(part)?,
            Bson::Array(items) => items.get(array_index(part)?)?,
            _ => return None,
        };
    }
    Some(current)
}

/// The values `distinct` reports for a path: arrays at the end are flattened, arrays in the
/// middle traversed. Missing values are skipped; the result may hold duplicates.
pub fn distinct_values(doc: &Document, path: &str) -> Vec<Bson> {
    let parts = split(path);
    let mut out = Vec::new();
    let root = doc_ref(doc);
    collect_values(root, &parts, &mut |value| match value {
        Some(Bson::Array(items)) => out.extend(items.iter().cloned()),
        Some(other) => out.push(other.clone()),
        None => {}
    });
    out
}

/// The values a sort on `path` considers: like [`distinct_values`], but a missing value (also in
/// one array element) counts as null, and an empty array at the end counts as `undefined`, which
/// MongoDB sorts before null.
pub(crate) fn sort_values(doc: &Document, parts: &[String]) -> Vec<Bson> {
    let mut out = Vec::new();
    collect_values(doc_ref(doc), parts, &mut |value| match value {
        Some(Bson::Array(items)) if items.is_empty() => out.push(Bson::Undefined),
        Some(Bson::Array(items)) => out.extend(items.iter().cloned()),
        Some(other) => out.push(other.clone()),
        None => out.push(Bson::Null),
    });
    out
}

/// A borrowed view of a document as a value, so walks can start at the root without cloning.
enum Node<'a> {
    Doc(&'a Document),
    Value(&'a Bson),
}

fn doc_ref(doc: &Document) -> Node<'_> {
    Node::Doc(doc)
}

/// Calls `leaf` with every value reached by `parts` (or `None` where the path ends early),
/// traversing arrays in the middle of the path.
fn collect_values(node: Node<'_>, parts: &[String], leaf: &mut dyn FnMut(Option<&Bson>)) {
    let Some((head, rest)) = parts.split_first() else {
        match node {
            Node::Value(value) => leaf(Some(value)),
            Node::Doc(_) => {}
        }
        return;
    };
    let doc = match node {
        Node::Doc(doc) => doc,
        Node::Value(Bson::Document(doc)) => doc,
        Node::Value(Bson::Array(items)) => {
            collect_array(items, head, rest, leaf);
            return;
        }
        Node::Value(_) => {
            leaf(None);
            return;
        }
    };
    match doc.get(head) {
        Some(value) => collect_values(Node::Value(value), rest, leaf),
        None => leaf(None),
    }
}

fn collect_array(items: &[Bson], head: &str, rest: &[String], leaf: &mut dyn FnMut(Option<&Bson>)) {
    if let Some(index) = array_index(head) {
        match items.get(index) {
            Some(value) => collect_values(Node::Value(value), rest, leaf),
            None => leaf(None),
        }
        return;
    }
    let mut reached = false;
    for item in items {
        if let Bson::Document(inner) = item {
            reached = true;
            match inner.get(head) {
                Some(value) => collect_values(Node::Value(value), rest, leaf),
                None => leaf(None),
            }
        }
    }
    if !reached {
        leaf(None);
    }
}

/// Query traversal: calls `leaf` with each value the path reaches (`None` when it reaches
/// nothing) until `leaf` returns true. Arrays in the middle are searched element by element;
/// a numeric component selects an array element and also names a field of document elements.
/// Returns whether some call returned true.
pub(crate) fn any_leaf(
    doc: &Document,
    parts: &[String],
    leaf: &mut dyn FnMut(Option<&Bson>) -> bool,
) -> bool {
    let Some((head, rest)) = parts.split_first() else {
        return false;
    };
    any_leaf_value(doc.get(head), rest, leaf)
}

fn any_leaf_value(
    value: Option<&Bson>,
    parts: &[String],
    leaf: &mut dyn FnMut(Option<&Bson>) -> bool,
) -> bool {
    let Some((head, rest)) = parts.split_first() else {
        return leaf(value);
    };
    match value {
        Some(Bson::Document(doc)) => any_leaf_value(doc.get(head), rest, leaf),
        Some(Bson::Array(items)) => any_leaf_array(items, head, rest, leaf),
        _ => leaf(None),
    }
}

fn any_leaf_array(
    items: &[Bson],
    head: &str,
    rest: &[String],
    leaf: &mut dyn FnMut(Option<&Bson>) -> bool,
) -> bool {
    let mut reached = false;
    if let Some(index) = array_index(head) {
        reached = true;
        if any_leaf_value(items.get(index), rest, leaf) {
            return true;
        }
    }
    for item in items {
        if let Bson::Document(inner) = item {
            reached = true;
            if any_leaf_value(inner.get(head), rest, leaf) {
                return true;
            }
        }
    }
    !reached && leaf(None)
}

#[cfg(test)]
mod tests {
    use bson::{bson, doc};

    use super::*;

    #[test]
    fn lookup_walks_documents_and_indexes_arrays() {
        let doc = doc! {"a": {"b": [10, {"c": 5}]}, "x": 1};
        assert_eq!(lookup(&doc, "x"), Some(&Bson::Int32(1)));
        assert_eq!(lookup(&doc, "a.b.0"), Some(&Bson::Int32(10)));
        assert_eq!(lookup(&doc, "a.b.1.c"), Some(&Bson::Int32(5)));
        assert_eq!(lookup(&doc, "a.b.c"), None);
        assert_eq!(lookup(&doc, "a.b.2"), None);
        assert_eq!(lookup(&doc, "x.y"), None);
        assert_eq!(lookup(&doc, "missing"), None);
    }

    #[test]
    fn distinct_flattens_leaf_arrays_and_traverses_middle_ones() {
        let doc = doc! {"a": [{"b": [1, 2]}, {"b": 3}, {"c": 4}, 5], "s": [[1], 2]};
        assert_eq!(
            distinct_values(&doc, "a.b"),
            vec![bson!(1), bson!(2), bson!(3)]
        );
        assert_eq!(distinct_values(&doc, "s"), vec![bson!([1]), bson!(2)]);
        assert!(distinct_values(&doc, "zz").is_empty());
        assert_eq!(distinct_values(&doc, "a.0.b"), vec![bson!(1), bson!(2)]);
    }

    #[test]
    fn sort_values_count_missing_as_null() {
        let doc = doc! {"a": [{"b": 2}, {"c": 1}], "e": []};
        let parts = split("a.b");
        assert_eq!(sort_values(&doc, &parts), vec![bson!(2), Bson::Null]);
        assert_eq!(sort_values(&doc, &split("e")), vec![Bson::Undefined]);
        assert_eq!(sort_values(&doc, &split("zz")), vec![Bson::Null]);
    }

    #[test]
    fn array_index_rejects_non_canonical_numbers() {
        assert_eq!(array_index("0"), Some(0));
        assert_eq!(array_index("12"), Some(12));
        assert_eq!(array_index("01"), None);
        assert_eq!(array_index("-1"), None);
        assert_eq!(array_index("a"), None);
        assert_eq!(array_index(""), None);
    }

    #[test]
    fn any_leaf_reports_missing_through_arrays() {
        let doc = doc! {"a": [{"b": 1}, {"c": 2}]};
        let mut seen = Vec::new();
        any_leaf(&doc, &split("a.b"), &mut |v| {
            seen.push(v.cloned());
            false
        });
        assert_eq!(seen, vec![Some(bson!(1)), None]);
    }
}
