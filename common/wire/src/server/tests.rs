//! The server against real sockets on 127.0.0.1: reply opcodes and ids, moreToCome, protocol
//! errors answered or closing only their own connection, and the connection limit.

use std::{sync::Mutex, time::Duration};

use bson::{Bson, doc};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    task::JoinHandle,
};

use super::*;
use crate::{
    FLAG_MORE_TO_COME, HEADER_BYTES, MsgHeader, OP_REPLY,
    client::round_trip,
    encode::{encode_op_msg, encode_op_msg_with_sequence, encode_op_query},
    parse::parse_reply,
};

const REPLY_WAIT: Duration = Duration::from_secs(10);

/// Echoes `{ok: 1, cmd: <name>, db, legacy, command}`, and answers `big` with an oversize reply.
#[derive(Default)]
struct EchoHandler {
    seen: Mutex<Vec<String>>,
}

impl CommandHandler for EchoHandler {
    async fn handle(&self, ctx: RequestContext, db: String, command: Document) -> Document {
        let name = command.keys().next().cloned().unwrap_or_default();
        self.seen.lock().unwrap().push(name.clone());
        if name == "big" {
            let half = bson::Binary {
                subtype: bson::spec::BinarySubtype::Generic,
                bytes: vec![0u8; BSON_OBJECT_INTERNAL_BYTES_MAX / 2],
            };
            return doc! {"ok": 1, "a": half.clone(), "b": half};
        }
        doc! {"ok": 1, "cmd": name, "db": db, "legacy": ctx.legacy_op_query, "command": command}
    }
}

struct TestServer {
    addr: SocketAddr,
    handler: Arc<EchoHandler>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start(connections_max: usize) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handler = Arc::new(EchoHandler::default());
    let task = tokio::spawn(serve_with_limit(
        listener,
        Arc::clone(&handler),
        connections_max,
    ));
    TestServer {
        addr,
        handler,
        task,
    }
}

async fn connect(server: &TestServer) -> TcpStream {
    TcpStream::connect(server.addr).await.unwrap()
}

async fn read_reply(stream: &mut TcpStream) -> RawMessage {
    tokio::time::timeout(REPLY_WAIT, read_message(stream))
        .await
        .unwrap()
        .unwrap()
        .unwrap()
}

/// True when the server closed the connection (EOF, or a reset) within the wait.
async fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(REPLY_WAIT, stream.read(&mut byte)).await,
        Ok(Ok(0) | Err(_))
    )
}

async fn send(stream: &mut TcpStream, bytes: &[u8]) {
    stream.write_all(bytes).await.unwrap();
}

fn code_of(reply: &Document) -> i32 {
    reply.get_i32("code").unwrap()
}

#[tokio::test]
async fn op_query_is_master_gets_an_op_reply() {
    let server = start(CONNECTIONS_MAX).await;
    let mut stream = connect(&server).await;
    send(
        &mut stream,
        &encode_op_query(11, "admin.$cmd", &doc! {"isMaster": 1}).unwrap(),
    )
    .await;
    let reply = read_reply(&mut stream).await;
    assert_eq!(reply.header.op_code, OP_REPLY);
    assert_eq!(reply.header.response_to, 11);
    let body = parse_reply(&reply).unwrap();
    assert_eq!(body.get_str("cmd").unwrap(), "isMaster");
    assert_eq!(body.get_str("db").unwrap(), "admin");
    assert!(body.get_bool("legacy").unwrap());
    // The connection switches to OP_MSG afterwards, as drivers do.
    let reply = round_trip(&mut stream, 12, "admin", doc! {"hello": 1})
        .await
        .unwrap();
    assert!(!reply.get_bool("legacy").unwrap());
}

