//! Shell errors and argument extraction for helper methods.
//!
//! Every helper (`db.c.find(filter, projection)`, `sh.moveChunk(ns, find, to)`) pulls its
//! arguments through [`Args`], so wrong argument types give one consistent `TypeError`
//! naming the method, and server failures are printed the way mongosh prints them
//! (`MongoServerError[CodeName]: errmsg`).

use std::collections::VecDeque;

use bson::{Bson, Document};
use mongodb::error::{ErrorKind, WriteFailure};

use super::parser::ParseError;

/// Any failure of a shell statement.
#[derive(Debug, thiserror::Error)]
pub enum ShellError {
    /// The statement text did not parse.
    #[error("{0}")]
    Parse(#[from] ParseError),
    /// The server answered with an error (command error, write error or write concern error).
    #[error("{}", format_server_error(*code, code_name, message))]
    Server {
        /// The MongoDB error code.
        code: i32,
        /// The code's name, possibly empty.
        code_name: String,
        /// The server's message.
        message: String,
    },
    /// A client-side driver failure (network, server selection, invalid argument).
    #[error("{0}")]
    Driver(String),
    /// A helper was called with arguments of the wrong type or number.
    #[error("TypeError: {0}")]
    Type(String),
    /// An unknown identifier.
    #[error("ReferenceError: {0} is not defined")]
    Reference(String),
}

fn format_server_error(code: i32, code_name: &str, message: &str) -> String {
    if code_name.is_empty() {
        format!("MongoServerError[{code}]: {message}")
    } else {
        format!("MongoServerError[{code_name}]: {message}")
    }
}

impl From<mongodb::error::Error> for ShellError {
    fn from(error: mongodb::error::Error) -> Self {
        match error.kind.as_ref() {
            ErrorKind::Command(command) => ShellError::Server {
                code: command.code,
                code_name: command.code_name.clone(),
                message: command.message.clone(),
            },
            ErrorKind::Write(WriteFailure::WriteError(write)) => ShellError::Server {
                code: write.code,
                code_name: write.code_name.clone().unwrap_or_default(),
                message: write.message.clone(),
            },
            ErrorKind::Write(WriteFailure::WriteConcernError(concern)) => ShellError::Server {
                code: concern.code,
                code_name: concern.code_name.clone(),
                message: concern.message.clone(),
            },
            ErrorKind::InsertMany(insert_many) => insert_many_error(insert_many, &error),
            ErrorKind::ServerSelection { message, .. } => {
                ShellError::Driver(format!("MongoServerSelectionError: {message}"))
            }
            ErrorKind::Io(io) => ShellError::Driver(format!("MongoNetworkError: {io}")),
            ErrorKind::InvalidArgument { message, .. } => {
                ShellError::Driver(format!("MongoInvalidArgumentError: {message}"))
            }
            _ => ShellError::Driver(format!("MongoError: {error}")),
        }
    }
}

fn insert_many_error(
    insert_many: &mongodb::error::InsertManyError,
    error: &mongodb::error::Error,
) -> ShellError {
    if let Some(first) = insert_many
        .write_errors
        .as_ref()
        .and_then(|errors| errors.first())
    {
        return ShellError::Server {
            code: first.code,
            code_name: first.code_name.clone().unwrap_or_default(),
            message: first.message.clone(),
        };
    }
    if let Some(concern) = &insert_many.write_concern_error {
        return ShellError::Server {
            code: concern.code,
            code_name: concern.code_name.clone(),
            message: concern.message.clone(),
        };
    }
    ShellError::Driver(format!("MongoError: {error}"))
}

/// Result type of the evaluator.
pub type ShellResult<T> = Result<T, ShellError>;

/// The evaluated arguments of one helper call, consumed left to right.
#[derive(Debug)]
pub struct Args {
    method: String,
    values: VecDeque<Bson>,
    position: usize,
}

impl Args {
    /// Wraps the arguments of `method` (used in error messages).
    pub fn new(method: impl Into<String>, values: Vec<Bson>) -> Self {
        Args {
            method: method.into(),
            values: values.into(),
            position: 0,
        }
    }

    fn next_value(&mut self) -> Option<Bson> {
        self.position += 1;
        match self.values.pop_front() {
            Some(Bson::Null | Bson::Undefined) | None => None,
            Some(value) => Some(value),
        }
    }

    fn type_error(&self, what: &str, expected: &str) -> ShellError {
        ShellError::Type(format!(
            "{}(): argument {} ({what}) must be {expected}",
            self.method, self.position
        ))
    }

    /// A required document argument.
    pub fn document(&mut self, what: &str) -> ShellResult<Document> {
        match self.next_value() {
            Some(Bson::Document(doc)) => Ok(doc),
            _ => Err(self.type_error(what, "an object")),
        }
    }

    /// An optional document argument (absent, `null` and `undefined` give None).
    pub fn optional_document(&mut self, what: &str) -> ShellResult<Option<Document>> {
        match self.next_value() {
            None => Ok(None),
            Some(Bson::Document(doc)) => Ok(Some(doc)),
            Some(_) => Err(self.type_error(what, "an object")),
        }
    }

    /// A required string argument.
    pub fn string(&mut self, what: &str) -> ShellResult<String> {
        match self.next_value() {
            Some(Bson::String(text)) => Ok(text),
            _ => Err(self.type_error(what, "a string")),
        }
    }

