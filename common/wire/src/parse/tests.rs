//! Round trips through the encoders and every malformed-input case the parser must reject
//! without panicking, each with the error (and so the close-or-reply policy) it must produce.

use bson::{Bson, Document, doc};

use super::*;
use crate::{
    BSON_OBJECT_INTERNAL_BYTES_MAX, FLAG_EXHAUST_ALLOWED, HEADER_BYTES, MsgHeader, OP_COMPRESSED,
    encode::{encode_op_msg, encode_op_msg_with_sequence, encode_op_query, encode_op_reply},
};

fn raw(bytes: &[u8]) -> RawMessage {
    let header = MsgHeader::from_bytes(bytes[..HEADER_BYTES].try_into().unwrap());
    assert_eq!(header.message_length as usize, bytes.len());
    RawMessage {
        header,
        body: bytes[HEADER_BYTES..].to_vec(),
    }
}

fn message(op_code: i32, body: &[u8]) -> Vec<u8> {
    let length = (HEADER_BYTES + body.len()) as i32;
    let header = MsgHeader {
        message_length: length,
        request_id: 5,
        response_to: 0,
        op_code,
    };
    let mut bytes = header.to_bytes().to_vec();
    bytes.extend_from_slice(body);
    bytes
}

fn op_msg(flags: u32, sections: &[Vec<u8>]) -> RawMessage {
    let mut body = flags.to_le_bytes().to_vec();
    for section in sections {
        body.extend_from_slice(section);
    }
    raw(&message(OP_MSG, &body))
}

fn kind0(doc: &Document) -> Vec<u8> {
    let mut bytes = vec![0u8];
    bytes.extend(bson::to_vec(doc).unwrap());
    bytes
}

fn kind0_raw(doc_bytes: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0u8];
    bytes.extend_from_slice(doc_bytes);
    bytes
}

fn kind1(identifier: &str, docs: &[Document]) -> Vec<u8> {
    let mut payload = identifier.as_bytes().to_vec();
    payload.push(0);
    for doc in docs {
        payload.extend(bson::to_vec(doc).unwrap());
    }
    let mut bytes = vec![1u8];
    bytes.extend(((payload.len() + 4) as i32).to_le_bytes());
    bytes.extend(payload);
    bytes
}

fn parse_msg(msg: &RawMessage) -> OpMsg {
    match parse_request(msg).unwrap() {
        Request::Msg(op_msg) => op_msg,
        other => panic!("expected OP_MSG, got {other:?}"),
    }
}

fn parse_query(msg: &RawMessage) -> OpQuery {
    match parse_request(msg).unwrap() {
        Request::Query(op_query) => op_query,
        other => panic!("expected OP_QUERY, got {other:?}"),
    }
}

/// `{a: 1}` with its length prefix enlarged by `extra` bytes placed after the terminator.
fn document_with_trailing_bytes(extra: &[u8]) -> Vec<u8> {
    let mut bytes = bson::to_vec(&doc! {"a": 1}).unwrap();
    bytes.extend_from_slice(extra);
    let length = bytes.len() as i32;
    bytes[..4].copy_from_slice(&length.to_le_bytes());
    bytes
}

#[test]
fn op_msg_with_sequence_and_checksum_round_trips() {
    let body = doc! {"insert": "people", "$db": "app", "ordered": true};
    let docs = [doc! {"_id": 1}, doc! {"_id": 2, "name": "x"}];
    let bytes = encode_op_msg_with_sequence(42, 0, &body, "documents", &docs, true).unwrap();
    let msg = raw(&bytes);
    assert_eq!(msg.header.request_id, 42);
    assert_eq!(msg.header.op_code, OP_MSG);
    let op_msg = parse_msg(&msg);
    assert_eq!(op_msg.flags, FLAG_CHECKSUM_PRESENT);
    assert!(!op_msg.more_to_come);
    let expected = doc! {
        "insert": "people", "$db": "app", "ordered": true,
        "documents": [{"_id": 1}, {"_id": 2, "name": "x"}],
    };
    assert_eq!(op_msg.body, expected);
}

#[test]
fn op_msg_sequences_merge_in_any_order_and_may_be_empty() {
    let msg = op_msg(
        0,
        &[
            kind1("updates", &[doc! {"q": {}, "u": {"$set": {"a": 1}}}]),
            kind0(&doc! {"update": "c"}),
            kind1("extra", &[]),
        ],
    );
    let op_msg = parse_msg(&msg);
    let expected =
        doc! {"update": "c", "updates": [{"q": {}, "u": {"$set": {"a": 1}}}], "extra": []};
    assert_eq!(op_msg.body, expected);
}

