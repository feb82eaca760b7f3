//! `shoal shell`: a mongosh-style admin shell over the official driver.
//!
//! The parser turns text into statements, the evaluator maps them to commands and prints
//! results with the formatter. This module owns the two front ends: `--eval` (no prompt,
//! exit status 1 on the first error) and the interactive rustyline loop with history and
//! multi-line input for unbalanced brackets.

mod admin;
mod args;
mod crud;
pub mod eval;
pub mod format;
pub mod parser;

use std::path::PathBuf;

use anyhow::Context as _;
use rustyline::{Config, DefaultEditor, error::ReadlineError};
use tokio::runtime::Runtime;

use self::{
    args::ShellError,
    eval::{Flow, Shell},
    parser::{Statement, is_incomplete, parse_script},
};

/// Entries kept in `~/.shoal_history`.
const HISTORY_ENTRIES_MAX: usize = 1000;
/// File name of the history file in the home directory.
const HISTORY_FILE_NAME: &str = ".shoal_history";
/// Prompt shown while a statement continues over several lines.
const CONTINUATION_PROMPT: &str = "... ";

/// Help shown by `help`.
pub const HELP_TEXT: &str = "\
Shell statements:
  use <db>                        switch the current database
  show dbs | databases            list databases with their sizes
  show collections | tables       list collections of the current database
  db                              print the current database name
  exit | quit                     leave the shell
Database:
  db.runCommand({...})            run a command on the current database
  db.adminCommand({...})          run a command on admin
  db.getSiblingDB('name')         another database, e.g. db.getSiblingDB('config').chunks.find()
  db.getCollection('name')        a collection (same as db.name)
  db.getCollectionNames(), db.createCollection(name, opts?), db.dropDatabase()
Collections (db.<coll>.*):
  insertOne(doc), insertMany([docs])
  find(filter?, projection?) with .sort({..}) .limit(n) .skip(n) .toArray() .count()
  findOne(filter?, projection?), countDocuments(filter?), estimatedDocumentCount()
  updateOne(filter, update, opts?), updateMany(..), replaceOne(filter, doc, opts?)
  deleteOne(filter), deleteMany(filter), distinct(field, filter?), aggregate([stages])
  createIndex(keys, opts?), getIndexes(), dropIndex(name), drop()
Sharding (sh.*):
  addShard('rs/host:port'), enableSharding('db', primaryShard?),
  shardCollection('db.coll', {k: 1}, unique?), splitAt('db.coll', {k: 5}),
  moveChunk('db.coll', {k: 5}, 'shard1'), status(), listShards(),
  getBalancerState(), isBalancerRunning(), startBalancer(), stopBalancer(),
  setBalancerState(bool), enableBalancing('db.coll'), disableBalancing('db.coll'),
  balancerCollectionStatus('db.coll'), addShardToZone('shard', 'zone'),
  removeShardFromZone('shard', 'zone'), updateZoneKeyRange('db.coll', {k: 0}, {k: 9}, 'zone'),
  removeRangeFromZone('db.coll', {k: 0}, {k: 9})
Replica set (rs.*, on the connected node; open a shell on a member with --port or --host):
  status(), conf(), initiate(cfg?), stepDown(secs?, catchUpSecs?), hello(), isMaster(),
  add('host:port' | {host: .., priority: .., votes: .., hidden: ..}), remove('host:port'),
  reconfig(cfg, opts?)  (add/remove/reconfig send the config with version + 1)
Other: printjson(x), print(x, ...)
Literals: {a: 1}, [1, 2], 'str', ObjectId('..'), ISODate('..'), new Date('..'), NumberLong(..),
  NumberInt(..), NumberDecimal('..'), UUID('..'), Timestamp(t, i), MinKey, MaxKey, /re/i,
  and Extended JSON such as {$oid: '..'}, {$date: '..'}, {$numberLong: '..'}.";

