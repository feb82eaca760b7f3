//! The `.bson` file format: documents as concatenated raw BSON, each starting with its int32
//! little-endian length. [`BsonStream`] reads one document at a time from any [`Read`] (a file,
//! a gzip decoder, a byte slice in tests) and rejects impossible lengths and short reads before
//! allocating, so a corrupt or truncated file gives an error naming the byte offset, never a
//! panic or a 2 GiB allocation.

use std::io::{ErrorKind, Read};

use bson::{RawBsonRef, RawDocument, RawDocumentBuf};

use super::FormatError;

/// The smallest BSON document: the length prefix and the trailing NUL.
pub const DOCUMENT_BYTES_MIN: usize = 5;
/// The largest document accepted, as mongorestore: the 16 MiB BSON limit plus the 16 KiB the
/// server allows internally (oplog entries, documents grown by an update).
pub const DOCUMENT_BYTES_MAX: usize = 16 * 1024 * 1024 + 16 * 1024;
/// How deep documents and arrays may nest; bounds the validator's recursion well above
/// MongoDB's own limit (100 levels for stored documents).
pub const NESTING_DEPTH_MAX: usize = 200;
/// The size of the length prefix.
const LENGTH_PREFIX_BYTES: usize = 4;

/// Reads documents one by one from a `.bson` stream; see the module documentation.
#[derive(Debug)]
pub struct BsonStream<R> {
    reader: R,
    offset: u64,
}

impl<R: Read> BsonStream<R> {
    /// A stream over `reader`, positioned at its first document.
    pub fn new(reader: R) -> BsonStream<R> {
        BsonStream { reader, offset: 0 }
    }

    /// Bytes consumed so far (of the decompressed stream).
    #[cfg(test)]
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next document, `None` at a clean end of stream (between two documents).
    pub fn next_document(&mut self) -> Result<Option<RawDocumentBuf>, FormatError> {
        let start = self.offset;
        let mut prefix = [0u8; LENGTH_PREFIX_BYTES];
        let got = self.read_full(&mut prefix)?;
        if got == 0 {
            return Ok(None);
        }
        if got < LENGTH_PREFIX_BYTES {
            return Err(FormatError::Truncated {
                offset: start,
                needed: LENGTH_PREFIX_BYTES as u64,
                available: got as u64,
            });
        }
        let length = checked_length(i32::from_le_bytes(prefix), start)?;
        let mut bytes = vec![0u8; length];
        bytes[..LENGTH_PREFIX_BYTES].copy_from_slice(&prefix);
        let got = self.read_full(&mut bytes[LENGTH_PREFIX_BYTES..])?;
        if got < length - LENGTH_PREFIX_BYTES {
            return Err(FormatError::Truncated {
                offset: start,
                needed: length as u64,
                available: (LENGTH_PREFIX_BYTES + got) as u64,
            });
        }
        validate(&bytes).map_err(|reason| FormatError::InvalidDocument {
            offset: start,
            reason,
        })?;
        RawDocumentBuf::from_bytes(bytes)
            .map(Some)
            .map_err(|error| FormatError::InvalidDocument {
                offset: start,
                reason: error.to_string(),
            })
    }

    /// Reads until `buf` is full or the stream ends; returns the bytes read.
    fn read_full(&mut self, buf: &mut [u8]) -> Result<usize, FormatError> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.reader.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => {
                    filled += n;
                    self.offset += n as u64;
                }
                Err(error) if error.kind() == ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(FormatError::Io {
                        offset: self.offset,
                        source,
                    });
                }
            }
        }
        Ok(filled)
    }
}

/// The declared length as a buffer size, if it is a possible document length.
pub fn checked_length(length: i32, offset: u64) -> Result<usize, FormatError> {
    match usize::try_from(length) {
        Ok(bytes) if (DOCUMENT_BYTES_MIN..=DOCUMENT_BYTES_MAX).contains(&bytes) => Ok(bytes),
        _ => Err(FormatError::LengthOutOfBounds {
            offset,
            length: i64::from(length),
        }),
    }
}

