//! `shoal up` as a user runs it: a cluster of 3-member replica sets from one command, `rs.*`
//! through `shoal shell --port` on a shard member, a third hand-started shard initiated with
//! `rs.initiate()` and added with `shoal shell --eval 'sh.addShard(...)'`, shell scripts that
//! succeed and fail with the right exit status, a clean stop on SIGTERM (no process or port
//! left behind), and a second run over the same directory that finds the data again. A last
//! test grows and shrinks a bare replica set with `rs.add` / `rs.remove`.

use std::{
    path::Path,
    process::Output,
    time::{Duration, Instant},
};

use bson::{Document, doc};
use mongodb::Client;
use shoal_tests::{
    Process, make_certs,
    mongo::{client_for, direct_client, wait_ping},
    ports::{free_port, free_port_block},
    sharding::list_shards,
    up::{MEMBERS_DEFAULT, ShoalUp, shard_member_ports, shell_eval, shell_eval_on_port, up_ports},
};

const SHARDS: usize = 2;
/// Ports `shoal up` uses with the default 3 members: router, 3 config members, 3 members of
/// each of the two shards, and one spare checked free as well.
const PORT_BLOCK: u16 = 11;
const DOCS: i32 = 100;
/// How long a set may take to elect a primary.
const PRIMARY_TIMEOUT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread")]
async fn nodes_stop_when_shoal_up_is_killed() -> anyhow::Result<()> {
    let cluster_dir = tempfile::Builder::new()
        .prefix("shoal-up-kill-")
        .tempdir()?;
    let base = free_port_block(PORT_BLOCK)?;
    let ports = up_ports(base, SHARDS, MEMBERS_DEFAULT)?;
    let log = cluster_dir.path().join("shoal-up.log");
    let up = ShoalUp::start(&cluster_dir.path().join("data"), base, SHARDS, &log).await?;
    let took = up.kill_only_supervisor(&ports).await?;
    println!("orphaned nodes released their ports {took:?} after shoal up was SIGKILLed");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn shoal_up_shell_and_restart() -> anyhow::Result<()> {
    let cluster_dir = tempfile::Builder::new().prefix("shoal-up-").tempdir()?;
    let extra_dir = tempfile::Builder::new().prefix("shoal-shard9-").tempdir()?;
    let base = free_port_block(PORT_BLOCK)?;
    let ports = up_ports(base, SHARDS, MEMBERS_DEFAULT)?;
    let log = extra_dir.path().join("shoal-up.log");

    let up = ShoalUp::start(cluster_dir.path(), base, SHARDS, &log).await?;
    println!(
        "FIGURE shoal up: ready after {:.2} s (first run)",
        up.ready_after.as_secs_f64()
    );
    assert_eq!(
        up.uri.trim_end_matches('/'),
        format!("mongodb://127.0.0.1:{base}")
    );
    let ca_dir = cluster_dir.path().join("tls").join("ca");
    let mut shard9 = start_member(&ca_dir, extra_dir.path(), "shard9", "shard9").await?;
    let result = first_run(&up, base, &shard9).await;
    if result.is_err() {
        up.dump_log();
        shard9.process.dump_log(shoal_tests::LOG_TAIL_LINES);
    }
    result?;
    let took = up.terminate(&ports).await?;
    println!("shoal up stopped {took:?} after SIGTERM");

    let again = ShoalUp::start(cluster_dir.path(), base, SHARDS, &log).await?;
    println!(
        "FIGURE shoal up: ready after {:.2} s (second run, same dir)",
        again.ready_after.as_secs_f64()
    );
    let result = second_run(&again).await;
    if result.is_err() {
        again.dump_log();
        shard9.process.dump_log(shoal_tests::LOG_TAIL_LINES);
    }
    result?;
    again.terminate(&ports).await?;
    shard9.process.kill();
    Ok(())
}

/// A hand-started `shoal-shard` replica-set member.
struct Member {
    process: Process,
    port: u16,
}

impl Member {
    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// Starts `shoal-shard --replset REPLSET` by hand, uninitiated, with a certificate from the
/// CA in `ca_dir`.
async fn start_member(
    ca_dir: &Path,
    dir: &Path,
    name: &str,
    replset: &str,
) -> anyhow::Result<Member> {
    anyhow::ensure!(
        ca_dir.join("ca-key.pem").is_file(),
        "no CA in {}",
        ca_dir.display()
    );
    let tls_dir = dir.join(name).join("tls");
    make_certs(ca_dir, &tls_dir, name)?;
    let port = free_port()?;
    let args = vec![
        "--replset".to_owned(),
        replset.to_owned(),
        "--bind".to_owned(),
        format!("127.0.0.1:{port}"),
        "--dir".to_owned(),
        dir.join(name).join("data").display().to_string(),
        "--tls-dir".to_owned(),
        tls_dir.display().to_string(),
    ];
    let mut process = Process::new(
        name,
        shoal_tests::bin_path("shoal-shard")?,
        args,
        dir.join(format!("{name}.log")),
    );
    process.start(&[])?;
    wait_ping(port, shoal_tests::READY_TIMEOUT).await?;
    Ok(Member { process, port })
}

/// Polls `hello` on the member at `port` until it is the writable primary.
async fn wait_primary(port: u16) -> anyhow::Result<()> {
    let client = direct_client(port).await?;
    let started = Instant::now();
    loop {
        let hello = client
            .database("admin")
            .run_command(doc! { "hello": 1 })
            .await?;
        if hello.get_bool("isWritablePrimary") == Ok(true) {
            return Ok(());
        }
        anyhow::ensure!(
            started.elapsed() < PRIMARY_TIMEOUT,
            "127.0.0.1:{port} did not become primary within {PRIMARY_TIMEOUT:?}: {hello}"
        );
        tokio::time::sleep(shoal_tests::POLL_INTERVAL).await;
    }
}

/// Runs `script` in a shell on 127.0.0.1:`port` and fails unless it exits 0.
async fn shell_ok(port: u16, script: &str) -> anyhow::Result<String> {
    let output = shell_eval_on_port(port, script).await?;
    anyhow::ensure!(output.status.success(), "{script} failed: {output:?}");
    Ok(stdout(&output))
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `rs.status()` through `shoal shell` on a member of shard0: three members, one primary.
async fn check_shard_status_through_shell(base: u16) -> anyhow::Result<()> {
    let shard0 = shard_member_ports(base, MEMBERS_DEFAULT, 0)?;
    // A member other than the first, which initiated the set and is most likely primary.
    let port = shard0[1];
    let status = shell_ok(port, "rs.status()").await?;
    assert!(status.contains("set: 'shard0'"), "{status}");
    assert_eq!(status.matches("stateStr: ").count(), 3, "{status}");
    assert_eq!(status.matches("stateStr: 'PRIMARY'").count(), 1, "{status}");
    let members = shell_ok(port, "rs.conf().members.length").await?;
    assert_eq!(members.trim(), "3");
    Ok(())
}

async fn first_run(up: &ShoalUp, base: u16, shard9: &Member) -> anyhow::Result<()> {
    let client = client_for(&up.uri).await?;
    let docs: Vec<Document> = (0..DOCS).map(|i| doc! { "i": i }).collect();
    client
        .database("upx")
        .collection::<Document>("c")
        .insert_many(docs)
        .await?;
    let mut shards = list_shards(&client).await?;
    shards.sort();
    assert_eq!(shards, vec!["shard0".to_owned(), "shard1".to_owned()]);
    check_shard_status_through_shell(base).await?;

    shell_ok(shard9.port, "rs.initiate()").await?;
    wait_primary(shard9.port).await?;
    let add = format!("sh.addShard(\"shard9/{}\")", shard9.host());
    let output = shell_eval(&up.uri, &add).await?;
    assert!(output.status.success(), "sh.addShard failed: {output:?}");
    let mut shards = list_shards(&client).await?;
    shards.sort();
    assert_eq!(
        shards,
        vec![
            "shard0".to_owned(),
            "shard1".to_owned(),
            "shard9".to_owned()
        ]
    );

    let output = shell_eval(&up.uri, "db.getSiblingDB(\"x\").c.insertOne({a: 1})").await?;
    assert!(
        output.status.success(),
        "insertOne through the shell failed: {output:?}"
    );
    assert_eq!(
        client
            .database("x")
            .collection::<Document>("c")
            .count_documents(doc! { "a": 1 })
            .await?,
        1
    );

    let output = shell_eval(&up.uri, "db.runCommand({nosuchcommand: 1})").await?;
    assert!(
        !output.status.success(),
        "a failing command exited 0: {output:?}"
    );
    check_data(&client).await
}

async fn second_run(up: &ShoalUp) -> anyhow::Result<()> {
    let client = client_for(&up.uri).await?;
    check_data(&client).await?;
    let shards = list_shards(&client).await?;
    assert_eq!(shards.len(), 3, "{shards:?}");
    Ok(())
}

async fn check_data(client: &Client) -> anyhow::Result<()> {
    let upx = client.database("upx").collection::<Document>("c");
    assert_eq!(upx.count_documents(doc! {}).await?, DOCS as u64);
    assert_eq!(upx.count_documents(doc! { "i": { "$gte": 50 } }).await?, 50);
    let x = client.database("x").collection::<Document>("c");
    assert_eq!(x.count_documents(doc! { "a": 1 }).await?, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn shell_rs_helpers_add_and_remove_a_member() -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("shoal-rs-shell-")
        .tempdir()?;
    let ca_dir = dir.path().join("ca");
    shoal_rpc::certs::create_ca(&ca_dir)?;
    let mut first = start_member(&ca_dir, dir.path(), "rsx-0", "rsx").await?;
    let mut second = start_member(&ca_dir, dir.path(), "rsx-1", "rsx").await?;
    let result = grow_and_shrink(&first, &second).await;
    if result.is_err() {
        first.process.dump_log(shoal_tests::LOG_TAIL_LINES);
        second.process.dump_log(shoal_tests::LOG_TAIL_LINES);
    }
    result?;
    second.process.kill();
    first.process.kill();
    Ok(())
}

async fn grow_and_shrink(first: &Member, second: &Member) -> anyhow::Result<()> {
    shell_ok(first.port, "rs.initiate()").await?;
    wait_primary(first.port).await?;
    // Versions print as `Long('N')` or a plain number.
    let version = |text: String| {
        let text = text.trim();
        let digits = text
            .strip_prefix("Long('")
            .and_then(|rest| rest.strip_suffix("')"))
            .unwrap_or(text);
        digits.parse::<i64>()
    };
    let initial = version(shell_ok(first.port, "rs.conf().version").await?)?;

    shell_ok(first.port, &format!("rs.add('{}')", second.host())).await?;
    let status = shell_ok(first.port, "rs.status()").await?;
    assert_eq!(status.matches("stateStr: ").count(), 2, "{status}");
    assert!(status.contains(&second.host()), "{status}");
    let added = version(shell_ok(first.port, "rs.conf().version").await?)?;
    assert!(initial < added, "version {initial} -> {added}");
    let conf = shell_ok(first.port, "rs.conf().members[1]").await?;
    assert!(conf.contains("_id: 1"), "{conf}");

    let output = shell_eval_on_port(first.port, "rs.remove('127.0.0.1:1')").await?;
    assert!(!output.status.success(), "removing a non-member exited 0");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("couldn't find 127.0.0.1:1"),
        "{output:?}"
    );
    shell_ok(first.port, &format!("rs.remove('{}')", second.host())).await?;
    let members = shell_ok(first.port, "rs.conf().members.length").await?;
    assert_eq!(members.trim(), "1");
    let hello = shell_ok(first.port, "rs.hello().isWritablePrimary").await?;
    assert_eq!(hello.trim(), "true");
    Ok(())
}