#[test]
fn op_msg_plain_round_trips_with_flags() {
    let body = doc! {"ping": 1, "$db": "admin"};
    let bytes = encode_op_msg(
        3,
        9,
        FLAG_MORE_TO_COME | FLAG_EXHAUST_ALLOWED | (1 << 31),
        &body,
    )
    .unwrap();
    let msg = raw(&bytes);
    assert_eq!(msg.header.response_to, 9);
    let op_msg = parse_msg(&msg);
    assert!(op_msg.more_to_come);
    assert_eq!(op_msg.body, body);
    assert_eq!(parse_reply(&msg).unwrap(), body);
}

#[test]
fn op_msg_checksum_flag_in_encode_op_msg_appends_a_valid_checksum() {
    let body = doc! {"ping": 1, "$db": "admin"};
    let bytes = encode_op_msg(3, 0, FLAG_CHECKSUM_PRESENT, &body).unwrap();
    assert_eq!(parse_msg(&raw(&bytes)).body, body);
}

#[test]
fn op_query_plain_and_wrapped() {
    let plain = encode_op_query(1, "admin.$cmd", &doc! {"isMaster": 1, "helloOk": true}).unwrap();
    let op_query = parse_query(&raw(&plain));
    assert_eq!(op_query.full_collection_name, "admin.$cmd");
    assert_eq!(op_query.number_to_return, -1);
    assert_eq!(op_query.query, doc! {"isMaster": 1, "helloOk": true});

    let wrapped =
        doc! {"$query": {"isMaster": 1}, "$readPreference": {"mode": "secondaryPreferred"}};
    let bytes = encode_op_query(2, "admin.$cmd", &wrapped).unwrap();
    let op_query = parse_query(&raw(&bytes));
    let expected = doc! {"isMaster": 1, "$readPreference": {"mode": "secondaryPreferred"}};
    assert_eq!(op_query.query, expected);
}

#[test]
fn op_query_with_a_field_selector() {
    let mut body =
        encode_op_query(1, "db.$cmd", &doc! {"hello": 1}).unwrap()[HEADER_BYTES..].to_vec();
    body.extend(bson::to_vec(&doc! {"x": 1}).unwrap());
    let op_query = parse_query(&raw(&message(OP_QUERY, &body)));
    assert_eq!(op_query.query, doc! {"hello": 1});

    body.push(7);
    let err = parse_request(&raw(&message(OP_QUERY, &body))).unwrap_err();
    assert!(matches!(err, WireError::MalformedSection(_)), "{err}");
}

#[test]
fn op_query_malformed_fields() {
    // Namespace without its NUL terminator.
    let err = parse_request(&raw(&message(OP_QUERY, b"\0\0\0\0admin.$cmd"))).unwrap_err();
    assert!(matches!(err, WireError::MalformedSection(_)), "{err}");
    // A valid frame whose query document has an unknown element type.
    let mut body =
        encode_op_query(1, "a.$cmd", &doc! {"hello": 1}).unwrap()[HEADER_BYTES..].to_vec();
    let type_at = body.len() - 12; // type byte of the int32 element `hello`
    assert_eq!(body[type_at], 0x10);
    body[type_at] = 0x42;
    let err = parse_request(&raw(&message(OP_QUERY, &body))).unwrap_err();
    assert!(matches!(err, WireError::InvalidBson(_)), "{err}");
}

#[test]
fn op_reply_round_trips() {
    let reply = doc! {"ok": 1.0, "ismaster": true};
    let bytes = encode_op_reply(8, 77, &reply).unwrap();
    let msg = raw(&bytes);
    assert_eq!(msg.header.op_code, OP_REPLY);
    assert_eq!(msg.header.response_to, 77);
    assert_eq!(bytes.len(), 36 + bson::to_vec(&reply).unwrap().len());
    assert_eq!(parse_reply(&msg).unwrap(), reply);
}

#[test]
fn other_opcodes_are_unsupported() {
    for op_code in [OP_COMPRESSED, OP_REPLY, 2001, 9999, -1] {
        let msg = raw(&message(op_code, &[0; 30]));
        let err = parse_request(&msg).unwrap_err();
        assert!(
            matches!(err, WireError::UnsupportedOpcode(code) if code == op_code),
            "{err}"
        );
        assert!(err.closes_connection());
    }
}

#[test]
fn bad_checksum_is_rejected() {
    let body = doc! {"insert": "c", "$db": "d"};
    let bytes =
        encode_op_msg_with_sequence(1, 0, &body, "documents", &[doc! {"a": 1}], true).unwrap();
    let mut flipped_content = bytes.clone();
    flipped_content[HEADER_BYTES + 12] ^= 1;
    let mut flipped_checksum = bytes.clone();
    let last = flipped_checksum.len() - 1;
    flipped_checksum[last] ^= 0x80;
    let mut flipped_header = bytes;
    flipped_header[4] ^= 1; // requestID is covered too
    for bytes in [flipped_content, flipped_checksum, flipped_header] {
        let err = parse_request(&raw(&bytes)).unwrap_err();
        assert!(matches!(err, WireError::BadChecksum { .. }), "{err}");
    }
}

