//! An order-preserving byte encoding of BSON values ("key strings"): `memcmp` on two encodings
//! orders them exactly as `bsonorder::compare` orders the values, and values that compare equal
//! (Int32(1), Int64(1), Double(1.0)) encode to identical bytes. Storage keys index documents by
//! these bytes, so an index range scan and a query's sort can never disagree.
//!
//! Layout: one type byte per canonical type rank, then a payload that is self-delimiting, so
//! that encodings can be concatenated (compound keys, document fields, array elements):
//! - numbers: a class byte (NaN < -inf < negative < zero < positive < +inf), then for finite
//!   non-zero values the binary exponent (u16) and the 64 fraction bits after the leading one;
//!   negative values have those bytes inverted. Every i64 and f64 is exact in this form.
//! - strings: bytes with 0x00 escaped as 0x00 0xFF, terminated by 0x00 0x01.
//! - documents: per field, type byte + escaped name + payload; arrays: per element, type byte +
//!   payload; both end with 0x00, which is below every type byte, so a prefix sorts first.
//! - binData: length (u32) first, then subtype, then bytes, matching `bsonorder`.

use bson::{Bson, Document};
use shoal_common::bsonorder::canonical_rank;

/// Ends a document or array; below every type byte so that a prefix sorts first.
const END: u8 = 0x00;
/// Added to canonical ranks (which start at -1 for MinKey) so every type byte is at least 1.
const RANK_BIAS: i32 = 2;
/// Offset that makes every binary exponent of an f64 or i64 (-1074..=1023) non-negative.
const EXPONENT_BIAS: i32 = 1100;

const NUM_NAN: u8 = 0x01;
const NUM_NEG_INF: u8 = 0x02;
const NUM_NEG: u8 = 0x03;
const NUM_ZERO: u8 = 0x04;
const NUM_POS: u8 = 0x05;
const NUM_POS_INF: u8 = 0x06;

/// Appends an order-preserving, self-delimiting byte encoding of `value`: for any a, b,
/// memcmp(encode(a), encode(b)) has the same sign as bsonorder::compare(a, b). Values that
/// compare equal (e.g. Int32(1), Int64(1), Double(1.0)) encode to identical bytes.
pub fn encode(value: &Bson, out: &mut Vec<u8>) {
    out.push(type_byte(value));
    encode_payload(value, out);
}

/// The encoding of a value as a fresh vector.
pub fn encode_to_vec(value: &Bson) -> Vec<u8> {
    let mut out = Vec::new();
    encode(value, &mut out);
    out
}

/// Appends the encodings of a compound key's values, in order (field names are not encoded:
/// every key of one index has the same fields).
pub fn encode_key(values: &Document, out: &mut Vec<u8>) {
    for value in values.values() {
        encode(value, out);
    }
}

fn type_byte(value: &Bson) -> u8 {
    // Canonical ranks lie in -1..=100, so the biased rank always fits a byte.
    u8::try_from(canonical_rank(value) + RANK_BIAS).unwrap_or(u8::MAX)
}

fn encode_payload(value: &Bson, out: &mut Vec<u8>) {
    match value {
        Bson::Double(v) => encode_f64(*v, out),
        Bson::Int32(v) => encode_i64(i64::from(*v), out),
        Bson::Int64(v) => encode_i64(*v, out),
        Bson::Decimal128(d) => encode_f64(d.to_string().parse::<f64>().unwrap_or(f64::NAN), out),
        Bson::String(s) | Bson::Symbol(s) | Bson::JavaScriptCode(s) => encode_str(s, out),
        Bson::Document(doc) => encode_document(doc, out),
        Bson::Array(items) => {
            for item in items {
                encode(item, out);
            }
            out.push(END);
        }
        Bson::Binary(binary) => {
            let length = u32::try_from(binary.bytes.len()).unwrap_or(u32::MAX);
            out.extend_from_slice(&length.to_be_bytes());
            out.push(u8::from(binary.subtype));
            out.extend_from_slice(&binary.bytes);
        }
        Bson::ObjectId(oid) => out.extend_from_slice(&oid.bytes()),
        Bson::Boolean(b) => out.push(u8::from(*b)),
        Bson::DateTime(date) => {
            out.extend_from_slice(&flip_sign(date.timestamp_millis()).to_be_bytes())
        }
        Bson::Timestamp(ts) => {
            out.extend_from_slice(&ts.time.to_be_bytes());
            out.extend_from_slice(&ts.increment.to_be_bytes());
        }
        Bson::RegularExpression(regex) => {
            encode_str(&regex.pattern, out);
            encode_str(&regex.options, out);
        }
        Bson::JavaScriptCodeWithScope(code) => {
            encode_str(&code.code, out);
            encode_document(&code.scope, out);
        }
        // Equal within their rank in bsonorder: the type byte alone is the whole encoding.
        Bson::Null | Bson::Undefined | Bson::MinKey | Bson::MaxKey | Bson::DbPointer(_) => {}
    }
}

