//! The statement evaluator: walks parsed member/call chains (`db.c.find(..).sort(..)`) over a
//! small set of shell values and maps every helper to real commands through the official
//! driver, printing results in mongosh's style.
//!
//! Values that stand for server objects (a database, a collection, an unexecuted find) stay
//! lazy until the statement ends, so chained cursor modifiers compose before anything is
//! sent, as in mongosh.

use std::time::Duration;

use bson::{Bson, Document, doc};
use futures::future::BoxFuture;
use mongodb::{Client, Database, options::ClientOptions};

use super::{
    args::{Args, ShellError, ShellResult},
    format::{format_result, inspect},
    parser::{Chain, Expr, Statement, Step},
};

/// Server selection timeout used when the URI does not set one, so a dead server is reported
/// promptly instead of after the driver's 30 s default.
const SERVER_SELECTION_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// Upper bound on documents `toArray()` and similar helpers load into memory.
pub const MATERIALIZED_DOCS_MAX: usize = 100_000;

/// A value produced while evaluating a statement.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A plain BSON value (documents, numbers, strings, ...).
    Bson(Bson),
    /// No result to print (e.g. after `print(..)`).
    Unit,
    /// Preformatted text printed as is (e.g. `sh.status()`).
    Text(String),
    /// A database handle (`db`, `db.getSiblingDB(..)`).
    Db(String),
    /// A collection handle (`db.c`, `db.getCollection(..)`).
    Collection(CollectionRef),
    /// A find whose cursor has not been opened yet.
    Find(FindSpec),
    /// An aggregation whose cursor has not been opened yet.
    Aggregate(AggregateSpec),
    /// The `sh` sharding helper object.
    Sh,
    /// The `rs` replica-set helper object.
    Rs,
    /// A callable global (`print`, `printjson`).
    Function(Global),
}

/// Global functions callable by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Global {
    /// `print(a, b, ..)`: strings raw, other values inspected, space separated.
    Print,
    /// `printjson(x)`: the inspected value.
    PrintJson,
}

/// A collection in a database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectionRef {
    /// Database name.
    pub db: String,
    /// Collection name (may contain dots, e.g. `system.profile`).
    pub name: String,
}

/// The parts of a `find` accumulated from chained cursor modifiers.
#[derive(Debug, Clone, PartialEq)]
pub struct FindSpec {
    /// The collection queried.
    pub collection: CollectionRef,
    /// The query filter.
    pub filter: Document,
    /// Projection, from `find(_, projection)` or `.projection(..)`.
    pub projection: Option<Document>,
    /// Sort order from `.sort(..)`.
    pub sort: Option<Document>,
    /// Limit from `.limit(n)` (negative means a single batch, as in the driver).
    pub limit: Option<i64>,
    /// Skip from `.skip(n)`.
    pub skip: Option<u64>,
    /// Batch size from `.batchSize(n)`.
    pub batch_size: Option<u32>,
}

/// An aggregation pipeline on a collection.
#[derive(Debug, Clone, PartialEq)]
pub struct AggregateSpec {
    /// The collection aggregated.
    pub collection: CollectionRef,
    /// The pipeline stages.
    pub pipeline: Vec<Document>,
    /// Options such as `allowDiskUse`, `batchSize`.
    pub options: Option<Document>,
}

/// Whether the shell should keep reading statements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Keep going.
    Continue,
    /// `exit` was evaluated.
    Exit,
}

/// A connected shell session: the client and the current database.
#[derive(Debug)]
pub struct Shell {
    pub(super) client: Client,
    pub(super) db_name: String,
}

impl Shell {
    /// Connects to `uri` and checks the server answers `ping`. A single-host URI without
    /// `replicaSet` connects directly, as mongosh does, so `rs.*` helpers reach that node.
    pub async fn connect(uri: &str) -> ShellResult<Shell> {
        let mut options = ClientOptions::parse(uri).await?;
        let single_host = options.hosts.len() == 1;
        if single_host && options.repl_set_name.is_none() && options.direct_connection.is_none() {
            options.direct_connection = Some(true);
        }
        if options.server_selection_timeout.is_none() {
            options.server_selection_timeout = Some(SERVER_SELECTION_TIMEOUT_DEFAULT);
        }
        if options.app_name.is_none() {
            options.app_name = Some("shoal shell".to_string());
        }
        let db_name = options
            .default_database
            .clone()
            .unwrap_or_else(|| "test".to_string());
        let client = Client::with_options(options)?;
        client
            .database("admin")
            .run_command(doc! { "ping": 1 })
            .await?;
        Ok(Shell { client, db_name })
    }

    /// The interactive prompt, `shoal:<db>> `.
    pub fn prompt(&self) -> String {
        format!("shoal:{}> ", self.db_name)
    }

    pub(super) fn database(&self, name: &str) -> Database {
        self.client.database(name)
    }

