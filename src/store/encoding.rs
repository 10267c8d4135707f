//! The on-disk layout: keys, the value of a relationship version, and each filter's scan range.
//!
//! Keys (one prefix byte per keyspace, components joined by `0x00`, revisions big-endian and
//! inverted so the newest version sorts first), the value of a relationship version, and the
//! scan range a filter maps to in each index.
//!
//! | keyspace      | key                                                                  | value |
//! |---------------|----------------------------------------------------------------------|-------|
//! | `meta`        | `01` name                                                            | see `META_*` |
//! | `rev-time`    | `02` rev(u64 BE)                                                     | commit time: secs(i64 BE) nanos(u32 BE) |
//! | `by-resource` | `03` rtype 0 rid 0 rel 0 stype 0 sid 0 srel-or-empty 0 !created(u64 BE) | [`VersionValue`] |
//! | `by-subject`  | `04` stype 0 sid 0 srel-or-empty 0 rtype 0 rel 0 rid 0 !created(u64 BE) | [`VersionValue`] |
//! | `schema`      | `05` !rev(u64 BE)                                                    | schema text (UTF-8) |
//! | `staged`      | `06` import(u64 BE) then a `by-resource` version key with created 0 | [`VersionValue`] |
//! | `gc-due`      | `07` (see [`GC_DUE`])                                                | empty |
//! | `changes`     | `08` rev(u64 BE) `00`                                                | [`ChangeHeader`] |
//! |               | `08` rev(u64 BE) `01` a `by-resource` tuple prefix                   | op(u8) then a [`VersionValue`] |
//!
//! The `changes` keyspace is the change log Watch reads: for every committed revision a header
//! (written with the revision's commit, so a header exists exactly for the revisions at or
//! below the head) and one entry per relationship the revision created, replaced or deleted.
//! The `staged` keyspace holds the relationships of bulk imports that have not committed yet;
//! it is emptied when a store opens.
//! Types, relations and ids never contain `0x00` (the API validates them), so splitting on it is
//! unambiguous, and component-wise order equals byte order. Any change here bumps
//! [`FORMAT_VERSION`].

use crate::model::{
    Caveat, Context, ObjectRef, RelationshipFilter, RelationshipKey, SubjectRef,
    SubjectRelationFilter, Timestamp,
};
use crate::store::{StoreError, StoreResult};

/// The version of this layout, stored under [`META_FORMAT`]. Version 1 had no [`GC_DUE`]
/// keyspace; opening it builds that keyspace. Version 2 had no [`CHANGES`] keyspace; opening
/// it (or version 1) starts the change log at the head ([`META_LOG_START`]). Either moves the
/// store to version 3.
pub(crate) const FORMAT_VERSION: u32 = 3;
/// The oldest layout this build still opens (and upgrades).
pub(crate) const FORMAT_VERSION_NO_GC_DUE: u32 = 1;
/// The layout before the change log, which this build opens and upgrades.
pub(crate) const FORMAT_VERSION_NO_CHANGES: u32 = 2;

/// Prefix of the `meta` keyspace.
pub(crate) const META: u8 = 0x01;
/// Prefix of the `rev-time` keyspace.
pub(crate) const REV_TIME: u8 = 0x02;
/// Prefix of the `by-resource` index.
pub(crate) const BY_RESOURCE: u8 = 0x03;
/// Prefix of the `by-subject` index.
pub(crate) const BY_SUBJECT: u8 = 0x04;
/// Prefix of the `schema` keyspace.
pub(crate) const SCHEMA: u8 = 0x05;

/// Prefix of the `staged` keyspace (bulk imports in progress).
pub(crate) const STAGED: u8 = 0x06;

/// Prefix of the `gc-due` keyspace: for each version that will become garbage, when. An entry
/// is `GC_DUE, DUE_DELETED, deleted (u64 BE), by-resource version key` for a deleted version
/// and `GC_DUE, DUE_EXPIRED, expiration (12 bytes, ordered), by-resource version key` for an
/// expiring one, with an empty value; garbage collection scans only the entries already due,
/// so its cost follows the garbage, not the store. An entry may outlive its version (a
/// version removed by the other entry, an import rolled back): the collector checks the
/// version before removing it.
pub(crate) const GC_DUE: u8 = 0x07;
const DUE_DELETED: u8 = 0x00;
const DUE_EXPIRED: u8 = 0x01;