fn encode_document(doc: &Document, out: &mut Vec<u8>) {
    for (key, value) in doc {
        out.push(type_byte(value));
        encode_str(key, out);
        encode_payload(value, out);
    }
    out.push(END);
}

fn encode_str(text: &str, out: &mut Vec<u8>) {
    for byte in text.bytes() {
        out.push(byte);
        if byte == 0 {
            out.push(0xFF);
        }
    }
    out.push(0x00);
    out.push(0x01);
}

fn flip_sign(value: i64) -> u64 {
    (value as u64) ^ (1 << 63)
}

fn encode_i64(value: i64, out: &mut Vec<u8>) {
    match value.cmp(&0) {
        std::cmp::Ordering::Equal => out.push(NUM_ZERO),
        std::cmp::Ordering::Greater => {
            out.push(NUM_POS);
            encode_magnitude(integer_magnitude(value.unsigned_abs()), false, out);
        }
        std::cmp::Ordering::Less => {
            out.push(NUM_NEG);
            encode_magnitude(integer_magnitude(value.unsigned_abs()), true, out);
        }
    }
}

fn encode_f64(value: f64, out: &mut Vec<u8>) {
    if value.is_nan() {
        out.push(NUM_NAN);
    } else if value == f64::INFINITY {
        out.push(NUM_POS_INF);
    } else if value == f64::NEG_INFINITY {
        out.push(NUM_NEG_INF);
    } else if value == 0.0 {
        out.push(NUM_ZERO);
    } else if value > 0.0 {
        out.push(NUM_POS);
        encode_magnitude(float_magnitude(value), false, out);
    } else {
        out.push(NUM_NEG);
        encode_magnitude(float_magnitude(-value), true, out);
    }
}

/// A positive number as (exponent of its leading one bit, the bits after it left-aligned in
/// 64 bits). Both orders agree with numeric order, and the form is unique per value.
type Magnitude = (i32, u64);

fn integer_magnitude(value: u64) -> Magnitude {
    debug_assert!(value > 0);
    let leading = 63 - value.leading_zeros();
    (leading as i32, fraction_bits(value, leading))
}

/// The bits of `value` below bit `leading`, shifted up so the next bit is bit 63.
fn fraction_bits(value: u64, leading: u32) -> u64 {
    if leading == 0 {
        return 0;
    }
    let below = value & ((1u64 << leading) - 1);
    below << (64 - leading)
}

fn float_magnitude(value: f64) -> Magnitude {
    debug_assert!(value > 0.0 && value.is_finite());
    let bits = value.to_bits();
    let biased_exponent = ((bits >> 52) & 0x7FF) as i32;
    let mantissa = bits & ((1u64 << 52) - 1);
    if biased_exponent == 0 {
        // Subnormal: value = mantissa * 2^-1074.
        let leading = 63 - mantissa.leading_zeros();
        return (leading as i32 - 1074, fraction_bits(mantissa, leading));
    }
    (biased_exponent - 1023, mantissa << 12)
}

fn encode_magnitude((exponent, fraction): Magnitude, negative: bool, out: &mut Vec<u8>) {
    // Exponents lie in -1074..=1023, so the biased value fits u16.
    let biased = u16::try_from(exponent + EXPONENT_BIAS).unwrap_or(u16::MAX);
    let mut bytes = [0u8; 10];
    bytes[..2].copy_from_slice(&biased.to_be_bytes());
    bytes[2..].copy_from_slice(&fraction.to_be_bytes());
    if negative {
        for byte in &mut bytes {
            *byte = !*byte;
        }
    }
    out.extend_from_slice(&bytes);
}