/// Runs `shoal shell`: `--eval` mode when a script is given, else interactive.
/// Returns the process exit status.
pub fn run(runtime: &Runtime, uri: &str, script: Option<&str>) -> anyhow::Result<i32> {
    let mut shell = match runtime.block_on(Shell::connect(uri)) {
        Ok(shell) => shell,
        Err(error) => {
            eprintln!("{error}");
            return Ok(1);
        }
    };
    match script {
        Some(script) => Ok(run_eval(runtime, &mut shell, script)),
        None => run_interactive(runtime, &mut shell),
    }
}

fn run_eval(runtime: &Runtime, shell: &mut Shell, script: &str) -> i32 {
    let statements = match parse_script(script) {
        Ok(statements) => statements,
        Err(error) => {
            eprintln!("{error}");
            return 1;
        }
    };
    for statement in &statements {
        match runtime.block_on(shell.execute(statement)) {
            Ok(Flow::Continue) => {}
            Ok(Flow::Exit) => return 0,
            Err(error) => {
                eprintln!("{error}");
                return 1;
            }
        }
    }
    0
}

fn history_path() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(HISTORY_FILE_NAME))
}

fn run_interactive(runtime: &Runtime, shell: &mut Shell) -> anyhow::Result<i32> {
    let config = Config::builder()
        .max_history_size(HISTORY_ENTRIES_MAX)?
        .build();
    let mut editor = DefaultEditor::with_config(config).context("cannot start line editor")?;
    let history = history_path();
    if let Some(path) = &history {
        // A missing history file is normal on first use.
        let _ = editor.load_history(path);
    }
    let mut buffer = String::new();
    loop {
        let prompt = if buffer.is_empty() {
            shell.prompt()
        } else {
            CONTINUATION_PROMPT.into()
        };
        match editor.readline(&prompt) {
            Ok(line) => {
                if !buffer.is_empty() {
                    buffer.push('\n');
                }
                buffer.push_str(&line);
                if is_incomplete(&buffer) {
                    continue;
                }
                let input = std::mem::take(&mut buffer);
                if input.trim().is_empty() {
                    continue;
                }
                let _ = editor.add_history_entry(input.as_str());
                if run_input(runtime, shell, &input) == Flow::Exit {
                    break;
                }
            }
            Err(ReadlineError::Interrupted) => {
                buffer.clear();
                println!("(To exit, press Ctrl+D or type exit)");
            }
            Err(ReadlineError::Eof) => {
                // Input ended inside an unclosed statement: let the parser say what is wrong.
                if !buffer.trim().is_empty() {
                    run_input(runtime, shell, &buffer);
                }
                break;
            }
            Err(error) => return Err(error).context("cannot read input"),
        }
    }
    if let Some(path) = &history
        && let Err(error) = editor.save_history(path)
    {
        eprintln!(
            "warning: cannot save history to {}: {error}",
            path.display()
        );
    }
    Ok(0)
}

/// Parses and runs one interactive input; errors are printed and the shell continues.
fn run_input(runtime: &Runtime, shell: &mut Shell, input: &str) -> Flow {
    let statements = match parse_script(input) {
        Ok(statements) => statements,
        Err(error) => {
            eprintln!("{error}");
            return Flow::Continue;
        }
    };
    for statement in &statements {
        match runtime.block_on(execute_interruptible(shell, statement)) {
            Ok(Flow::Continue) => {}
            Ok(Flow::Exit) => return Flow::Exit,
            Err(error) => {
                eprintln!("{error}");
                return Flow::Continue;
            }
        }
    }
    Flow::Continue
}

/// Runs a statement, abandoning it on Ctrl-C instead of killing the shell.
async fn execute_interruptible(
    shell: &mut Shell,
    statement: &Statement,
) -> Result<Flow, ShellError> {
    tokio::select! {
        result = shell.execute(statement) => result,
        _ = tokio::signal::ctrl_c() => Err(ShellError::Driver("interrupted".to_string())),
    }
}