#[test]
fn kind1_size_overflow_and_underflow_are_malformed() {
    let mut overflow = kind1("documents", &[doc! {"a": 1}]);
    overflow[1..5].copy_from_slice(&1000i32.to_le_bytes());
    let mut underflow = kind1("documents", &[doc! {"a": 1}]);
    underflow[1..5].copy_from_slice(&3i32.to_le_bytes());
    let mut negative = kind1("documents", &[]);
    negative[1..5].copy_from_slice(&i32::MIN.to_le_bytes());
    let mut unterminated_identifier = vec![1u8];
    unterminated_identifier.extend(7i32.to_le_bytes());
    unterminated_identifier.extend(b"abc");
    let mut empty_identifier = vec![1u8];
    empty_identifier.extend(5i32.to_le_bytes());
    empty_identifier.push(0);
    for section in [
        overflow,
        underflow,
        negative,
        unterminated_identifier,
        empty_identifier,
    ] {
        let msg = op_msg(0, &[kind0(&doc! {"insert": "c"}), section]);
        let err = parse_request(&msg).unwrap_err();
        assert!(matches!(err, WireError::MalformedSection(_)), "{err}");
    }
}

#[test]
fn a_document_overrunning_its_kind1_section_is_malformed() {
    let mut section = kind1("documents", &[doc! {"a": 1}]);
    let size = i32::from_le_bytes(section[1..5].try_into().unwrap());
    section[1..5].copy_from_slice(&(size - 2).to_le_bytes());
    let msg = op_msg(0, &[kind1("x", &[]), kind0(&doc! {"insert": "c"}), section]);
    let err = parse_request(&msg).unwrap_err();
    assert!(matches!(err, WireError::MalformedSection(_)), "{err}");
}

#[test]
fn section_structure_errors_are_malformed() {
    let body = kind0(&doc! {"ping": 1});
    let cases = [
        vec![body.clone(), body.clone()],
        vec![kind1("documents", &[])],
        vec![],
        vec![body.clone(), vec![2u8, 0, 0, 0, 0]],
        vec![
            body.clone(),
            kind1("documents", &[]),
            kind1("documents", &[]),
        ],
        vec![body.clone(), vec![0u8, 4, 0, 0, 0]],
        vec![kind0_raw(&[200, 0, 0, 0, 0])],
        vec![body[..body.len() - 1].to_vec()],
    ];
    for sections in cases {
        let err = parse_request(&op_msg(0, &sections)).unwrap_err();
        assert!(
            matches!(err, WireError::MalformedSection(_)),
            "{sections:?}: {err}"
        );
        assert!(err.closes_connection());
    }
}

#[test]
fn sequence_named_like_a_body_field_is_a_duplicate() {
    let msg = op_msg(
        0,
        &[
            kind0(&doc! {"insert": "c", "documents": []}),
            kind1("documents", &[]),
        ],
    );
    let err = parse_request(&msg).unwrap_err();
    assert!(
        matches!(err, WireError::DuplicateField(ref name) if name == "documents"),
        "{err}"
    );
    assert!(!err.closes_connection());
}

#[test]
fn unknown_required_flags_are_rejected_but_optional_ones_ignored() {
    let body = kind0(&doc! {"ping": 1});
    let err = parse_request(&op_msg(1 << 2, std::slice::from_ref(&body))).unwrap_err();
    assert!(matches!(err, WireError::UnknownRequiredFlags(4)), "{err}");
    let op_msg = parse_msg(&op_msg(FLAG_EXHAUST_ALLOWED | (1 << 20), &[body]));
    assert_eq!(op_msg.body, doc! {"ping": 1});
}