/// Prefix of the `changes` keyspace (the change log).
pub(crate) const CHANGES: u8 = 0x08;
/// The marker of a revision's header in the `changes` keyspace.
const CHANGE_HEADER: u8 = 0x00;
/// The marker of a relationship change in the `changes` keyspace.
const CHANGE_ENTRY: u8 = 0x01;
/// The operation byte of a change entry: the relationship was created or replaced.
pub(crate) const CHANGE_TOUCH: u8 = 0x01;
/// The operation byte of a change entry: the relationship was deleted.
pub(crate) const CHANGE_DELETE: u8 = 0x02;
/// The operation byte of a change entry: the relationship's version ended without readers
/// seeing a deletion (it had expired). Watch skips it; nodes replaying the log close the
/// version, so their graphs keep the versions the database keeps.
pub(crate) const CHANGE_CLOSE: u8 = 0x03;

/// Meta key of the layout version (u32 BE).
pub(crate) const META_FORMAT: &str = "format";
/// Meta key of the store's unique id (UTF-8).
pub(crate) const META_ID: &str = "id";
/// Meta key of the head revision (u64 BE).
pub(crate) const META_HEAD: &str = "head";
/// Meta key of the GC horizon, the oldest readable revision (u64 BE).
pub(crate) const META_HORIZON: &str = "horizon";
/// Meta key of the first revision whose changes the log holds (u64 BE): 0 for a store made
/// with the change log, the head at the upgrade for an older one. Watches from before it (or
/// from before the GC horizon) cannot be served.
pub(crate) const META_LOG_START: &str = "log-start";
/// Meta key only ever deleted: the write probe of `Mvcc::check_writable` (never holds a value).
pub(crate) const META_PROBE: &str = "probe";
/// Meta key of the revision an import or a delete by filter is writing in chunks before it
/// commits (u64 BE); removed by the commit. A writer that finds it past the head knows a writer
/// died between chunks, and rolls its versions back before writing (shared datastores).
pub(crate) const META_PENDING: &str = "pending";

/// Component separator.
const SEP: u8 = 0x00;
/// The `deleted` revision of a version that has not been deleted.
pub(crate) const LIVE: u64 = u64::MAX;

/// Which relationship index a key belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Index {
    /// ordered by resource, then relation, then subject
    ByResource,
    /// ordered by subject, then resource type, relation, resource id
    BySubject,
}