#[tokio::test]
async fn op_query_rules() {
    let server = start(CONNECTIONS_MAX).await;
    let mut stream = connect(&server).await;
    send(
        &mut stream,
        &encode_op_query(1, "app.people", &doc! {"find": "people"}).unwrap(),
    )
    .await;
    let reply = parse_reply(&read_reply(&mut stream).await).unwrap();
    assert_eq!(code_of(&reply), 5739101);

    let mut bytes = encode_op_query(2, "admin.$cmd", &doc! {"isMaster": 1}).unwrap();
    let ntr_at = HEADER_BYTES + 4 + "admin.$cmd".len() + 1 + 4;
    bytes[ntr_at..ntr_at + 4].copy_from_slice(&5i32.to_le_bytes());
    send(&mut stream, &bytes).await;
    let reply = read_reply(&mut stream).await;
    assert_eq!(reply.header.response_to, 2);
    assert_eq!(code_of(&parse_reply(&reply).unwrap()), 16979);
    assert_eq!(server.handler.seen.lock().unwrap().len(), 0);
}

#[tokio::test]
async fn op_msg_gets_an_op_msg_answering_its_request() {
    let server = start(CONNECTIONS_MAX).await;
    let mut stream = connect(&server).await;
    send(
        &mut stream,
        &encode_op_msg(21, 0, 0, &doc! {"ping": 1, "$db": "test"}).unwrap(),
    )
    .await;
    let reply = read_reply(&mut stream).await;
    assert_eq!(reply.header.op_code, OP_MSG);
    assert_eq!(reply.header.response_to, 21);
    assert_eq!(
        &reply.body[..5],
        &[0, 0, 0, 0, 0],
        "flags 0, then a kind-0 section"
    );
    let body = parse_reply(&reply).unwrap();
    assert_eq!(body.get_str("cmd").unwrap(), "ping");
    assert_eq!(body.get_str("db").unwrap(), "test");
    assert_eq!(
        body.get_document("command").unwrap(),
        &doc! {"ping": 1, "$db": "test"}
    );
}

#[tokio::test]
async fn sequences_and_checksums_reach_the_handler_merged() {
    let server = start(CONNECTIONS_MAX).await;
    let mut stream = connect(&server).await;
    let body = doc! {"insert": "c", "$db": "app"};
    let docs = [doc! {"_id": 1}, doc! {"_id": 2}];
    send(
        &mut stream,
        &encode_op_msg_with_sequence(5, 0, &body, "documents", &docs, true).unwrap(),
    )
    .await;
    let reply = parse_reply(&read_reply(&mut stream).await).unwrap();
    let command = reply.get_document("command").unwrap();
    assert_eq!(command.get_array("documents").unwrap().len(), 2);
}

#[tokio::test]
async fn garbage_closes_only_its_own_connection() {
    let server = start(CONNECTIONS_MAX).await;
    let short = MsgHeader {
        message_length: 5,
        request_id: 1,
        response_to: 0,
        op_code: OP_MSG,
    };
    let unknown = {
        let mut bytes = MsgHeader {
            message_length: 20,
            request_id: 1,
            response_to: 0,
            op_code: 2012,
        }
        .to_bytes()
        .to_vec();
        bytes.extend_from_slice(&[0; 4]);
        bytes
    };
    let bad_checksum = {
        let body = doc! {"ping": 1, "$db": "x"};
        let mut bytes = encode_op_msg_with_sequence(1, 0, &body, "d", &[], true).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        bytes
    };
    for garbage in [
        short.to_bytes().to_vec(),
        unknown,
        bad_checksum,
        vec![0xFF; 64],
    ] {
        let mut bad = connect(&server).await;
        let mut good = connect(&server).await;
        send(&mut bad, &garbage).await;
        assert!(closed_by_server(&mut bad).await, "{garbage:?}");
        let reply = round_trip(&mut good, 2, "admin", doc! {"ping": 1})
            .await
            .unwrap();
        assert_eq!(reply.get_str("cmd").unwrap(), "ping");
    }
}