#[cfg(test)]
mod tests {
    use std::cmp::Ordering;

    use bson::spec::BinarySubtype;
    use bson::{Binary, Regex, Timestamp, bson, doc, oid::ObjectId};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use shoal_common::bsonorder;

    use super::*;

    fn enc(value: &Bson) -> Vec<u8> {
        encode_to_vec(value)
    }

    fn assert_consistent(a: &Bson, b: &Bson) {
        let expected = bsonorder::compare(a, b);
        let actual = enc(a).cmp(&enc(b));
        assert_eq!(actual, expected, "{a:?} vs {b:?}");
    }

    #[test]
    fn equal_numbers_encode_identically() {
        assert_eq!(enc(&Bson::Int32(1)), enc(&Bson::Int64(1)));
        assert_eq!(enc(&Bson::Int32(1)), enc(&Bson::Double(1.0)));
        assert_eq!(enc(&Bson::Double(-0.0)), enc(&Bson::Int32(0)));
        assert_eq!(
            enc(&Bson::Int64(1 << 62)),
            enc(&Bson::Double((1u64 << 62) as f64))
        );
        assert_eq!(
            enc(&Bson::Int64(i64::MIN)),
            enc(&Bson::Double(i64::MIN as f64))
        );
        assert_eq!(
            enc(&bson!([1, {"a": 2}])),
            enc(&bson!([1.0, {"a": Bson::Int64(2)}]))
        );
    }

    #[test]
    fn tricky_pairs_order_like_bsonorder() {
        let pairs = [
            (Bson::Int64(i64::MAX), Bson::Double(2f64.powi(63))),
            (Bson::Int64(i64::MAX - 1), Bson::Int64(i64::MAX)),
            (
                Bson::Int64((1 << 53) + 1),
                Bson::Double((1u64 << 53) as f64),
            ),
            (Bson::Int64(2), Bson::Double(2.5)),
            (Bson::Int64(-2), Bson::Double(-2.5)),
            (Bson::Double(f64::NAN), Bson::Double(f64::NEG_INFINITY)),
            (
                Bson::Double(f64::MIN_POSITIVE / 4.0),
                Bson::Double(f64::MIN_POSITIVE),
            ),
            (Bson::Double(5e-324), Bson::Int32(0)),
            (Bson::String("a".into()), Bson::String("a\0".into())),
            (Bson::String("a\0".into()), Bson::String("a\u{1}".into())),
            (Bson::String("ab".into()), Bson::Symbol("ab".into())),
            (bson!({"a": 1}), bson!({"a": 1, "b": 0})),
            (bson!({"a": 1}), bson!({"b": 0})),
            (bson!({"a": "x"}), bson!({"a": 1})),
            (bson!([1, 2]), bson!([1, 2, 0])),
            (bson!([]), bson!([Bson::MinKey])),
            (Bson::Null, Bson::Undefined),
            (Bson::MinKey, Bson::Null),
            (Bson::MaxKey, Bson::Boolean(true)),
            (
                Bson::Binary(Binary {
                    subtype: BinarySubtype::Generic,
                    bytes: vec![9, 9],
                }),
                Bson::Binary(Binary {
                    subtype: BinarySubtype::Generic,
                    bytes: vec![1, 1, 1],
                }),
            ),
            (
                Bson::Binary(Binary {
                    subtype: BinarySubtype::Uuid,
                    bytes: vec![1],
                }),
                Bson::Binary(Binary {
                    subtype: BinarySubtype::Generic,
                    bytes: vec![2],
                }),
            ),
            (
                Bson::DateTime(bson::DateTime::from_millis(-5)),
                Bson::DateTime(bson::DateTime::from_millis(3)),
            ),
            (
                Bson::Timestamp(Timestamp {
                    time: 1,
                    increment: 9,
                }),
                Bson::Timestamp(Timestamp {
                    time: 2,
                    increment: 0,
                }),
            ),
        ];
        for (a, b) in &pairs {
            assert_consistent(a, b);
            assert_consistent(b, a);
        }
    }

    fn random_string(rng: &mut StdRng) -> String {
        let alphabet = ['\0', '\u{1}', 'a', 'b', 'z', 'é', '\u{ff}'];
        let len = rng.random_range(0..4);
        (0..len)
            .map(|_| alphabet[rng.random_range(0..alphabet.len())])
            .collect()
    }

