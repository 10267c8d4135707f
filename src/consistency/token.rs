//! Consistency tokens and cursors: opaque to clients, versioned, tied to the issuing store.
//!
//! A token is base64url of a version byte, the revision and the store id (cursors add a hash of
//! the request and a position), so it is opaque to clients, versioned from v1 and tied to the
//! store that issued it.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

use super::ConsistencyError;
use crate::model::Revision;

const TOKEN_V1: u8 = 1;
const CURSOR_V1: u8 = 1;

/// Encodes a token for `revision` of the store `store_id`.
pub fn encode_token(revision: Revision, store_id: &str) -> String {
    let mut buf = Vec::with_capacity(9 + store_id.len());
    buf.push(TOKEN_V1);
    buf.extend_from_slice(&revision.0.to_be_bytes());
    buf.extend_from_slice(store_id.as_bytes());
    URL_SAFE_NO_PAD.encode(buf)
}

fn take_u64(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let (head, rest) = bytes.split_first_chunk::<8>()?;
    Some((u64::from_be_bytes(*head), rest))
}

/// Decodes a token. `Ok(Some(rev))` if it was issued by `store_id`; `Ok(None)` if it is a valid
/// token of another store: another Pemba store, or a SpiceDB datastore (an application that
/// switches over has SpiceDB's ZedTokens stored, and they must keep working).
pub fn decode_token(token: &str, store_id: &str) -> Result<Option<Revision>, ConsistencyError> {
    let bad = |why: &str| ConsistencyError::MalformedToken(why.to_string());
    if is_spicedb_token(token) {
        return Ok(None);
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(token.trim_end_matches('='))
        .map_err(|_| bad("not base64"))?;
    let (version, rest) = bytes.split_first().ok_or_else(|| bad("empty token"))?;
    if *version != TOKEN_V1 {
        return Err(bad("unknown token version"));
    }
    let (rev, id) = take_u64(rest).ok_or_else(|| bad("truncated token"))?;
    if id == store_id.as_bytes() {
        Ok(Some(Revision(rev)))
    } else {
        Ok(None)
    }
}

/// Whether `token` is a ZedToken SpiceDB issued: standard base64 (with padding) of its
/// `DecodedZedToken` message, whose one field is either `v1` (field 3: a revision string, the
/// datastore's id prefix, a schema hash) or the older `deprecated_v1_zookie` (field 2: a
/// numeric revision). Pemba's own tokens start with the byte 1, which no such message does.
/// Only the framing is checked: the revision means nothing to Pemba either way.
fn is_spicedb_token(token: &str) -> bool {
    let Ok(bytes) = STANDARD.decode(token) else {
        return false;
    };
    match protobuf_field(&bytes) {
        // v1: a message whose fields are a revision string, an id prefix and a hash
        Some((3, WireValue::Bytes(inner), [])) => {
            let mut rest = inner;
            let mut revision = false;
            while !rest.is_empty() {
                match protobuf_field(rest) {
                    Some((1, WireValue::Bytes(r), more)) => {
                        revision = !r.is_empty() && std::str::from_utf8(r).is_ok();
                        rest = more;
                    }
                    Some((2 | 3, WireValue::Bytes(_), more)) => rest = more,
                    _ => return false,
                }
            }
            revision
        }
        // the zookie: a message holding a varint revision
        Some((2, WireValue::Bytes(inner), [])) => {
            matches!(protobuf_field(inner), Some((1, WireValue::Varint, [])))
        }
        _ => false,
    }
}

/// A protobuf field's value: the two wire types a ZedToken uses.
enum WireValue<'a> {
    /// a varint (its value is not needed)
    Varint,
    /// a length-delimited value
    Bytes(&'a [u8]),
}

/// Reads one protobuf field (number, value, what follows), if `bytes` starts with a varint or
/// a length-delimited one.
fn protobuf_field(bytes: &[u8]) -> Option<(u64, WireValue<'_>, &[u8])> {
    let (key, rest) = varint(bytes)?;
    match key & 7 {
        0 => {
            let (_, rest) = varint(rest)?;
            Some((key >> 3, WireValue::Varint, rest))
        }
        2 => {
            let (len, rest) = varint(rest)?;
            let len = usize::try_from(len).ok()?;
            let value = rest.get(..len)?;
            Some((key >> 3, WireValue::Bytes(value), rest.get(len..)?))
        }
        _ => None,
    }
}

/// Reads a protobuf varint (at most ten bytes).
fn varint(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let mut value: u64 = 0;
    for (i, b) in bytes.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, bytes.get(i + 1..)?));
        }
    }
    None
}

/// A decoded cursor: the revision the paged read is pinned to and where it stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// the revision every page is read at
    pub revision: Revision,
    /// opaque position after the last result returned
    pub position: Vec<u8>,
}

