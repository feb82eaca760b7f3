//! Turning a framed message into a request (OP_MSG or OP_QUERY) or, for clients, a reply.
//!
//! Parsing runs in two passes on purpose. The first delimits every section and field from the
//! length prefixes alone; any failure there is a [`WireError::MalformedSection`] (or a checksum
//! or flag error), after which the stream is not trusted. Only then are the documents decoded,
//! so invalid BSON inside a well-delimited message is a [`WireError::InvalidBson`] that the
//! server answers without closing the connection.

use bson::Document;

use crate::{
    BSON_OBJECT_INTERNAL_BYTES_MAX, FLAG_CHECKSUM_PRESENT, FLAG_MORE_TO_COME, OP_MSG, OP_QUERY,
    OP_REPLY, RawMessage, WireError,
};

/// OP_MSG flag bits a receiver must understand; an unknown one set among them is an error.
const FLAGS_REQUIRED_MASK: u32 = 0xFFFF;
/// The required flag bits Shoal understands.
const FLAGS_REQUIRED_KNOWN: u32 = FLAG_CHECKSUM_PRESENT | FLAG_MORE_TO_COME;

const FLAGS_BYTES: usize = 4;
const CHECKSUM_BYTES: usize = 4;

/// A parsed client request.
#[derive(Clone, Debug, PartialEq)]
pub enum Request {
    /// An OP_MSG command.
    Msg(OpMsg),
    /// A legacy OP_QUERY (only meaningful as a `<db>.$cmd` handshake).
    Query(OpQuery),
}

/// An OP_MSG request with its document sequences already merged into the body.
#[derive(Clone, Debug, PartialEq)]
pub struct OpMsg {
    /// The raw flagBits.
    pub flags: u32,
    /// The sender expects no reply.
    pub more_to_come: bool,
    /// The command: section 0, plus each kind-1 sequence as an array under its identifier.
    pub body: Document,
}

/// A legacy OP_QUERY request.
#[derive(Clone, Debug, PartialEq)]
pub struct OpQuery {
    /// The raw flags (SecondaryOk and friends); no command depends on them.
    pub flags: i32,
    /// `<db>.<collection>`; commands use `<db>.$cmd`.
    pub full_collection_name: String,
    /// Must be 1, -1 (or 0) for a command.
    pub number_to_return: i32,
    /// The command, unwrapped from `{$query: ...}` when the driver wrapped it.
    pub query: Document,
}

/// Parses a request. OP_COMPRESSED and every opcode except OP_MSG and OP_QUERY are refused.
pub fn parse_request(msg: &RawMessage) -> Result<Request, WireError> {
    match msg.header.op_code {
        OP_MSG => parse_op_msg(msg).map(Request::Msg),
        OP_QUERY => parse_op_query(&msg.body).map(Request::Query),
        other => Err(WireError::UnsupportedOpcode(other)),
    }
}

/// Parses a reply (OP_MSG, or OP_REPLY with exactly one document) into its body document.
pub fn parse_reply(msg: &RawMessage) -> Result<Document, WireError> {
    match msg.header.op_code {
        OP_MSG => parse_op_msg(msg).map(|op_msg| op_msg.body),
        OP_REPLY => parse_op_reply(&msg.body),
        other => Err(WireError::UnsupportedOpcode(other)),
    }
}

/// The moreToCome bit of an OP_MSG body, read without parsing anything else, so that even a
/// message that fails to parse is not answered when its sender reads no reply.
pub(crate) fn raw_more_to_come(body: &[u8]) -> bool {
    let mut reader = Reader::new(body);
    matches!(reader.u32(), Ok(flags) if flags & FLAG_MORE_TO_COME != 0)
}

fn parse_op_msg(msg: &RawMessage) -> Result<OpMsg, WireError> {
    let mut reader = Reader::new(&msg.body);
    let flags = reader.u32()?;
    let unknown_required = flags & FLAGS_REQUIRED_MASK & !FLAGS_REQUIRED_KNOWN;
    let sections_end = if flags & FLAG_CHECKSUM_PRESENT != 0 {
        verify_checksum(msg)?
    } else {
        msg.body.len()
    };
    let sections = msg
        .body
        .get(reader.position..sections_end)
        .ok_or_else(|| WireError::MalformedSection("no room for the OP_MSG checksum".into()))?;
    let raw_sections = split_sections(sections)?;
    // Flags are checked after the structure so that a broken frame is always reported as such.
    if unknown_required != 0 {
        return Err(WireError::UnknownRequiredFlags(unknown_required));
    }
    let body = merge_sections(raw_sections)?;
    Ok(OpMsg {
        flags,
        more_to_come: flags & FLAG_MORE_TO_COME != 0,
        body,
    })
}