    /// An optional string argument.
    pub fn optional_string(&mut self, what: &str) -> ShellResult<Option<String>> {
        match self.next_value() {
            None => Ok(None),
            Some(Bson::String(text)) => Ok(Some(text)),
            Some(_) => Err(self.type_error(what, "a string")),
        }
    }

    /// A required integer argument.
    pub fn integer(&mut self, what: &str) -> ShellResult<i64> {
        match self.next_value().as_ref().and_then(bson_as_i64) {
            Some(number) => Ok(number),
            None => Err(self.type_error(what, "an integer")),
        }
    }

    /// An optional integer argument.
    pub fn optional_integer(&mut self, what: &str) -> ShellResult<Option<i64>> {
        match self.next_value() {
            None => Ok(None),
            Some(value) => match bson_as_i64(&value) {
                Some(number) => Ok(Some(number)),
                None => Err(self.type_error(what, "an integer")),
            },
        }
    }

    /// An optional boolean argument.
    pub fn optional_bool(&mut self, what: &str) -> ShellResult<Option<bool>> {
        match self.next_value() {
            None => Ok(None),
            Some(Bson::Boolean(flag)) => Ok(Some(flag)),
            Some(_) => Err(self.type_error(what, "a boolean")),
        }
    }

    /// A required array-of-documents argument.
    pub fn documents(&mut self, what: &str) -> ShellResult<Vec<Document>> {
        let Some(Bson::Array(items)) = self.next_value() else {
            return Err(self.type_error(what, "an array of objects"));
        };
        let mut docs = Vec::with_capacity(items.len());
        for item in items {
            match item {
                Bson::Document(doc) => docs.push(doc),
                _ => return Err(self.type_error(what, "an array of objects")),
            }
        }
        Ok(docs)
    }

    /// A required argument of any type.
    pub fn any(&mut self, what: &str) -> ShellResult<Bson> {
        match self.next_value() {
            Some(value) => Ok(value),
            None => Err(self.type_error(what, "given")),
        }
    }

    /// An optional argument of any type.
    pub fn optional_any(&mut self) -> Option<Bson> {
        self.next_value()
    }

    /// Takes all remaining arguments.
    pub fn rest(&mut self) -> Vec<Bson> {
        self.values.drain(..).collect()
    }

    /// Fails if arguments are left over.
    pub fn finish(self) -> ShellResult<()> {
        if self.values.is_empty() {
            Ok(())
        } else {
            Err(ShellError::Type(format!(
                "{}(): takes at most {} argument(s)",
                self.method, self.position
            )))
        }
    }
}

/// Reads an integral number of any BSON numeric type.
#[allow(clippy::cast_possible_truncation)] // reason: checked integral and in range first.
pub fn bson_as_i64(value: &Bson) -> Option<i64> {
    match value {
        Bson::Int32(number) => Some(i64::from(*number)),
        Bson::Int64(number) => Some(*number),
        Bson::Double(number) if number.fract() == 0.0 && number.abs() < 9_007_199_254_740_992.0 => {
            Some(*number as i64)
        }
        _ => None,
    }
}

/// A count as mongosh shows it: a plain number.
#[allow(clippy::cast_precision_loss)] // reason: counts above 2^31 print as JS numbers do.
pub fn count_bson(count: u64) -> Bson {
    match i32::try_from(count) {
        Ok(small) => Bson::Int32(small),
        Err(_) => Bson::Double(count as f64),
    }
}

#[cfg(test)]
mod tests {
    use bson::doc;

    use super::*;

    #[test]
    fn server_errors_print_like_mongosh() {
        let error = ShellError::Server {
            code: 11000,
            code_name: "DuplicateKey".into(),
            message: "E11000 duplicate key".into(),
        };
        assert_eq!(
            error.to_string(),
            "MongoServerError[DuplicateKey]: E11000 duplicate key"
        );
        let unnamed = ShellError::Server {
            code: 7,
            code_name: String::new(),
            message: "m".into(),
        };
        assert_eq!(unnamed.to_string(), "MongoServerError[7]: m");
    }

    #[test]
    fn arguments_are_checked_in_order() {
        let mut args = Args::new("find", vec![Bson::Null, Bson::Document(doc! { "a": 1 })]);
        assert_eq!(args.optional_document("filter").unwrap(), None);
        assert_eq!(
            args.optional_document("projection").unwrap(),
            Some(doc! { "a": 1 })
        );
        args.finish().unwrap();
        let mut args = Args::new("limit", vec![Bson::Double(3.0), Bson::Int32(1)]);
        assert_eq!(args.integer("n").unwrap(), 3);
        assert_eq!(
            args.finish().unwrap_err().to_string(),
            "TypeError: limit(): takes at most 1 argument(s)"
        );
        let mut args = Args::new("insertMany", vec![Bson::Array(vec![Bson::Int32(1)])]);
        let error = args.documents("documents").unwrap_err();
        assert_eq!(
            error.to_string(),
            "TypeError: insertMany(): argument 1 (documents) must be an array of objects"
        );
    }

    #[test]
    fn counts_print_as_plain_numbers() {
        assert_eq!(count_bson(5), Bson::Int32(5));
        assert_eq!(count_bson(1 << 40), Bson::Double(1_099_511_627_776.0));
        assert_eq!(bson_as_i64(&Bson::Double(2.5)), None);
        assert_eq!(bson_as_i64(&Bson::Int64(-4)), Some(-4));
    }
}