impl Index {
    fn prefix(self) -> u8 {
        match self {
            Index::ByResource => BY_RESOURCE,
            Index::BySubject => BY_SUBJECT,
        }
    }
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

fn push(buf: &mut Vec<u8>, component: &str) {
    buf.extend_from_slice(component.as_bytes());
    buf.push(SEP);
}

fn be_u64(b: &[u8]) -> StoreResult<u64> {
    let arr: [u8; 8] = b.try_into().map_err(|_| corrupt("bad u64"))?;
    Ok(u64::from_be_bytes(arr))
}

/// Decodes a big-endian u64 value.
pub(crate) fn decode_u64(b: &[u8]) -> StoreResult<u64> {
    be_u64(b)
}

/// Decodes a big-endian u32 value.
pub(crate) fn decode_u32(b: &[u8]) -> StoreResult<u32> {
    let arr: [u8; 4] = b.try_into().map_err(|_| corrupt("bad u32"))?;
    Ok(u32::from_be_bytes(arr))
}

/// The key of a meta entry.
pub(crate) fn meta_key(name: &str) -> Vec<u8> {
    let mut k = vec![META];
    k.extend_from_slice(name.as_bytes());
    k
}

/// The key of a revision's commit time.
pub(crate) fn rev_time_key(rev: u64) -> Vec<u8> {
    let mut k = vec![REV_TIME];
    k.extend_from_slice(&rev.to_be_bytes());
    k
}

/// The revision of a `rev-time` key.
pub(crate) fn decode_rev_time_key(k: &[u8]) -> StoreResult<u64> {
    match k.split_first() {
        Some((&REV_TIME, rest)) => be_u64(rest),
        _ => Err(corrupt("bad rev-time key")),
    }
}

/// Encodes a timestamp as secs(i64 BE) nanos(u32 BE).
pub(crate) fn encode_time(t: Timestamp) -> Vec<u8> {
    let mut v = Vec::with_capacity(12);
    v.extend_from_slice(&t.seconds.to_be_bytes());
    v.extend_from_slice(&t.nanos.to_be_bytes());
    v
}

/// Decodes [`encode_time`].
pub(crate) fn decode_time(b: &[u8]) -> StoreResult<Timestamp> {
    let (s, n) = b
        .split_at_checked(8)
        .ok_or_else(|| corrupt("bad timestamp"))?;
    let s: [u8; 8] = s.try_into().map_err(|_| corrupt("bad timestamp"))?;
    Ok(Timestamp {
        seconds: i64::from_be_bytes(s),
        nanos: decode_u32(n)?,
    })
}

/// `t` as 12 bytes whose byte order is the order of time (negative seconds included).
fn ordered_time(t: Timestamp) -> [u8; 12] {
    let mut b = [0u8; 12];
    let flipped = u64::from_be_bytes(t.seconds.to_be_bytes()) ^ (1 << 63);
    b[..8].copy_from_slice(&flipped.to_be_bytes());
    b[8..].copy_from_slice(&t.nanos.to_be_bytes());
    b
}

/// The `gc-due` entry of a version deleted at `deleted`, whose by-resource key is `version`.
pub(crate) fn due_deleted_key(deleted: u64, version: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(10 + version.len());
    k.extend_from_slice(&[GC_DUE, DUE_DELETED]);
    k.extend_from_slice(&deleted.to_be_bytes());
    k.extend_from_slice(version);
    k
}

/// The `gc-due` entry of a version expiring at `at`, whose by-resource key is `version`.
pub(crate) fn due_expired_key(at: Timestamp, version: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(14 + version.len());
    k.extend_from_slice(&[GC_DUE, DUE_EXPIRED]);
    k.extend_from_slice(&ordered_time(at));
    k.extend_from_slice(version);
    k
}

/// The range of `gc-due` entries of versions deleted at or before `horizon`.
pub(crate) fn due_deleted_range(horizon: u64) -> (Vec<u8>, Vec<u8>) {
    let mut end = vec![GC_DUE, DUE_DELETED];
    end.extend_from_slice(&horizon.saturating_add(1).to_be_bytes());
    (vec![GC_DUE, DUE_DELETED], end)
}

/// The first `gc-due` entry of a version deleted at `deleted` or later: entries of versions
/// deleted at exactly `rev` lie in `[due_deleted_from(rev), due_deleted_from(rev + 1))`.
pub(crate) fn due_deleted_from(deleted: u64) -> Vec<u8> {
    let mut k = vec![GC_DUE, DUE_DELETED];
    k.extend_from_slice(&deleted.to_be_bytes());
    k
}

/// The range of `gc-due` entries of versions expiring at or before `cutoff`.
pub(crate) fn due_expired_range(cutoff: Timestamp) -> (Vec<u8>, Vec<u8>) {
    let mut end = vec![GC_DUE, DUE_EXPIRED];
    end.extend_from_slice(&ordered_time(cutoff));
    // After every entry at `cutoff` itself: their next byte is a version key's first byte.
    end.push(u8::MAX);
    (vec![GC_DUE, DUE_EXPIRED], end)
}

/// The by-resource version key a `gc-due` entry points at.
pub(crate) fn due_version_key(entry: &[u8]) -> StoreResult<&[u8]> {
    let skip = match entry.get(..2) {
        Some([GC_DUE, DUE_DELETED]) => 10,
        Some([GC_DUE, DUE_EXPIRED]) => 14,
        _ => return Err(corrupt("bad gc-due key")),
    };
    entry.get(skip..).ok_or_else(|| corrupt("bad gc-due key"))
}

/// The key of revision `rev`'s header in the change log.
pub(crate) fn change_header_key(rev: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(10);
    k.push(CHANGES);
    k.extend_from_slice(&rev.to_be_bytes());
    k.push(CHANGE_HEADER);
    k
}

/// The first key of revision `rev` in the change log: the log of revisions `a..b` lies in
/// `[changes_from(a), changes_from(b))`.
pub(crate) fn changes_from(rev: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(CHANGES);
    k.extend_from_slice(&rev.to_be_bytes());
    k
}

/// The key of the change of `key` at revision `rev`: one per tuple and revision.
pub(crate) fn change_entry_key(rev: u64, key: &RelationshipKey) -> Vec<u8> {
    let mut k = change_header_key(rev);
    if let Some(last) = k.last_mut() {
        *last = CHANGE_ENTRY;
    }
    k.extend_from_slice(&tuple_prefix(Index::ByResource, key));
    k
}

/// One record of the change log, decoded.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ChangeRecord {
    /// the header of a revision
    Header(ChangeHeader),
    /// a relationship change: [`CHANGE_TOUCH`], [`CHANGE_DELETE`] or [`CHANGE_CLOSE`], the
    /// relationship's key and its (new, or ended) version
    Entry(u8, RelationshipKey, VersionValue),
}