/// Checks a whole document (every element, nested documents and arrays included), so a
/// corrupt document is reported with its file and offset instead of as a server error.
pub fn validate(bytes: &[u8]) -> Result<(), String> {
    let document = RawDocument::from_bytes(bytes).map_err(|error| error.to_string())?;
    validate_document(document, 0)
}

fn validate_document(document: &RawDocument, depth: usize) -> Result<(), String> {
    if depth > NESTING_DEPTH_MAX {
        return Err(format!("nested deeper than {NESTING_DEPTH_MAX} levels"));
    }
    for element in document.iter() {
        let (_, value) = element.map_err(|error| error.to_string())?;
        validate_value(value, depth)?;
    }
    Ok(())
}

fn validate_value(value: RawBsonRef<'_>, depth: usize) -> Result<(), String> {
    match value {
        RawBsonRef::Document(inner) => validate_document(inner, depth + 1),
        RawBsonRef::JavaScriptCodeWithScope(code) => validate_document(code.scope, depth + 1),
        RawBsonRef::Array(array) => {
            if depth + 1 > NESTING_DEPTH_MAX {
                return Err(format!("nested deeper than {NESTING_DEPTH_MAX} levels"));
            }
            for item in array {
                validate_value(item.map_err(|error| error.to_string())?, depth + 1)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Reads up to `docs_max` documents or about `bytes_max` bytes (at least one document), the
/// next insert batch; an empty vector at the end of the stream.
pub fn next_batch<R: Read>(
    stream: &mut BsonStream<R>,
    docs_max: usize,
    bytes_max: usize,
) -> Result<Vec<RawDocumentBuf>, FormatError> {
    assert!(docs_max > 0);
    let mut batch = Vec::new();
    let mut bytes = 0;
    while batch.len() < docs_max && bytes < bytes_max {
        let Some(document) = stream.next_document()? else {
            break;
        };
        bytes += document.as_bytes().len();
        batch.push(document);
    }
    Ok(batch)
}

#[cfg(test)]
mod tests {
    use bson::{Bson, doc, oid::ObjectId};

    use super::*;

    fn bytes_of(documents: &[bson::Document]) -> Vec<u8> {
        let mut out = Vec::new();
        for document in documents {
            out.extend(
                RawDocumentBuf::from_document(document)
                    .unwrap()
                    .into_bytes(),
            );
        }
        out
    }

    fn read_all(bytes: &[u8]) -> Result<Vec<RawDocumentBuf>, FormatError> {
        let mut stream = BsonStream::new(bytes);
        let mut out = Vec::new();
        while let Some(document) = stream.next_document()? {
            out.push(document);
        }
        Ok(out)
    }

    fn samples() -> Vec<bson::Document> {
        vec![
            doc! {"_id": 1, "a": "x", "n": {"deep": [1, 2, {"z": Bson::Null}]}},
            doc! {},
            doc! {"_id": ObjectId::new(), "f": 1.5, "big": i64::MAX},
        ]
    }

    #[test]
    fn reads_every_document_back_byte_for_byte() {
        let bytes = bytes_of(&samples());
        let read = read_all(&bytes).unwrap();
        assert_eq!(read.len(), 3);
        let joined: Vec<u8> = read.iter().flat_map(|d| d.as_bytes().to_vec()).collect();
        assert_eq!(joined, bytes);
        assert_eq!(read[0].to_document().unwrap(), samples()[0]);
    }

    #[test]
    fn empty_stream_has_no_documents() {
        assert!(read_all(&[]).unwrap().is_empty());
    }

    #[test]
    fn truncation_anywhere_is_an_error_with_the_offset() {
        let bytes = bytes_of(&samples());
        let first = RawDocumentBuf::from_document(&samples()[0]).unwrap();
        let first_len = first.as_bytes().len();
        // Cut inside the length prefix of the second document, then inside its body, then
        // inside the last document.
        for cut in [first_len + 2, first_len + 4, bytes.len() - 1] {
            let error = read_all(&bytes[..cut]).unwrap_err();
            let FormatError::Truncated {
                offset, available, ..
            } = error
            else {
                panic!("cut at {cut}: {error}");
            };
            assert!(offset as usize <= cut, "{offset} > {cut}");
            assert_eq!(offset as usize + available as usize, cut);
        }
    }

    #[test]
    fn impossible_lengths_are_rejected_before_allocating() {
        for length in [-1i32, 0, 4, i32::MAX, (DOCUMENT_BYTES_MAX + 1) as i32] {
            let mut bytes = length.to_le_bytes().to_vec();
            bytes.extend([0u8; 8]);
            let error = read_all(&bytes).unwrap_err();
            assert!(
                matches!(error, FormatError::LengthOutOfBounds { offset: 0, length: l } if l == i64::from(length)),
                "{length}: {error}"
            );
        }
        assert_eq!(checked_length(5, 0).unwrap(), 5);
        assert_eq!(
            checked_length(DOCUMENT_BYTES_MAX as i32, 0).unwrap(),
            DOCUMENT_BYTES_MAX
        );
    }

    #[test]
    fn corrupt_documents_are_invalid_not_panics() {
        let good = RawDocumentBuf::from_document(&doc! {"a": "xyz"})
            .unwrap()
            .into_bytes();
        // Missing trailing NUL.
        let mut no_nul = good.clone();
        let last = no_nul.len() - 1;
        no_nul[last] = 1;
        // A string whose length runs past the document.
        let mut long_string = good.clone();
        long_string[7] = 0x7f;
        // An unknown element type.
        let mut bad_type = good.clone();
        bad_type[4] = 0x77;
        for (name, bytes) in [
            ("no nul", no_nul),
            ("long string", long_string),
            ("bad type", bad_type),
        ] {
            let error = read_all(&bytes).unwrap_err();
            assert!(
                matches!(error, FormatError::InvalidDocument { offset: 0, .. }),
                "{name}: {error}"
            );
        }
    }

    #[test]
    fn invalid_nested_documents_are_found() {
        let inner = doc! {"b": "text"};
        let mut bytes = RawDocumentBuf::from_document(&doc! {"a": [inner]})
            .unwrap()
            .into_bytes();
        // Corrupt the string length inside the nested document in the array.
        let at = bytes.windows(2).position(|w| w == b"b\0").unwrap();
        bytes[at + 2] = 0x40;
        assert!(matches!(
            read_all(&bytes).unwrap_err(),
            FormatError::InvalidDocument { .. }
        ));
    }

    #[test]
    fn deep_nesting_is_bounded() {
        let mut document = doc! {"leaf": 1};
        for _ in 0..(NESTING_DEPTH_MAX + 5) {
            document = doc! {"n": document};
        }
        let bytes = bytes_of(&[document]);
        let error = read_all(&bytes).unwrap_err();
        assert!(error.to_string().contains("nested deeper"), "{error}");
    }

    #[test]
    fn read_errors_become_io_errors() {
        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("disk on fire"))
            }
        }
        let error = BsonStream::new(Failing).next_document().unwrap_err();
        assert!(
            matches!(error, FormatError::Io { offset: 0, .. }),
            "{error}"
        );
    }

    #[test]
    fn batches_respect_both_limits() {
        let documents: Vec<_> = (0..10).map(|i| doc! {"_id": i}).collect();
        let bytes = bytes_of(&documents);
        let one_len = RawDocumentBuf::from_document(&documents[0])
            .unwrap()
            .as_bytes()
            .len();
        let mut stream = BsonStream::new(bytes.as_slice());
        assert_eq!(next_batch(&mut stream, 4, usize::MAX).unwrap().len(), 4);
        assert_eq!(next_batch(&mut stream, 100, one_len * 2).unwrap().len(), 2);
        assert_eq!(next_batch(&mut stream, 100, usize::MAX).unwrap().len(), 4);
        assert!(next_batch(&mut stream, 100, usize::MAX).unwrap().is_empty());
        assert_eq!(stream.offset() as usize, bytes.len());
    }
}
