//! The framing on every RPC stream: a little-endian `u32` byte count, then exactly one BSON
//! document of that many bytes.
//!
//! The count is checked against [`FRAME_BYTES_MAX`] before anything is allocated, so a peer
//! cannot make us reserve memory by announcing a huge frame, and the document's own BSON length
//! header must agree with the frame so no trailing bytes are silently ignored. The same checks
//! run before writing, so we never send what the other side would reject.

use bson::Document;

use crate::RpcError;

/// The largest BSON document one frame may carry, in bytes. Generous for batches of 16 MB
/// documents, small enough that one request cannot exhaust a node's memory.
pub const FRAME_BYTES_MAX: usize = 64 * 1024 * 1024;

/// The length prefix's size.
const PREFIX_BYTES: usize = 4;
/// The smallest valid BSON document: a 4-byte length and the terminating NUL.
const BSON_BYTES_MIN: usize = 5;

const _: () = assert!(FRAME_BYTES_MAX <= u32::MAX as usize);
const _: () = assert!(BSON_BYTES_MIN <= FRAME_BYTES_MAX);

/// Why a frame could not be read: the stream failed, or the bytes were bad.
#[derive(Debug)]
pub(crate) enum FrameReadError {
    /// The stream or connection ended or failed before the frame was complete.
    Stream(quinn::ReadExactError),
    /// The frame arrived but breaks the framing rules.
    Invalid(RpcError),
}

/// Serializes `document` into a complete frame (prefix included).
pub(crate) fn encode(document: &Document) -> Result<Vec<u8>, RpcError> {
    let mut frame = vec![0u8; PREFIX_BYTES];
    document
        .to_writer(&mut frame)
        .map_err(|e| RpcError::InvalidBson(e.to_string()))?;
    let body_bytes = frame.len() - PREFIX_BYTES;
    if FRAME_BYTES_MAX < body_bytes {
        return Err(RpcError::FrameTooLarge(body_bytes));
    }
    let prefix = u32::try_from(body_bytes).map_err(|_| RpcError::FrameTooLarge(body_bytes))?;
    frame[..PREFIX_BYTES].copy_from_slice(&prefix.to_le_bytes());
    Ok(frame)
}

/// Validates an announced frame length before the body is allocated.
pub(crate) fn body_bytes(prefix: [u8; PREFIX_BYTES]) -> Result<usize, RpcError> {
    let announced = u32::from_le_bytes(prefix);
    let body_bytes = usize::try_from(announced).map_err(|_| RpcError::FrameTooLarge(usize::MAX))?;
    if FRAME_BYTES_MAX < body_bytes {
        return Err(RpcError::FrameTooLarge(body_bytes));
    }
    if body_bytes < BSON_BYTES_MIN {
        return Err(RpcError::InvalidBson(format!(
            "frame of {body_bytes} bytes is too short"
        )));
    }
    Ok(body_bytes)
}

/// Parses a frame body into the one document it must hold.
pub(crate) fn decode(body: &[u8]) -> Result<Document, RpcError> {
    let header: [u8; 4] = body
        .get(..4)
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or_else(|| RpcError::InvalidBson("frame shorter than a BSON header".to_owned()))?;
    let document_bytes = i32::from_le_bytes(header);
    if usize::try_from(document_bytes).ok() != Some(body.len()) {
        return Err(RpcError::InvalidBson(format!(
            "BSON length {document_bytes} does not match frame length {}",
            body.len()
        )));
    }
    Document::from_reader(body).map_err(|e| RpcError::InvalidBson(e.to_string()))
}

/// Reads one frame from `recv`.
pub(crate) async fn read(recv: &mut quinn::RecvStream) -> Result<Document, FrameReadError> {
    let mut prefix = [0u8; PREFIX_BYTES];
    recv.read_exact(&mut prefix)
        .await
        .map_err(FrameReadError::Stream)?;
    let body_bytes = body_bytes(prefix).map_err(FrameReadError::Invalid)?;
    let mut body = vec![0u8; body_bytes];
    recv.read_exact(&mut body)
        .await
        .map_err(FrameReadError::Stream)?;
    decode(&body).map_err(FrameReadError::Invalid)
}

#[cfg(test)]
mod tests {
    use bson::doc;

    use super::*;

    #[test]
    fn encoded_frame_decodes_to_the_same_document() {
        let document = doc! { "ping": 1, "nested": { "a": [1, 2, 3] } };
        let frame = encode(&document).unwrap();
        let prefix: [u8; 4] = frame[..4].try_into().unwrap();
        let body_len = body_bytes(prefix).unwrap();
        assert_eq!(body_len, frame.len() - 4);
        assert_eq!(decode(&frame[4..]).unwrap(), document);
    }

    #[test]
    fn oversized_length_is_rejected_before_reading() {
        let too_big = u32::try_from(FRAME_BYTES_MAX + 1).unwrap().to_le_bytes();
        assert!(matches!(
            body_bytes(too_big),
            Err(RpcError::FrameTooLarge(_))
        ));
        assert!(matches!(
            body_bytes(u32::MAX.to_le_bytes()),
            Err(RpcError::FrameTooLarge(_))
        ));
        assert!(matches!(
            body_bytes(4u32.to_le_bytes()),
            Err(RpcError::InvalidBson(_))
        ));
    }

    #[test]
    fn oversized_document_is_not_encoded() {
        // BSON caps one binary value below the frame limit, so the document gets several.
        let chunk_bytes = 14 * 1024 * 1024;
        let mut document = Document::new();
        for chunk_idx in 0..5 {
            let bytes = vec![0u8; chunk_bytes];
            let binary = bson::Binary {
                subtype: bson::spec::BinarySubtype::Generic,
                bytes,
            };
            document.insert(format!("chunk{chunk_idx}"), binary);
        }
        let result = encode(&document);
        assert!(
            matches!(result, Err(RpcError::FrameTooLarge(_))),
            "{result:?}"
        );
    }

    #[test]
    fn garbage_and_mismatched_lengths_are_invalid_bson() {
        assert!(matches!(decode(&[1, 2, 3]), Err(RpcError::InvalidBson(_))));
        let mut frame = encode(&doc! { "a": 1 }).unwrap();
        frame.push(0);
        assert!(matches!(decode(&frame[4..]), Err(RpcError::InvalidBson(_))));
        let mut corrupt = encode(&doc! { "a": "text" }).unwrap();
        let type_byte = 4 + 4;
        corrupt[type_byte] = 0x20; // Not a BSON element type.
        assert!(matches!(
            decode(&corrupt[4..]),
            Err(RpcError::InvalidBson(_))
        ));
    }
}
