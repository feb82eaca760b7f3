//! `shoal up` as a user runs it: a cluster from one command, a third hand-started shard added
//! with `shoal shell --eval 'sh.addShard(...)'`, shell scripts that succeed and fail with the right
//! exit status, a clean stop on SIGTERM (no process or port left behind), and a second run over
//! the same directory that finds the data again.

use bson::{Document, doc};
use mongodb::Client;
use shoal_tests::{
    Process, make_certs,
    mongo::{client_for, wait_ping},
    ports::{free_port, free_port_block},
    sharding::list_shards,
    up::{ShoalUp, shell_eval},
};

const SHARDS: usize = 2;
/// Ports `shoal up` uses: router, config, two shards, and one spare checked free as well.
const PORT_BLOCK: u16 = 5;
const DOCS: i32 = 100;

#[tokio::test(flavor = "multi_thread")]
async fn nodes_stop_when_shoal_up_is_killed() -> anyhow::Result<()> {
    let cluster_dir = tempfile::Builder::new()
        .prefix("shoal-up-kill-")
        .tempdir()?;
    let base = free_port_block(PORT_BLOCK)?;
    let ports: Vec<u16> = (base..base + 2 + SHARDS as u16).collect();
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
    let ports: Vec<u16> = (base..base + 2 + SHARDS as u16).collect();
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
    let mut shard9 = start_shard9(cluster_dir.path(), extra_dir.path()).await?;
    let result = first_run(&up, &shard9.1).await;
    if result.is_err() {
        up.dump_log();
        shard9.0.dump_log(shoal_tests::LOG_TAIL_LINES);
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
        shard9.0.dump_log(shoal_tests::LOG_TAIL_LINES);
    }
    result?;
    again.terminate(&ports).await?;
    shard9.0.kill();
    Ok(())
}

/// Starts `shoal-shard --replset shard9` by hand with a certificate from the cluster's CA.
async fn start_shard9(
    cluster_dir: &std::path::Path,
    extra_dir: &std::path::Path,
) -> anyhow::Result<(Process, String)> {
    let ca_dir = cluster_dir.join("tls").join("ca");
    anyhow::ensure!(
        ca_dir.join("ca-key.pem").is_file(),
        "shoal up made no CA in {}",
        ca_dir.display()
    );
    let tls_dir = extra_dir.join("tls");
    make_certs(&ca_dir, &tls_dir, "shard9")?;
    let port = free_port()?;
    let args = vec![
        "--replset".to_owned(),
        "shard9".to_owned(),
        "--bind".to_owned(),
        format!("127.0.0.1:{port}"),
        "--dir".to_owned(),
        extra_dir.join("data").display().to_string(),
        "--tls-dir".to_owned(),
        tls_dir.display().to_string(),
    ];
    let mut process = Process::new(
        "shard9",
        shoal_tests::bin_path("shoal-shard")?,
        args,
        extra_dir.join("shard9.log"),
    );
    process.start(&[])?;
    wait_ping(port, shoal_tests::READY_TIMEOUT).await?;
    Ok((process, format!("shard9/127.0.0.1:{port}")))
}

async fn first_run(up: &ShoalUp, shard9: &str) -> anyhow::Result<()> {
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

    let output = shell_eval(&up.uri, &format!("sh.addShard(\"{shard9}\")")).await?;
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