    fn random_number(rng: &mut StdRng) -> Bson {
        let small = [
            -3i64,
            -2,
            -1,
            0,
            1,
            2,
            3,
            i64::MAX,
            i64::MIN,
            (1 << 53) + 1,
            1 << 53,
            -(1 << 53) - 1,
        ];
        match rng.random_range(0..7) {
            0 => Bson::Int32(rng.random_range(-4..5)),
            1 => Bson::Int64(small[rng.random_range(0..small.len())]),
            2 => Bson::Int64(rng.random()),
            3 => Bson::Double(f64::from(rng.random_range(-8i32..9)) / 2.0),
            4 => Bson::Double(small[rng.random_range(0..small.len())] as f64),
            5 => {
                let specials = [
                    f64::NAN,
                    f64::INFINITY,
                    f64::NEG_INFINITY,
                    -0.0,
                    5e-324,
                    f64::MAX,
                    -f64::MAX,
                    1e300,
                ];
                Bson::Double(specials[rng.random_range(0..specials.len())])
            }
            _ => Bson::Double(f64::from_bits(rng.random())),
        }
    }

    fn random_value(rng: &mut StdRng, depth: u32) -> Bson {
        let choice = rng.random_range(0..if depth > 2 { 12 } else { 14 });
        match choice {
            0 => Bson::MinKey,
            1 => Bson::MaxKey,
            2 => Bson::Null,
            3..=5 => random_number(rng),
            6 => Bson::String(random_string(rng)),
            7 => Bson::Boolean(rng.random()),
            8 => Bson::DateTime(bson::DateTime::from_millis(rng.random_range(-3..4))),
            9 => Bson::ObjectId(ObjectId::from_bytes([rng.random_range(0..3); 12])),
            10 => Bson::Binary(Binary {
                subtype: if rng.random() {
                    BinarySubtype::Generic
                } else {
                    BinarySubtype::Uuid
                },
                bytes: (0..rng.random_range(0..3))
                    .map(|_| rng.random_range(0..3))
                    .collect(),
            }),
            11 => match rng.random_range(0..3) {
                0 => Bson::Timestamp(Timestamp {
                    time: rng.random_range(0..3),
                    increment: rng.random_range(0..3),
                }),
                1 => Bson::RegularExpression(Regex {
                    pattern: random_string(rng),
                    options: "i".into(),
                }),
                _ => Bson::Symbol(random_string(rng)),
            },
            12 => Bson::Array(
                (0..rng.random_range(0..3))
                    .map(|_| random_value(rng, depth + 1))
                    .collect(),
            ),
            _ => {
                let mut doc = Document::new();
                for _ in 0..rng.random_range(0..3) {
                    doc.insert(random_string(rng), random_value(rng, depth + 1));
                }
                Bson::Document(doc)
            }
        }
    }

    #[test]
    fn random_values_order_like_bsonorder() {
        let seed = 0x5eed_u64;
        let mut rng = StdRng::seed_from_u64(seed);
        let values: Vec<Bson> = (0..3000).map(|_| random_value(&mut rng, 0)).collect();
        for window in values.windows(2) {
            assert_consistent(&window[0], &window[1]);
        }
        for _ in 0..20_000 {
            let a = &values[rng.random_range(0..values.len())];
            let b = &values[rng.random_range(0..values.len())];
            assert_consistent(a, b);
            if bsonorder::compare(a, b) == Ordering::Equal {
                assert_eq!(enc(a), enc(b), "seed {seed}: {a:?} == {b:?}");
            }
        }
    }

    #[test]
    fn encodings_are_self_delimiting_in_compound_keys() {
        // ("a", 2) < ("a\0", 1) must hold in the concatenation too.
        let mut first = Vec::new();
        encode_key(&doc! {"x": "a", "y": 2}, &mut first);
        let mut second = Vec::new();
        encode_key(&doc! {"x": "a\0", "y": 1}, &mut second);
        assert!(first < second);
        let mut third = Vec::new();
        encode_key(&doc! {"x": 1, "y": "b"}, &mut third);
        let mut fourth = Vec::new();
        encode_key(&doc! {"x": 1.0, "y": "a"}, &mut fourth);
        assert!(fourth < third);
    }
}