    pub(super) fn collection(&self, reference: &CollectionRef) -> mongodb::Collection<Document> {
        self.client
            .database(&reference.db)
            .collection(&reference.name)
    }

    /// Runs one statement and prints its result.
    pub async fn execute(&mut self, statement: &Statement) -> ShellResult<Flow> {
        match statement {
            Statement::Use(name) => {
                self.db_name = name.clone();
                println!("switched to db {name}");
            }
            Statement::Show(what) => self.show(what).await?,
            Statement::Exit => return Ok(Flow::Exit),
            Statement::Help => println!("{}", super::HELP_TEXT),
            Statement::Expr(expr) => {
                let value = self.eval(expr).await?;
                self.print_value(value).await?;
            }
        }
        Ok(Flow::Continue)
    }

    /// Evaluates an expression (boxed because arguments may themselves be chains).
    pub fn eval<'a>(&'a mut self, expr: &'a Expr) -> BoxFuture<'a, ShellResult<Value>> {
        Box::pin(async move {
            match expr {
                Expr::Literal(value) => Ok(Value::Bson(value.clone())),
                Expr::Chain(chain) => self.eval_chain(chain).await,
            }
        })
    }

    async fn eval_chain(&mut self, chain: &Chain) -> ShellResult<Value> {
        let mut value = self.resolve_root(&chain.root)?;
        let mut idx = 0;
        while idx < chain.steps.len() {
            match (&chain.steps[idx], chain.steps.get(idx + 1)) {
                (Step::Member(name), Some(Step::Call(arg_exprs))) => {
                    let args = self.eval_args(name, arg_exprs).await?;
                    value = self.call_method(value, name, args).await?;
                    idx += 2;
                }
                (Step::Member(name), _) => {
                    value = member(value, name)?;
                    idx += 1;
                }
                (Step::Index(index), _) => {
                    value = self.element(value, *index).await?;
                    idx += 1;
                }
                (Step::Call(arg_exprs), _) => {
                    value = self.call_function(value, arg_exprs).await?;
                    idx += 1;
                }
            }
        }
        Ok(value)
    }

    fn resolve_root(&self, name: &str) -> ShellResult<Value> {
        match name {
            "db" => Ok(Value::Db(self.db_name.clone())),
            "sh" => Ok(Value::Sh),
            "rs" => Ok(Value::Rs),
            "print" => Ok(Value::Function(Global::Print)),
            "printjson" => Ok(Value::Function(Global::PrintJson)),
            _ => Err(ShellError::Reference(name.to_string())),
        }
    }

    async fn eval_args(&mut self, method: &str, exprs: &[Expr]) -> ShellResult<Args> {
        let mut values = Vec::with_capacity(exprs.len());
        for expr in exprs {
            let value = self.eval(expr).await?;
            values.push(self.materialize(value).await?);
        }
        Ok(Args::new(method, values))
    }

    /// Turns a value into BSON, running lazy cursors.
    pub(super) async fn materialize(&mut self, value: Value) -> ShellResult<Bson> {
        match value {
            Value::Bson(bson) => Ok(bson),
            Value::Unit => Ok(Bson::Undefined),
            Value::Text(text) => Ok(Bson::String(text)),
            Value::Db(name) => Ok(Bson::String(name)),
            Value::Collection(reference) => {
                Ok(Bson::String(format!("{}.{}", reference.db, reference.name)))
            }
            Value::Find(spec) => Ok(Bson::Array(self.find_to_array(&spec).await?)),
            Value::Aggregate(spec) => Ok(Bson::Array(self.aggregate_to_array(&spec).await?)),
            Value::Sh | Value::Rs | Value::Function(_) => Err(ShellError::Type(
                "helper objects cannot be used as values".to_string(),
            )),
        }
    }

    async fn element(&mut self, value: Value, index: usize) -> ShellResult<Value> {
        match self.materialize(value).await? {
            Bson::Array(items) => Ok(Value::Bson(
                items.get(index).cloned().unwrap_or(Bson::Undefined),
            )),
            _ => Err(ShellError::Type(format!(
                "cannot index a non-array with [{index}]"
            ))),
        }
    }

    async fn call_function(&mut self, value: Value, exprs: &[Expr]) -> ShellResult<Value> {
        let Value::Function(global) = value else {
            return Err(ShellError::Type("value is not a function".to_string()));
        };
        let mut args = self.eval_args("print", exprs).await?;
        let values = args.rest();
        let text = match global {
            Global::Print => values
                .iter()
                .map(format_result)
                .collect::<Vec<_>>()
                .join(" "),
            Global::PrintJson => values.iter().map(inspect).collect::<Vec<_>>().join("\n"),
        };
        println!("{text}");
        Ok(Value::Unit)
    }