/// Decodes a change-log record: its revision and what it holds.
pub(crate) fn decode_change(k: &[u8], v: &[u8]) -> StoreResult<(u64, ChangeRecord)> {
    let bad = || corrupt("bad change-log key");
    let rest = match k.split_first() {
        Some((&CHANGES, rest)) => rest,
        _ => return Err(bad()),
    };
    let (rev, rest) = rest.split_at_checked(8).ok_or_else(bad)?;
    let rev = be_u64(rev)?;
    match rest.split_first() {
        Some((&CHANGE_HEADER, [])) => Ok((rev, ChangeRecord::Header(ChangeHeader::decode(v)?))),
        Some((&CHANGE_ENTRY, tuple)) => {
            // The tuple prefix with a zero revision appended is a version key.
            let mut version = tuple.to_vec();
            version.extend_from_slice(&(!0u64).to_be_bytes());
            let (key, _) = decode_version_key(Index::ByResource, &version)?;
            let (op, value) = v
                .split_first()
                .ok_or_else(|| corrupt("bad change-log entry"))?;
            if ![CHANGE_TOUCH, CHANGE_DELETE, CHANGE_CLOSE].contains(op) {
                return Err(corrupt("bad change-log operation"));
            }
            Ok((
                rev,
                ChangeRecord::Entry(*op, key, VersionValue::decode(value)?),
            ))
        }
        _ => Err(bad()),
    }
}

/// Encodes a change entry's value: the operation, then the version's value.
pub(crate) fn encode_change_entry(op: u8, value: &VersionValue) -> StoreResult<Vec<u8>> {
    let enc = value.encode()?;
    let mut v = Vec::with_capacity(1 + enc.len());
    v.push(op);
    v.extend_from_slice(&enc);
    Ok(v)
}

const HEADER_SCHEMA: u8 = 1;
const HEADER_METADATA: u8 = 2;

/// A revision's header in the change log: `flags(u8) [metadata JSON]`.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct ChangeHeader {
    /// the revision wrote the schema
    pub(crate) schema: bool,
    /// the transaction metadata its writer sent
    pub(crate) metadata: Option<Context>,
}

impl ChangeHeader {
    /// Encodes the header.
    pub(crate) fn encode(&self) -> StoreResult<Vec<u8>> {
        let mut flags = 0u8;
        if self.schema {
            flags |= HEADER_SCHEMA;
        }
        if self.metadata.is_some() {
            flags |= HEADER_METADATA;
        }
        let mut v = vec![flags];
        if let Some(m) = &self.metadata {
            serde_json::to_writer(&mut v, m)
                .map_err(|e| StoreError::Engine(format!("encoding transaction metadata: {e}")))?;
        }
        Ok(v)
    }

    /// Decodes [`ChangeHeader::encode`].
    pub(crate) fn decode(b: &[u8]) -> StoreResult<ChangeHeader> {
        let (flags, rest) = b
            .split_first()
            .ok_or_else(|| corrupt("bad change-log header"))?;
        let metadata = if flags & HEADER_METADATA != 0 {
            Some(
                serde_json::from_slice(rest)
                    .map_err(|e| StoreError::Corrupt(format!("bad transaction metadata: {e}")))?,
            )
        } else if rest.is_empty() {
            None
        } else {
            return Err(corrupt("bad change-log header"));
        };
        Ok(ChangeHeader {
            schema: flags & HEADER_SCHEMA != 0,
            metadata,
        })
    }
}

/// The key of the schema written at `rev`.
pub(crate) fn schema_key(rev: u64) -> Vec<u8> {
    let mut k = vec![SCHEMA];
    k.extend_from_slice(&(!rev).to_be_bytes());
    k
}

/// The first key of import `import`'s staged relationships.
pub(crate) fn staged_prefix(import: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(STAGED);
    k.extend_from_slice(&import.to_be_bytes());
    k
}

