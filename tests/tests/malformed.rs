//! Bad input never takes a node down: each kind of malformed wire-protocol frame, written by hand
//! on a raw TCP socket to the router and to a shard, must get an error reply (`ok: 0` with a
//! code) or a closed connection, never a success and never a hang; afterwards both nodes still
//! serve a well-behaved driver.

use std::time::Duration;

use bson::{Document, doc};
use shoal_tests::{
    Node, TestCluster,
    mongo::{get_i64, is_ok},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const OP_REPLY: i32 = 1;
const OP_MSG: i32 = 2013;
/// How long the server has to answer or close after a bad frame.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest reply this test reads (a real error reply is a few hundred bytes).
const REPLY_BYTES_MAX: usize = 1024 * 1024;
/// The codes a well-formed command with a wrong-typed field may get.
const CODES_WRONG_TYPE: [i64; 2] = [14, 2];

/// What a server did with one bad frame.
#[derive(Debug)]
enum Outcome {
    /// It answered with this command reply.
    Reply(Document),
    /// It closed (or reset) the connection.
    Closed,
}

/// One malformed input: the bytes, and whether to half-close the socket after sending them.
struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    close_after_send: bool,
}

fn header(length: i32, request_id: i32, op_code: i32) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(16);
    bytes.extend_from_slice(&length.to_le_bytes());
    bytes.extend_from_slice(&request_id.to_le_bytes());
    bytes.extend_from_slice(&0_i32.to_le_bytes());
    bytes.extend_from_slice(&op_code.to_le_bytes());
    bytes
}

/// A complete message: header with the right length, then `body`.
fn message(request_id: i32, op_code: i32, body: &[u8]) -> Vec<u8> {
    let length = i32::try_from(16 + body.len()).unwrap_or(i32::MAX);
    let mut bytes = header(length, request_id, op_code);
    bytes.extend_from_slice(body);
    bytes
}

fn bson_bytes(document: &Document) -> anyhow::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    document.to_writer(&mut bytes)?;
    Ok(bytes)
}

/// An OP_MSG body: flags, one kind-0 section with `command`, then `extra` bytes.
fn op_msg_body(flags: u32, command: &Document, extra: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut body = flags.to_le_bytes().to_vec();
    body.push(0);
    body.extend(bson_bytes(command)?);
    body.extend_from_slice(extra);
    Ok(body)
}

fn cases() -> anyhow::Result<Vec<Case>> {
    let ping = doc! { "ping": 1, "$db": "admin" };
    let mut cases = vec![
        Case {
            name: "length 0",
            bytes: header(0, 1, OP_MSG),
            close_after_send: false,
        },
        Case {
            name: "length 15",
            bytes: header(15, 2, OP_MSG),
            close_after_send: false,
        },
        Case {
            name: "negative length",
            bytes: header(-5, 3, OP_MSG),
            close_after_send: false,
        },
        Case {
            // Only the header is sent: a server that waits for 50 MB instead of refusing the
            // length hangs here and fails the test.
            name: "length over 48,000,000",
            bytes: header(50_000_000, 4, OP_MSG),
            close_after_send: false,
        },
        Case {
            name: "truncated (header says 100, 30 bytes sent)",
            bytes: {
                let mut bytes = header(100, 5, OP_MSG);
                bytes.extend_from_slice(&[0_u8; 14]);
                bytes
            },
            close_after_send: true,
        },
        Case {
            name: "unknown opcode 9999",
            bytes: message(6, 9_999, &op_msg_body(0, &ping, &[])?),
            close_after_send: false,
        },
    ];
    cases.extend(bad_op_msgs(&ping)?);
    Ok(cases)
}