    async fn call_method(&mut self, target: Value, method: &str, args: Args) -> ShellResult<Value> {
        match target {
            Value::Db(name) => self.db_method(&name, method, args).await,
            Value::Collection(reference) => self.collection_method(reference, method, args).await,
            Value::Find(spec) => self.find_method(spec, method, args).await,
            Value::Aggregate(spec) => self.aggregate_method(spec, method, args).await,
            Value::Sh => self.sh_method(method, args).await,
            Value::Rs => self.rs_method(method, args).await,
            Value::Bson(_) | Value::Unit | Value::Text(_) | Value::Function(_) => {
                Err(ShellError::Type(format!("{method} is not a function")))
            }
        }
    }

    async fn db_method(
        &mut self,
        db_name: &str,
        method: &str,
        mut args: Args,
    ) -> ShellResult<Value> {
        let db = self.database(db_name);
        let reply = match method {
            "getSiblingDB" => {
                let name = args.string("database name")?;
                args.finish()?;
                return Ok(Value::Db(name));
            }
            "getCollection" => {
                let name = args.string("collection name")?;
                args.finish()?;
                return Ok(Value::Collection(CollectionRef {
                    db: db_name.to_string(),
                    name,
                }));
            }
            "getName" => {
                args.finish()?;
                return Ok(Value::Bson(Bson::String(db_name.to_string())));
            }
            "getCollectionNames" => {
                args.finish()?;
                let mut names = db.list_collection_names().await?;
                names.sort();
                return Ok(Value::Bson(Bson::Array(
                    names.into_iter().map(Bson::String).collect(),
                )));
            }
            "runCommand" => db.run_command(command_arg(&mut args)?).await?,
            "adminCommand" => {
                self.database("admin")
                    .run_command(command_arg(&mut args)?)
                    .await?
            }
            "createCollection" => {
                let name = args.string("collection name")?;
                let mut command = doc! { "create": name };
                command.extend(args.optional_document("options")?.unwrap_or_default());
                args.finish()?;
                db.run_command(command).await?
            }
            "dropDatabase" => simple_command(&db, args, "dropDatabase").await?,
            "serverStatus" => simple_command(&db, args, "serverStatus").await?,
            "hello" => simple_command(&db, args, "hello").await?,
            "stats" => simple_command(&db, args, "dbStats").await?,
            "printShardingStatus" => return self.sh_method("status", args).await,
            _ => return Err(ShellError::Type(format!("db.{method} is not a function"))),
        };
        Ok(Value::Bson(Bson::Document(reply)))
    }

    /// Prints a statement's final value; lazy cursors are run and streamed here.
    async fn print_value(&mut self, value: Value) -> ShellResult<()> {
        match value {
            Value::Bson(bson) => println!("{}", format_result(&bson)),
            Value::Unit => {}
            Value::Text(text) => println!("{text}"),
            Value::Db(name) => println!("{name}"),
            Value::Collection(reference) => println!("{}.{}", reference.db, reference.name),
            Value::Find(spec) => self.print_find(&spec).await?,
            Value::Aggregate(spec) => self.print_aggregate(&spec).await?,
            Value::Sh => println!("sh: sharding helpers; type 'help' for the list"),
            Value::Rs => println!("rs: replica set helpers; type 'help' for the list"),
            Value::Function(_) => println!("[Function]"),
        }
        Ok(())
    }
}

/// `db.c` is the collection `c`; `db.c.d` is the collection `c.d`; `doc.field` reads a field.
fn member(value: Value, name: &str) -> ShellResult<Value> {
    match value {
        Value::Db(db) => Ok(Value::Collection(CollectionRef {
            db,
            name: name.to_string(),
        })),
        Value::Collection(reference) => Ok(Value::Collection(CollectionRef {
            db: reference.db,
            name: format!("{}.{name}", reference.name),
        })),
        Value::Bson(Bson::Document(doc)) => Ok(Value::Bson(
            doc.get(name).cloned().unwrap_or(Bson::Undefined),
        )),
        Value::Bson(Bson::Array(items)) if name == "length" => {
            Ok(Value::Bson(super::args::count_bson(items.len() as u64)))
        }
        _ => Err(ShellError::Type(format!("cannot read property '{name}'"))),
    }
}

/// `runCommand("ping")` means `{ping: 1}`, as in mongosh.
fn command_arg(args: &mut Args) -> ShellResult<Document> {
    let command = match args.any("command")? {
        Bson::Document(doc) => doc,
        Bson::String(name) => doc! { name: 1 },
        _ => {
            return Err(ShellError::Type(
                "runCommand(): the command must be an object".into(),
            ));
        }
    };
    if command.is_empty() {
        return Err(ShellError::Type(
            "runCommand(): the command is empty".into(),
        ));
    }
    Ok(command)
}

async fn simple_command(db: &Database, args: Args, name: &str) -> ShellResult<Document> {
    args.finish()?;
    Ok(db.run_command(doc! { name: 1 }).await?)
}