/// The staging key of `key` in import `import`: one per tuple, so staging a tuple twice lands
/// on the same key.
pub(crate) fn staged_key(import: u64, key: &RelationshipKey) -> Vec<u8> {
    let mut k = staged_prefix(import);
    k.extend_from_slice(&version_key(Index::ByResource, key, 0));
    k
}

/// The tuple of a staging key.
pub(crate) fn decode_staged_key(k: &[u8]) -> StoreResult<RelationshipKey> {
    let version = k
        .get(9..)
        .filter(|_| k.first() == Some(&STAGED))
        .ok_or_else(|| corrupt("bad staging key"))?;
    Ok(decode_version_key(Index::ByResource, version)?.0)
}

/// The revision of a schema key.
pub(crate) fn decode_schema_key(k: &[u8]) -> StoreResult<u64> {
    match k.split_first() {
        Some((&SCHEMA, rest)) => Ok(!be_u64(rest)?),
        _ => Err(corrupt("bad schema key")),
    }
}

/// The key prefix shared by every version of one tuple in `index`, ending with the separator.
pub(crate) fn tuple_prefix(index: Index, key: &RelationshipKey) -> Vec<u8> {
    let srel = key.subject.relation.as_deref().unwrap_or("");
    let mut k = Vec::with_capacity(
        8 + key.resource.object_type.len()
            + key.resource.object_id.len()
            + key.relation.len()
            + key.subject.object.object_type.len()
            + key.subject.object.object_id.len()
            + srel.len()
            + 8,
    );
    k.push(index.prefix());
    match index {
        Index::ByResource => {
            push(&mut k, &key.resource.object_type);
            push(&mut k, &key.resource.object_id);
            push(&mut k, &key.relation);
            push(&mut k, &key.subject.object.object_type);
            push(&mut k, &key.subject.object.object_id);
            push(&mut k, srel);
        }
        Index::BySubject => {
            push(&mut k, &key.subject.object.object_type);
            push(&mut k, &key.subject.object.object_id);
            push(&mut k, srel);
            push(&mut k, &key.resource.object_type);
            push(&mut k, &key.relation);
            push(&mut k, &key.resource.object_id);
        }
    }
    k
}

/// The key of the version of `key` created at `created`, in `index`.
pub(crate) fn version_key(index: Index, key: &RelationshipKey, created: u64) -> Vec<u8> {
    let mut k = tuple_prefix(index, key);
    k.extend_from_slice(&(!created).to_be_bytes());
    k
}

/// The smallest key after every version of `key` in `index` (and before any other tuple's).
pub(crate) fn after_tuple(index: Index, key: &RelationshipKey) -> Vec<u8> {
    let mut k = tuple_prefix(index, key);
    // INVARIANT: `tuple_prefix` ends with SEP (0x00); 0x01 sorts after all `SEP + rev` suffixes
    // and before any id byte (ids are printable ASCII), so this is the tuple's upper bound.
    if let Some(last) = k.last_mut() {
        *last = SEP + 1;
    }
    k
}

/// The part of a version key that names the tuple (everything but the revision).
pub(crate) fn tuple_part(k: &[u8]) -> &[u8] {
    k.get(..k.len().saturating_sub(8)).unwrap_or_default()
}

/// The creation revision of a version key.
pub(crate) fn created_of(k: &[u8]) -> StoreResult<u64> {
    let start = k
        .len()
        .checked_sub(8)
        .ok_or_else(|| corrupt("short relationship key"))?;
    Ok(!be_u64(k.get(start..).unwrap_or_default())?)
}

/// The six names of a version key of `index`, in the index's order, borrowed from the key,
/// and its creation revision.
pub(crate) fn version_key_parts(index: Index, k: &[u8]) -> StoreResult<([&str; 6], u64)> {
    let created = created_of(k)?;
    let body = match tuple_part(k).split_first() {
        Some((p, body)) if *p == index.prefix() => body,
        _ => return Err(corrupt("relationship key with a wrong prefix")),
    };
    let body = body
        .strip_suffix(&[SEP])
        .ok_or_else(|| corrupt("relationship key without separator"))?;
    let mut parts = body.split(|b| *b == SEP);
    let mut next = || {
        parts
            .next()
            .ok_or_else(|| corrupt("relationship key with too few components"))
            .and_then(|b| std::str::from_utf8(b).map_err(|_| corrupt("non-UTF-8 relationship key")))
    };
    let names = [next()?, next()?, next()?, next()?, next()?, next()?];
    if parts.next().is_some() {
        return Err(corrupt("relationship key with too many components"));
    }
    Ok((names, created))
}