fn bad_op_msgs(ping: &Document) -> anyhow::Result<Vec<Case>> {
    // A document that claims 12 bytes and holds an element of type 0x99, which does not exist.
    let invalid_type = [12_u8, 0, 0, 0, 0x99, b'a', 0, 1, 2, 3, 4, 0];
    // A document that claims 64 bytes where the message holds 10.
    let overlong = [64_u8, 0, 0, 0, 0x10, b'a', 0, 1, 0, 0];
    // A string element whose length runs past the document.
    let bad_string = [
        20_u8, 0, 0, 0, 0x02, b's', 0, 0xff, 0xff, 0, 0, b'h', b'i', 0, 0, 0, 0, 0, 0, 0,
    ];
    let raw_section0 = |bytes: &[u8]| {
        let mut body = 0_u32.to_le_bytes().to_vec();
        body.push(0);
        body.extend_from_slice(bytes);
        body
    };
    let mut kind1 = vec![1_u8];
    kind1.extend_from_slice(&i32::MAX.to_le_bytes());
    kind1.extend_from_slice(b"documents\0");
    let insert = doc! { "insert": "c", "$db": "db" };
    let checksum = 0xdead_beef_u32.to_le_bytes();
    Ok(vec![
        Case {
            name: "OP_MSG section 0 with an invalid BSON type",
            bytes: message(10, OP_MSG, &raw_section0(&invalid_type)),
            close_after_send: false,
        },
        Case {
            name: "OP_MSG section 0 longer than the message",
            bytes: message(11, OP_MSG, &raw_section0(&overlong)),
            close_after_send: false,
        },
        Case {
            name: "OP_MSG section 0 with a string running past the document",
            bytes: message(12, OP_MSG, &raw_section0(&bad_string)),
            close_after_send: false,
        },
        Case {
            name: "OP_MSG kind-1 section size overflow",
            bytes: message(13, OP_MSG, &op_msg_body(0, &insert, &kind1)?),
            close_after_send: false,
        },
        Case {
            name: "OP_MSG unknown section kind 7",
            bytes: message(14, OP_MSG, &op_msg_body(0, ping, &[7, 1, 2, 3])?),
            close_after_send: false,
        },
        Case {
            name: "OP_MSG checksum flag with a wrong checksum",
            bytes: message(15, OP_MSG, &op_msg_body(1, ping, &checksum)?),
            close_after_send: false,
        },
        Case {
            name: "OP_MSG unknown required flag bit 3",
            bytes: message(16, OP_MSG, &op_msg_body(1 << 3, ping, &[])?),
            close_after_send: false,
        },
        Case {
            name: "OP_MSG with no section",
            bytes: message(17, OP_MSG, &0_u32.to_le_bytes()),
            close_after_send: false,
        },
    ])
}

/// Reads one reply or the connection's end, bounded by [`ANSWER_TIMEOUT`].
async fn read_outcome(stream: &mut TcpStream) -> anyhow::Result<Outcome> {
    let mut head = [0_u8; 16];
    match tokio::time::timeout(ANSWER_TIMEOUT, stream.read_exact(&mut head)).await {
        Err(_) => anyhow::bail!("no reply and no close within {ANSWER_TIMEOUT:?}"),
        Ok(Err(_)) => return Ok(Outcome::Closed),
        Ok(Ok(_)) => {}
    }
    let length = usize::try_from(i32::from_le_bytes([head[0], head[1], head[2], head[3]]))?;
    anyhow::ensure!(
        (16..=REPLY_BYTES_MAX).contains(&length),
        "reply length {length}"
    );
    let op_code = i32::from_le_bytes([head[12], head[13], head[14], head[15]]);
    let mut body = vec![0_u8; length - 16];
    tokio::time::timeout(ANSWER_TIMEOUT, stream.read_exact(&mut body)).await??;
    let document_at = match op_code {
        // flags (4), section kind (1)
        OP_MSG => 5,
        // responseFlags (4), cursorID (8), startingFrom (4), numberReturned (4)
        OP_REPLY => 20,
        other => anyhow::bail!("reply with opcode {other}"),
    };
    let doc_bytes = body
        .get(document_at..)
        .ok_or_else(|| anyhow::anyhow!("short reply"))?;
    Ok(Outcome::Reply(Document::from_reader(doc_bytes)?))
}

async fn send_case(port: u16, case: &Case) -> anyhow::Result<Outcome> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    // A server that closes mid-write is one of the accepted outcomes.
    if stream.write_all(&case.bytes).await.is_err() {
        return Ok(Outcome::Closed);
    }
    if case.close_after_send {
        let _ = stream.shutdown().await;
    }
    read_outcome(&mut stream).await
}