#[test]
fn invalid_bson_inside_a_valid_frame() {
    let good = bson::to_vec(&doc! {"ping": 1, "s": "text"}).unwrap();
    let mut bad_type = good.clone();
    bad_type[4] = 0x42;
    let mut no_terminator = good.clone();
    let last = no_terminator.len() - 1;
    no_terminator[last] = 7;
    let mut bad_utf8 = good.clone();
    let text_at = good.windows(4).position(|w| w == b"text").unwrap();
    bad_utf8[text_at] = 0xFF;
    let mut bad_string_length = good.clone();
    bad_string_length[text_at - 4] = 100;
    let trailing = document_with_trailing_bytes(&[1, 2, 0]);
    let trailing_terminators = document_with_trailing_bytes(&[0]);
    let nested_bad = {
        let mut bytes = bson::to_vec(&doc! {"find": "c", "filter": {"a": 1}}).unwrap();
        let inner_len_at = bytes.windows(7).position(|w| w == b"filter\0").unwrap() + 7;
        bytes[inner_len_at] = 9;
        bytes
    };
    for doc_bytes in [
        bad_type,
        no_terminator,
        bad_utf8,
        bad_string_length,
        trailing,
        trailing_terminators,
        nested_bad,
    ] {
        let err = parse_request(&op_msg(0, &[kind0_raw(&doc_bytes)])).unwrap_err();
        assert!(
            matches!(err, WireError::InvalidBson(_)),
            "{doc_bytes:?}: {err}"
        );
        assert!(!err.closes_connection());
        assert_eq!(shoal_common::CommandError::from(err).code.0, 22);
    }
}

#[test]
fn invalid_bson_inside_a_sequence() {
    let mut section = kind1("documents", &[doc! {"a": 1}]);
    let type_at = section.len() - 1 - 4 - 2 - 1; // int32 element "a": type, "a\0", value
    assert_eq!(section[type_at], 0x10);
    section[type_at] = 0x00;
    let err = parse_request(&op_msg(0, &[kind0(&doc! {"insert": "c"}), section])).unwrap_err();
    assert!(matches!(err, WireError::InvalidBson(_)), "{err}");
}

#[test]
fn documents_over_the_internal_limit_are_too_large() {
    let half = Bson::Binary(bson::Binary {
        subtype: bson::spec::BinarySubtype::Generic,
        bytes: vec![0u8; BSON_OBJECT_INTERNAL_BYTES_MAX / 2],
    });
    let big = doc! {"insert": "c", "a": half.clone(), "b": half};
    let err = parse_request(&op_msg(0, &[kind0(&big)])).unwrap_err();
    assert!(matches!(err, WireError::DocumentTooLarge { .. }), "{err}");
    assert_eq!(shoal_common::CommandError::from(err).code.0, 10334);
}

#[test]
fn bodies_too_short_for_their_fields_do_not_panic() {
    for body in [
        vec![],
        vec![1u8],
        vec![1, 0, 0, 0],
        vec![1, 0, 0, 0, 0, 0, 0],
        vec![0, 0, 0],
    ] {
        let msg = RawMessage {
            header: MsgHeader {
                message_length: 0,
                request_id: 1,
                response_to: 0,
                op_code: OP_MSG,
            },
            body: body.clone(),
        };
        let err = parse_request(&msg).unwrap_err();
        assert!(
            matches!(err, WireError::MalformedSection(_)),
            "{body:?}: {err}"
        );
        let query = RawMessage {
            header: MsgHeader {
                op_code: OP_QUERY,
                ..msg.header
            },
            body,
        };
        assert!(parse_request(&query).is_err());
        let reply = RawMessage {
            header: MsgHeader {
                op_code: OP_REPLY,
                ..msg.header
            },
            ..query
        };
        assert!(parse_reply(&reply).is_err());
    }
}

#[test]
fn mutated_messages_never_panic() {
    let body = doc! {"insert": "c", "$db": "d", "n": {"x": [1, "two", 3.0]}};
    let docs = [doc! {"_id": 1}, doc! {"_id": "two"}];
    let samples = [
        encode_op_msg_with_sequence(1, 0, &body, "documents", &docs, true).unwrap(),
        encode_op_msg_with_sequence(1, 0, &body, "documents", &docs, false).unwrap(),
        encode_op_query(1, "admin.$cmd", &body).unwrap(),
        encode_op_reply(1, 1, &body).unwrap(),
    ];
    let mut seed: u64 = 0x5eed;
    for sample in samples {
        for truncated_len in HEADER_BYTES..sample.len() {
            let msg = RawMessage {
                header: MsgHeader::from_bytes(sample[..HEADER_BYTES].try_into().unwrap()),
                body: sample[HEADER_BYTES..truncated_len].to_vec(),
            };
            let _ = parse_request(&msg);
            let _ = parse_reply(&msg);
        }
        for _ in 0..2000 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let mut mutated = sample.clone();
            let at = HEADER_BYTES + (seed >> 33) as usize % (sample.len() - HEADER_BYTES);
            mutated[at] = (seed >> 13) as u8;
            let _ = parse_request(&raw(&mutated));
            let _ = parse_reply(&raw(&mutated));
        }
    }
}

#[test]
fn raw_more_to_come_reads_only_the_flags() {
    assert!(raw_more_to_come(&[2, 0, 0, 0, 0xFF]));
    assert!(!raw_more_to_come(&[1, 0, 0, 0]));
    assert!(!raw_more_to_come(&[2, 0]));
}