/// A stable hash (FNV-1a) of the parts of a request that must not change between pages.
pub fn hash_request(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.iter().chain(std::iter::once(&0xffu8)) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// Encodes a cursor for a request whose hash is `request_hash`.
pub fn encode_cursor(cursor: &Cursor, store_id: &str, request_hash: u64) -> String {
    let mut buf = Vec::with_capacity(32 + cursor.position.len());
    buf.push(CURSOR_V1);
    buf.extend_from_slice(&cursor.revision.0.to_be_bytes());
    buf.extend_from_slice(&request_hash.to_be_bytes());
    let id = store_id.as_bytes();
    buf.push(u8::try_from(id.len()).unwrap_or(u8::MAX));
    buf.extend_from_slice(id.get(..usize::from(u8::MAX).min(id.len())).unwrap_or(id));
    buf.extend_from_slice(&cursor.position);
    URL_SAFE_NO_PAD.encode(buf)
}

/// Decodes a cursor, refusing one from another store or another request.
pub fn decode_cursor(
    token: &str,
    store_id: &str,
    request_hash: u64,
) -> Result<Cursor, ConsistencyError> {
    let bad = |why: &str| ConsistencyError::InvalidCursor(why.to_string());
    let bytes = URL_SAFE_NO_PAD
        .decode(token.trim_end_matches('='))
        .map_err(|_| bad("not base64"))?;
    let (version, rest) = bytes.split_first().ok_or_else(|| bad("empty cursor"))?;
    if *version != CURSOR_V1 {
        return Err(bad("unknown cursor version"));
    }
    let (rev, rest) = take_u64(rest).ok_or_else(|| bad("truncated cursor"))?;
    let (hash, rest) = take_u64(rest).ok_or_else(|| bad("truncated cursor"))?;
    let (id_len, rest) = rest.split_first().ok_or_else(|| bad("truncated cursor"))?;
    let id_len = usize::from(*id_len);
    let (id, position) = (rest.get(..id_len), rest.get(id_len..));
    let (Some(id), Some(position)) = (id, position) else {
        return Err(bad("truncated cursor"));
    };
    if id != store_id.as_bytes() {
        return Err(bad("the cursor was issued by another datastore"));
    }
    if hash != request_hash {
        return Err(bad("the cursor belongs to a different request"));
    }
    Ok(Cursor {
        revision: Revision(rev),
        position: position.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trip() {
        let t = encode_token(Revision(42), "abcdef0123456789");
        assert_eq!(
            decode_token(&t, "abcdef0123456789").unwrap(),
            Some(Revision(42))
        );
        assert_eq!(decode_token(&t, "other").unwrap(), None);
        assert!(decode_token("", "x").is_err());
        assert!(decode_token("AAAA", "x").is_err());
        assert!(decode_token("not a token!", "x").is_err());
    }

    #[test]
    fn spicedb_tokens_are_another_stores() {
        // Revision 1700000000000000000, without and with an id prefix, as SpiceDB encodes them.
        for t in [
            "GhUKEzE3MDAwMDAwMDAwMDAwMDAwMDA=",
            "Gh8KEzE3MDAwMDAwMDAwMDAwMDAwMDASCDFiNGUyOGJh",
        ] {
            assert_eq!(decode_token(t, "abcdef0123456789").unwrap(), None, "{t}");
        }
        // A CockroachDB revision (`nanos.logical`) and a legacy zookie (revision 5).
        let crdb = STANDARD.encode(b"\x1a\x20\x0a\x1e1700000000000000000.0000000001");
        assert_eq!(decode_token(&crdb, "s").unwrap(), None);
        let zookie = STANDARD.encode([0x12, 0x02, 0x08, 0x05]);
        assert_eq!(decode_token(&zookie, "s").unwrap(), None);
        // Framing that is not a ZedToken stays malformed.
        for b in [
            &[0x1a, 0x05, 0x0a][..],       // truncated
            &[0x1a, 0x02, 0x0a, 0x00][..], // empty revision
            &[0x1a, 0x02, 0x28, 0x01][..], // unknown inner field
            &[0x22, 0x00][..],             // unknown outer field
        ] {
            assert!(decode_token(&STANDARD.encode(b), "s").is_err(), "{b:?}");
        }
    }

    #[test]
    fn token_bytes_are_frozen() {
        // Tokens outlive releases: this encoding must never change for version 1.
        assert_eq!(encode_token(Revision(1), "s"), "AQAAAAAAAAABcw");
    }

    #[test]
    fn cursor_round_trip_and_mismatch() {
        let c = Cursor {
            revision: Revision(7),
            position: b"doc\x00a".to_vec(),
        };
        let h = hash_request(&[b"document", b"view"]);
        let t = encode_cursor(&c, "store", h);
        assert_eq!(decode_cursor(&t, "store", h).unwrap(), c);
        assert!(decode_cursor(&t, "store", h ^ 1).is_err());
        assert!(decode_cursor(&t, "other", h).is_err());
        assert!(decode_cursor("@@", "store", h).is_err());
        assert!(decode_cursor(&t[..6], "store", h).is_err());
    }
}