/// Decodes a version key of `index` into its tuple and creation revision.
pub(crate) fn decode_version_key(index: Index, k: &[u8]) -> StoreResult<(RelationshipKey, u64)> {
    let (names, created) = version_key_parts(index, k)?;
    let [a, b, c, d, e, f] = names.map(str::to_string);
    let key = match index {
        Index::ByResource => RelationshipKey {
            resource: ObjectRef {
                object_type: a,
                object_id: b,
            },
            relation: c,
            subject: SubjectRef {
                object: ObjectRef {
                    object_type: d,
                    object_id: e,
                },
                relation: (!f.is_empty()).then_some(f),
            },
        },
        Index::BySubject => RelationshipKey {
            resource: ObjectRef {
                object_type: d,
                object_id: f,
            },
            relation: e,
            subject: SubjectRef {
                object: ObjectRef {
                    object_type: a,
                    object_id: b,
                },
                relation: (!c.is_empty()).then_some(c),
            },
        },
    };
    Ok((key, created))
}

/// The smallest byte string greater than every string starting with `prefix`, or `None` if
/// there is none (all bytes `0xFF`).
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

const FLAG_EXPIRES: u8 = 1;
const FLAG_CAVEAT: u8 = 2;

/// One version of a relationship, as stored in both indexes:
/// `created(u64 BE) deleted(u64 BE) flags(u8) [secs(i64 BE) nanos(u32 BE)]
/// [name_len(u16 BE) name context-JSON]`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct VersionValue {
    /// the revision that wrote this version
    pub(crate) created: u64,
    /// the revision that deleted or replaced it, [`LIVE`] while current
    pub(crate) deleted: u64,
    /// the caveat written with it
    pub(crate) caveat: Option<Caveat>,
    /// when it expires
    pub(crate) expires_at: Option<Timestamp>,
}

impl VersionValue {
    /// Encodes the value.
    pub(crate) fn encode(&self) -> StoreResult<Vec<u8>> {
        let mut v = Vec::with_capacity(32);
        v.extend_from_slice(&self.created.to_be_bytes());
        v.extend_from_slice(&self.deleted.to_be_bytes());
        let flags = if self.expires_at.is_some() {
            FLAG_EXPIRES
        } else {
            0
        } | if self.caveat.is_some() {
            FLAG_CAVEAT
        } else {
            0
        };
        v.push(flags);
        if let Some(t) = self.expires_at {
            v.extend_from_slice(&encode_time(t));
        }
        if let Some(c) = &self.caveat {
            let len = u16::try_from(c.name.len())
                .map_err(|_| StoreError::Engine("caveat name too long".to_string()))?;
            v.extend_from_slice(&len.to_be_bytes());
            v.extend_from_slice(c.name.as_bytes());
            serde_json::to_writer(&mut v, &c.context)
                .map_err(|e| StoreError::Engine(format!("encoding caveat context: {e}")))?;
        }
        Ok(v)
    }

    /// Decodes [`VersionValue::encode`].
    pub(crate) fn decode(b: &[u8]) -> StoreResult<VersionValue> {
        let bad = || corrupt("bad relationship value");
        let (created, rest) = b.split_at_checked(8).ok_or_else(bad)?;
        let (deleted, rest) = rest.split_at_checked(8).ok_or_else(bad)?;
        let (flags, mut rest) = rest.split_first().ok_or_else(bad)?;
        let expires_at = if flags & FLAG_EXPIRES != 0 {
            let (t, r) = rest.split_at_checked(12).ok_or_else(bad)?;
            rest = r;
            Some(decode_time(t)?)
        } else {
            None
        };
        let caveat = if flags & FLAG_CAVEAT != 0 {
            let (len, r) = rest.split_at_checked(2).ok_or_else(bad)?;
            let len = u16::from_be_bytes(len.try_into().map_err(|_| bad())?);
            let (name, ctx) = r.split_at_checked(usize::from(len)).ok_or_else(bad)?;
            rest = &[];
            let context: Context = serde_json::from_slice(ctx)
                .map_err(|e| StoreError::Corrupt(format!("bad caveat context: {e}")))?;
            Some(Caveat {
                name: String::from_utf8(name.to_vec()).map_err(|_| bad())?,
                context,
            })
        } else {
            None
        };
        if !rest.is_empty() {
            return Err(bad());
        }
        Ok(VersionValue {
            created: be_u64(created)?,
            deleted: be_u64(deleted)?,
            caveat,
            expires_at,
        })
    }
}