/// Every case against one node: an error reply with a code, or a closed connection.
async fn check_node(port: u16, label: &str) -> anyhow::Result<()> {
    for case in cases()? {
        let outcome = send_case(port, &case)
            .await
            .map_err(|err| anyhow::anyhow!("{label}, {}: {err}", case.name))?;
        println!("{label}, {}: {outcome:?}", case.name);
        if let Outcome::Reply(reply) = outcome {
            assert!(
                !is_ok(&reply),
                "{label}, {}: a malformed frame succeeded: {reply}",
                case.name
            );
            assert!(
                get_i64(&reply, "code").is_some(),
                "{label}, {}: no code in {reply}",
                case.name
            );
        }
    }
    // Well-formed frame, wrong-typed field: this must be an error reply, not a close.
    let command = doc! { "insert": "c", "documents": 5, "$db": "db" };
    let case = Case {
        name: "insert with documents: 5",
        bytes: message(20, OP_MSG, &op_msg_body(0, &command, &[])?),
        close_after_send: false,
    };
    match send_case(port, &case).await? {
        Outcome::Reply(reply) => {
            assert!(!is_ok(&reply), "{label}: {reply}");
            let code = get_i64(&reply, "code");
            assert!(
                code.is_some_and(|c| CODES_WRONG_TYPE.contains(&c)),
                "{label}: {reply}"
            );
        }
        Outcome::Closed => {
            anyhow::bail!("{label}: a well-formed wrong-typed command closed the connection")
        }
    }
    Ok(())
}

/// A valid OP_MSG ping on a raw socket, to show the framing code accepts good input.
async fn raw_ping(port: u16) -> anyhow::Result<()> {
    let case = Case {
        name: "valid ping",
        bytes: message(
            30,
            OP_MSG,
            &op_msg_body(0, &doc! { "ping": 1, "$db": "admin" }, &[])?,
        ),
        close_after_send: false,
    };
    match send_case(port, &case).await? {
        Outcome::Reply(reply) => anyhow::ensure!(is_ok(&reply), "raw ping answered {reply}"),
        Outcome::Closed => anyhow::bail!("raw ping: connection closed"),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_frames_do_not_take_nodes_down() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start(2).await?;
    let router_port = cluster.port(Node::Router);
    let shard_port = cluster.port(Node::Shard(0));
    raw_ping(router_port).await?;
    raw_ping(shard_port).await?;

    // A client that sends two bytes of a header and then stalls must not block anyone else.
    let mut stalled = TcpStream::connect(("127.0.0.1", router_port)).await?;
    stalled.write_all(&[0x20, 0x00]).await?;
    // A client already connected before the bad frames keeps working after them.
    let early = cluster.router_client().await?;
    early
        .database("db")
        .collection::<Document>("early")
        .insert_one(doc! { "x": 1 })
        .await?;

    check_node(router_port, "router").await?;
    check_node(shard_port, "shard0").await?;

    for node in [Node::Config, Node::Shard(0), Node::Shard(1), Node::Router] {
        assert!(cluster.is_running(node), "{node:?} died");
    }
    let router = cluster.router_client().await?;
    let coll = router.database("db").collection::<Document>("after");
    coll.insert_one(doc! { "k": 1, "v": "still serving" })
        .await?;
    let found = coll.find_one(doc! { "k": 1 }).await?;
    assert_eq!(
        found
            .and_then(|d| d.get_str("v").ok().map(str::to_owned))
            .as_deref(),
        Some("still serving")
    );
    assert_eq!(
        early
            .database("db")
            .collection::<Document>("early")
            .count_documents(doc! {})
            .await?,
        1
    );

    let shard = cluster.member_client(Node::Shard(0)).await?;
    let reply = shard
        .database("admin")
        .run_command(doc! { "ping": 1 })
        .await?;
    assert!(is_ok(&reply), "{reply}");
    raw_ping(router_port).await?;
    raw_ping(shard_port).await?;
    drop(stalled);

    drop((router, early, shard));
    cluster.finish();
    Ok(())
}