/// Checks the trailing CRC-32C and returns where the sections end.
fn verify_checksum(msg: &RawMessage) -> Result<usize, WireError> {
    let sections_end = msg
        .body
        .len()
        .checked_sub(CHECKSUM_BYTES)
        .filter(|end| FLAGS_BYTES <= *end)
        .ok_or_else(|| WireError::MalformedSection("no room for the OP_MSG checksum".into()))?;
    let stated_bytes = &msg.body[sections_end..];
    let stated = u32::from_le_bytes([
        stated_bytes[0],
        stated_bytes[1],
        stated_bytes[2],
        stated_bytes[3],
    ]);
    let header_crc = crc32c::crc32c(&msg.header.to_bytes());
    let computed = crc32c::crc32c_append(header_crc, &msg.body[..sections_end]);
    if stated != computed {
        return Err(WireError::BadChecksum { stated, computed });
    }
    Ok(sections_end)
}

/// The sections of an OP_MSG, delimited but not yet decoded.
struct RawSections<'a> {
    body: &'a [u8],
    sequences: Vec<(String, Vec<&'a [u8]>)>,
}

fn split_sections(bytes: &[u8]) -> Result<RawSections<'_>, WireError> {
    let mut reader = Reader::new(bytes);
    let mut body = None;
    let mut sequences: Vec<(String, Vec<&[u8]>)> = Vec::new();
    while !reader.is_empty() {
        match reader.u8()? {
            0 => {
                if body.is_some() {
                    return Err(WireError::MalformedSection(
                        "more than one kind-0 section".into(),
                    ));
                }
                body = Some(reader.document()?);
            }
            1 => {
                let (identifier, documents) = split_sequence(&mut reader)?;
                if sequences.iter().any(|(seen, _)| *seen == identifier) {
                    return Err(WireError::MalformedSection(format!(
                        "document sequence '{identifier}' appears twice"
                    )));
                }
                sequences.push((identifier, documents));
            }
            kind => {
                return Err(WireError::MalformedSection(format!(
                    "unknown section kind {kind}"
                )));
            }
        }
    }
    let body = body.ok_or_else(|| WireError::MalformedSection("no kind-0 section".into()))?;
    Ok(RawSections { body, sequences })
}

/// Splits one kind-1 section (after its kind byte) into its identifier and documents.
fn split_sequence<'a>(reader: &mut Reader<'a>) -> Result<(String, Vec<&'a [u8]>), WireError> {
    let section_start = reader.position;
    let size = reader.i32()?;
    let size_bytes = usize::try_from(size)
        .ok()
        .filter(|size| 4 < *size)
        .ok_or_else(|| {
            WireError::MalformedSection(format!("document sequence size {size} is too small"))
        })?;
    let section = reader.bytes(section_start, size_bytes).map_err(|_| {
        WireError::MalformedSection(format!(
            "document sequence size {size} overruns the message"
        ))
    })?;
    reader.position = section_start + size_bytes;
    let mut inner = Reader::new(&section[4..]);
    let identifier = inner.cstring()?;
    if identifier.is_empty() {
        return Err(WireError::MalformedSection(
            "document sequence without identifier".into(),
        ));
    }
    let mut documents = Vec::new();
    while !inner.is_empty() {
        documents.push(inner.document()?);
    }
    Ok((identifier, documents))
}

fn merge_sections(raw: RawSections<'_>) -> Result<Document, WireError> {
    let mut body = decode_document(raw.body)?;
    for (identifier, raw_documents) in raw.sequences {
        if body.contains_key(&identifier) {
            return Err(WireError::DuplicateField(identifier));
        }
        let documents = raw_documents
            .into_iter()
            .map(|bytes| decode_document(bytes).map(bson::Bson::Document))
            .collect::<Result<Vec<_>, _>>()?;
        body.insert(identifier, documents);
    }
    Ok(body)
}

fn parse_op_query(body: &[u8]) -> Result<OpQuery, WireError> {
    let mut reader = Reader::new(body);
    let flags = reader.i32()?;
    let full_collection_name = reader.cstring()?;
    let _number_to_skip = reader.i32()?;
    let number_to_return = reader.i32()?;
    let query_bytes = reader.document()?;
    let fields_bytes = if reader.is_empty() {
        None
    } else {
        Some(reader.document()?)
    };
    if !reader.is_empty() {
        return Err(WireError::MalformedSection(
            "trailing bytes after OP_QUERY".into(),
        ));
    }
    let query = unwrap_query(decode_document(query_bytes)?);
    if let Some(bytes) = fields_bytes {
        decode_document(bytes)?;
    }
    Ok(OpQuery {
        flags,
        full_collection_name,
        number_to_return,
        query,
    })
}