#[tokio::test]
async fn more_to_come_gets_no_reply() {
    let server = start(CONNECTIONS_MAX).await;
    let mut stream = connect(&server).await;
    let silent = doc! {"insert": "c", "$db": "app", "documents": [{"a": 1}]};
    send(
        &mut stream,
        &encode_op_msg(31, 0, FLAG_MORE_TO_COME, &silent).unwrap(),
    )
    .await;
    // A moreToCome message that fails validation is not answered either.
    send(
        &mut stream,
        &encode_op_msg(32, 0, FLAG_MORE_TO_COME, &doc! {"insert": "c"}).unwrap(),
    )
    .await;
    send(
        &mut stream,
        &encode_op_msg(33, 0, 0, &doc! {"ping": 1, "$db": "app"}).unwrap(),
    )
    .await;
    let reply = read_reply(&mut stream).await;
    assert_eq!(reply.header.response_to, 33);
    assert_eq!(*server.handler.seen.lock().unwrap(), vec!["insert", "ping"]);
}

#[tokio::test]
async fn invalid_bson_gets_an_error_and_the_connection_continues() {
    let server = start(CONNECTIONS_MAX).await;
    let mut stream = connect(&server).await;
    let mut bytes = encode_op_msg(41, 0, 0, &doc! {"ping": 1, "$db": "app"}).unwrap();
    bytes[HEADER_BYTES + 4 + 1 + 4] = 0x42; // type byte of `ping`
    send(&mut stream, &bytes).await;
    let reply = read_reply(&mut stream).await;
    assert_eq!(reply.header.response_to, 41);
    assert_eq!(code_of(&parse_reply(&reply).unwrap()), 22);

    let reply = round_trip(&mut stream, 42, "app", doc! {"ping": 1})
        .await
        .unwrap();
    assert_eq!(reply.get_str("cmd").unwrap(), "ping");
}

#[tokio::test]
async fn db_is_required_and_must_be_a_string() {
    let server = start(CONNECTIONS_MAX).await;
    let mut stream = connect(&server).await;
    let cases = [
        (doc! {"ping": 1}, 2),
        (doc! {"ping": 1, "$db": 7}, 14),
        (doc! {"ping": 1, "$db": ""}, 73),
        (doc! {}, 2),
    ];
    for (request_id, (command, code)) in (50..).zip(cases) {
        send(
            &mut stream,
            &encode_op_msg(request_id, 0, 0, &command).unwrap(),
        )
        .await;
        let reply = read_reply(&mut stream).await;
        assert_eq!(reply.header.response_to, request_id);
        let body = parse_reply(&reply).unwrap();
        assert_eq!(code_of(&body), code, "{command}");
        assert_eq!(body.get("ok"), Some(&Bson::Double(0.0)));
    }
    assert_eq!(server.handler.seen.lock().unwrap().len(), 0);
}

#[tokio::test]
async fn oversize_replies_become_errors() {
    let server = start(CONNECTIONS_MAX).await;
    let mut stream = connect(&server).await;
    let reply = round_trip(&mut stream, 60, "app", doc! {"big": 1})
        .await
        .unwrap();
    assert_eq!(code_of(&reply), 10334);
    send(
        &mut stream,
        &encode_op_query(61, "admin.$cmd", &doc! {"big": 1}).unwrap(),
    )
    .await;
    let reply = read_reply(&mut stream).await;
    assert_eq!(reply.header.op_code, OP_REPLY);
    assert_eq!(code_of(&parse_reply(&reply).unwrap()), 10334);
}

#[tokio::test]
async fn connections_over_the_limit_are_closed() {
    let server = start(1).await;
    let mut first = connect(&server).await;
    round_trip(&mut first, 1, "admin", doc! {"ping": 1})
        .await
        .unwrap();
    let mut second = connect(&server).await;
    assert!(closed_by_server(&mut second).await);
    drop(first);
    // The permit comes back once the first connection's task ends.
    let mut third = None;
    for _ in 0..100 {
        let mut stream = connect(&server).await;
        if round_trip(&mut stream, 2, "admin", doc! {"ping": 1})
            .await
            .is_ok()
        {
            third = Some(stream);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(third.is_some());
}

#[tokio::test]
async fn aborting_serve_ends_its_connections() {
    let server = start(CONNECTIONS_MAX).await;
    let mut stream = connect(&server).await;
    round_trip(&mut stream, 1, "admin", doc! {"ping": 1})
        .await
        .unwrap();
    server.task.abort();
    assert!(closed_by_server(&mut stream).await);
}