/// The `deleted` revision of an encoded value, without decoding the rest.
pub(crate) fn peek_deleted(b: &[u8]) -> StoreResult<u64> {
    be_u64(
        b.get(8..16)
            .ok_or_else(|| corrupt("bad relationship value"))?,
    )
}

/// The expiration of an encoded value, without decoding the caveat.
pub(crate) fn peek_expires(b: &[u8]) -> StoreResult<Option<Timestamp>> {
    let flags = b.get(16).ok_or_else(|| corrupt("bad relationship value"))?;
    if flags & FLAG_EXPIRES == 0 {
        return Ok(None);
    }
    decode_time(
        b.get(17..29)
            .ok_or_else(|| corrupt("bad relationship value"))?,
    )
    .map(Some)
}

/// A scan plan: the index and the key prefix every match starts with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ScanPlan {
    /// the index to scan
    pub(crate) index: Index,
    /// every matching key starts with this
    pub(crate) prefix: Vec<u8>,
}

/// The fixed prefix of `filter` in `by-resource`, and how selective it is (2 per exact
/// component, 1 for an id prefix).
fn resource_prefix(filter: &RelationshipFilter) -> (Vec<u8>, u32) {
    let mut p = vec![BY_RESOURCE];
    let Some(rt) = &filter.resource_type else {
        return (p, 0);
    };
    push(&mut p, rt);
    match (&filter.resource_id, &filter.resource_id_prefix) {
        (Some(id), _) => push(&mut p, id),
        (None, Some(pre)) => {
            p.extend_from_slice(pre.as_bytes());
            return (p, 3);
        }
        (None, None) => return (p, 2),
    }
    let Some(rel) = &filter.relation else {
        return (p, 4);
    };
    push(&mut p, rel);
    let Some(sf) = &filter.subject else {
        return (p, 6);
    };
    push(&mut p, &sf.subject_type);
    let Some(sid) = &sf.subject_id else {
        return (p, 8);
    };
    push(&mut p, sid);
    match &sf.relation {
        SubjectRelationFilter::Any => return (p, 10),
        SubjectRelationFilter::Ellipsis => push(&mut p, ""),
        SubjectRelationFilter::Relation(r) => push(&mut p, r),
    }
    (p, 12)
}

/// The fixed prefix of `filter` in `by-subject`, and how selective it is.
fn subject_prefix(filter: &RelationshipFilter) -> (Vec<u8>, u32) {
    let mut p = vec![BY_SUBJECT];
    let Some(sf) = &filter.subject else {
        return (p, 0);
    };
    push(&mut p, &sf.subject_type);
    let Some(sid) = &sf.subject_id else {
        return (p, 2);
    };
    push(&mut p, sid);
    match &sf.relation {
        SubjectRelationFilter::Any => return (p, 4),
        SubjectRelationFilter::Ellipsis => push(&mut p, ""),
        SubjectRelationFilter::Relation(r) => push(&mut p, r),
    }
    let Some(rt) = &filter.resource_type else {
        return (p, 6);
    };
    push(&mut p, rt);
    let Some(rel) = &filter.relation else {
        return (p, 8);
    };
    push(&mut p, rel);
    match (&filter.resource_id, &filter.resource_id_prefix) {
        (Some(id), _) => push(&mut p, id),
        (None, Some(pre)) => {
            p.extend_from_slice(pre.as_bytes());
            return (p, 11);
        }
        (None, None) => return (p, 10),
    }
    (p, 12)
}