/// Drivers sending a read preference over OP_QUERY wrap the command as
/// `{$query: {...}, $readPreference: ...}`; the handler wants the command itself. The read
/// preference is kept inside it, where OP_MSG puts it.
fn unwrap_query(mut query: Document) -> Document {
    let Ok(inner) = query.get_document_mut("$query") else {
        return query;
    };
    let mut command = std::mem::take(inner);
    if let Some(read_preference) = query.remove("$readPreference")
        && !command.contains_key("$readPreference")
    {
        command.insert("$readPreference", read_preference);
    }
    command
}

fn parse_op_reply(body: &[u8]) -> Result<Document, WireError> {
    let mut reader = Reader::new(body);
    let _response_flags = reader.i32()?;
    let _cursor_id = reader.bytes(reader.position, 8)?;
    reader.position += 8;
    let _starting_from = reader.i32()?;
    let number_returned = reader.i32()?;
    if number_returned != 1 {
        return Err(WireError::UnexpectedReply(format!(
            "OP_REPLY with {number_returned} documents, expected 1"
        )));
    }
    let document = reader.document()?;
    if !reader.is_empty() {
        return Err(WireError::MalformedSection(
            "trailing bytes after OP_REPLY".into(),
        ));
    }
    decode_document(document)
}

/// Decodes one document whose bytes were delimited by its own length prefix.
fn decode_document(bytes: &[u8]) -> Result<Document, WireError> {
    if BSON_OBJECT_INTERNAL_BYTES_MAX < bytes.len() {
        return Err(WireError::DocumentTooLarge {
            bytes: bytes.len(),
            max: BSON_OBJECT_INTERNAL_BYTES_MAX,
        });
    }
    // RawDocument checks that the length prefix matches the slice and that the terminator is
    // present; converting it walks every element, nested ones included.
    let raw = bson::RawDocument::from_bytes(bytes)
        .map_err(|err| WireError::InvalidBson(err.to_string()))?;
    let document =
        Document::try_from(raw).map_err(|err| WireError::InvalidBson(err.to_string()))?;
    Ok(document)
}

/// A bounds-checked cursor over a message body. Every read that would run past the end is a
/// [`WireError::MalformedSection`], never a panic.
struct Reader<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, position: 0 }
    }

    fn is_empty(&self) -> bool {
        self.bytes.len() <= self.position
    }

    /// `len` bytes starting at `start`, without moving the cursor.
    fn bytes(&self, start: usize, len: usize) -> Result<&'a [u8], WireError> {
        start
            .checked_add(len)
            .and_then(|end| self.bytes.get(start..end))
            .ok_or_else(|| {
                WireError::MalformedSection(format!("field at offset {start} overruns the message"))
            })
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let slice = self.bytes(self.position, N)?;
        let mut array = [0u8; N];
        array.copy_from_slice(slice);
        self.position += N;
        Ok(array)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        self.array::<1>().map(|[byte]| byte)
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        self.array::<4>().map(u32::from_le_bytes)
    }

    fn i32(&mut self) -> Result<i32, WireError> {
        self.array::<4>().map(i32::from_le_bytes)
    }

    fn cstring(&mut self) -> Result<String, WireError> {
        let rest = self.bytes.get(self.position..).unwrap_or_default();
        let nul = rest
            .iter()
            .position(|byte| *byte == 0)
            .ok_or_else(|| WireError::MalformedSection("unterminated cstring".into()))?;
        let text = std::str::from_utf8(&rest[..nul])
            .map_err(|_| WireError::MalformedSection("cstring is not UTF-8".into()))?;
        self.position += nul + 1;
        Ok(text.to_owned())
    }

    /// The bytes of the document at the cursor, delimited by its length prefix.
    fn document(&mut self) -> Result<&'a [u8], WireError> {
        let start = self.position;
        let length = self.i32()?;
        let document_bytes = usize::try_from(length)
            .ok()
            .filter(|len| 5 <= *len)
            .ok_or_else(|| {
                WireError::MalformedSection(format!("document length {length} is too small"))
            })?;
        let document = self.bytes(start, document_bytes).map_err(|_| {
            WireError::MalformedSection(format!("document length {length} overruns its section"))
        })?;
        self.position = start + document_bytes;
        Ok(document)
    }
}

#[cfg(test)]
mod tests;