/// Chooses the index for `filter`: the one whose fixed key prefix is longer (more selective);
/// `by-resource` on a tie. The choice depends only on which fields are set, so the order of
/// results (and paging) is stable for a filter shape.
pub(crate) fn plan(filter: &RelationshipFilter) -> ScanPlan {
    let (rp, rs) = resource_prefix(filter);
    let (sp, ss) = subject_prefix(filter);
    if ss > rs {
        ScanPlan {
            index: Index::BySubject,
            prefix: sp,
        }
    } else {
        ScanPlan {
            index: Index::ByResource,
            prefix: rp,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{SubjectFilter, parse_relationship};

    fn key(s: &str) -> RelationshipKey {
        parse_relationship(s).unwrap().key()
    }

    #[test]
    fn version_keys_round_trip_in_both_indexes() {
        for s in [
            "document:plan#viewer@user:ann",
            "document:plan#viewer@group:eng#member",
            "tenant/doc:a/b|c#owner@user:*",
        ] {
            let k = key(s);
            for index in [Index::ByResource, Index::BySubject] {
                for rev in [1, 255, 256, u64::MAX - 1] {
                    let enc = version_key(index, &k, rev);
                    assert_eq!(decode_version_key(index, &enc).unwrap(), (k.clone(), rev));
                    assert!(enc.starts_with(&tuple_prefix(index, &k)));
                    assert!(enc < after_tuple(index, &k));
                }
            }
        }
    }

    #[test]
    fn newest_version_sorts_first_and_tuples_sort_componentwise() {
        let k = key("document:a#viewer@user:ann");
        assert!(version_key(Index::ByResource, &k, 9) < version_key(Index::ByResource, &k, 3));
        let a = key("document:a#viewer@user:ann");
        let ab = key("document:ab#viewer@user:ann");
        let b = key("document:b#viewer@user:ann");
        let set = key("document:a#viewer@user:ann#member");
        assert!(after_tuple(Index::ByResource, &a) < version_key(Index::ByResource, &ab, 1));
        assert!(after_tuple(Index::ByResource, &a) < version_key(Index::ByResource, &set, 1));
        assert!(version_key(Index::ByResource, &ab, 1) < version_key(Index::ByResource, &b, 1));
    }

    #[test]
    fn frozen_key_bytes() {
        let k = key("doc:a#viewer@user:ann");
        assert_eq!(
            version_key(Index::ByResource, &k, 1),
            b"\x03doc\0a\0viewer\0user\0ann\0\0\xff\xff\xff\xff\xff\xff\xff\xfe".to_vec()
        );
        assert_eq!(
            version_key(Index::BySubject, &k, 1),
            b"\x04user\0ann\0\0doc\0viewer\0a\0\xff\xff\xff\xff\xff\xff\xff\xfe".to_vec()
        );
        assert_eq!(
            schema_key(2),
            b"\x05\xff\xff\xff\xff\xff\xff\xff\xfd".to_vec()
        );
    }

    #[test]
    fn values_round_trip() {
        let r = parse_relationship(
            r#"document:d#viewer@user:tom[cav:{"x":[1,2]}][expiration:2030-01-01T00:00:00Z]"#,
        )
        .unwrap();
        for v in [
            VersionValue {
                created: 3,
                deleted: LIVE,
                caveat: None,
                expires_at: None,
            },
            VersionValue {
                created: 3,
                deleted: 7,
                caveat: r.caveat.clone(),
                expires_at: r.expires_at,
            },
            VersionValue {
                created: 3,
                deleted: 7,
                caveat: r.caveat.clone(),
                expires_at: None,
            },
        ] {
            let enc = v.encode().unwrap();
            assert_eq!(VersionValue::decode(&enc).unwrap(), v);
            assert_eq!(peek_deleted(&enc).unwrap(), v.deleted);
            assert_eq!(peek_expires(&enc).unwrap(), v.expires_at);
        }
        assert!(VersionValue::decode(b"short").is_err());
        assert!(decode_version_key(Index::ByResource, b"\x03a\0b").is_err());
    }

    #[test]
    fn plans_pick_the_more_selective_index() {
        let lookup = RelationshipFilter {
            resource_type: Some("document".into()),
            relation: Some("viewer".into()),
            subject: Some(SubjectFilter {
                subject_type: "user".into(),
                subject_id: Some("ann".into()),
                relation: SubjectRelationFilter::Ellipsis,
            }),
            ..RelationshipFilter::default()
        };
        let p = plan(&lookup);
        assert_eq!(p.index, Index::BySubject);
        assert_eq!(p.prefix, b"\x04user\0ann\0\0document\0viewer\0".to_vec());
        let subjects = RelationshipFilter {
            resource_type: Some("document".into()),
            resource_id: Some("x".into()),
            relation: Some("viewer".into()),
            ..RelationshipFilter::default()
        };
        let p = plan(&subjects);
        assert_eq!(p.index, Index::ByResource);
        assert_eq!(p.prefix, b"\x03document\0x\0viewer\0".to_vec());
        assert_eq!(prefix_end(&[3, 0xFF]), Some(vec![4]));
        assert_eq!(prefix_end(&[0xFF]), None);
    }
}
