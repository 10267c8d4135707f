//! Relationship tuples `resource#relation@subject`: identity key, filters, canonical text form.
//!
//! The identity key of a tuple, the filters that select tuples, and the canonical text form
//! `type:id#rel@type:id[#rel][caveat:{json}][expiration:RFC3339]`.

use std::fmt;

use serde_json::{Map, Value};

/// Caveat context: a JSON object (`google.protobuf.Struct` on the wire).
pub type Context = Map<String, Value>;

/// A point in time as seconds and nanoseconds since the Unix epoch (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    /// whole seconds since 1970-01-01T00:00:00Z
    pub seconds: i64,
    /// nanoseconds within the second, 0..1e9
    pub nanos: u32,
}

impl Timestamp {
    /// The current wall-clock time.
    pub fn now() -> Timestamp {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp {
            seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            nanos: d.subsec_nanos(),
        }
    }
}

/// `type:id`, a reference to one object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    /// the object's definition name, e.g. `document`
    pub object_type: String,
    /// the object's id, e.g. `plan`; `*` is the public wildcard (subjects only)
    pub object_id: String,
}

impl ObjectRef {
    /// Builds a reference from its parts.
    pub fn new(object_type: impl Into<String>, object_id: impl Into<String>) -> ObjectRef {
        ObjectRef {
            object_type: object_type.into(),
            object_id: object_id.into(),
        }
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.object_type, self.object_id)
    }
}

/// A subject: an object, or a subject set `type:id#relation` meaning "everyone in that relation".
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SubjectRef {
    /// the subject object
    pub object: ObjectRef,
    /// `None` is the plain object (SpiceDB's `...` ellipsis); `Some(r)` the subject set `object#r`
    pub relation: Option<String>,
}

impl SubjectRef {
    /// A plain subject `type:id`.
    pub fn object(object_type: impl Into<String>, object_id: impl Into<String>) -> SubjectRef {
        SubjectRef {
            object: ObjectRef::new(object_type, object_id),
            relation: None,
        }
    }

    /// Is this the public wildcard `type:*`?
    pub fn is_wildcard(&self) -> bool {
        self.object.object_id == "*"
    }
}

impl fmt::Display for SubjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.relation {
            Some(r) => write!(f, "{}#{}", self.object, r),
            None => write!(f, "{}", self.object),
        }
    }
}

/// A caveat attached to a relationship: its name and the context written with it.
#[derive(Debug, Clone, PartialEq)]
pub struct Caveat {
    /// the caveat definition's name
    pub name: String,
    /// context values fixed on the relationship; they win over request context
    pub context: Context,
}

/// The identity of a relationship: two relationships with the same key are the same tuple,
/// whatever caveat or expiration they carry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RelationshipKey {
    /// the resource
    pub resource: ObjectRef,
    /// the relation on the resource
    pub relation: String,
    /// the subject
    pub subject: SubjectRef,
}

impl fmt::Display for RelationshipKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}@{}", self.resource, self.relation, self.subject)
    }
}

/// A relationship tuple with its optional caveat and expiration.
#[derive(Debug, Clone, PartialEq)]
pub struct Relationship {
    /// the resource
    pub resource: ObjectRef,
    /// the relation on the resource
    pub relation: String,
    /// the subject
    pub subject: SubjectRef,
    /// optional caveat that conditions the relationship
    pub caveat: Option<Caveat>,
    /// optional instant from which the relationship no longer exists
    pub expires_at: Option<Timestamp>,
}

impl Relationship {
    /// A plain relationship without caveat or expiration.
    pub fn new(resource: ObjectRef, relation: impl Into<String>, subject: SubjectRef) -> Self {
        Relationship {
            resource,
            relation: relation.into(),
            subject,
            caveat: None,
            expires_at: None,
        }
    }

    /// The tuple's identity.
    pub fn key(&self) -> RelationshipKey {
        RelationshipKey {
            resource: self.resource.clone(),
            relation: self.relation.clone(),
            subject: self.subject.clone(),
        }
    }

    /// Has the relationship expired at `now`?
    pub fn is_expired_at(&self, now: Timestamp) -> bool {
        self.expires_at.is_some_and(|e| e <= now)
    }
}

impl fmt::Display for Relationship {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}@{}", self.resource, self.relation, self.subject)?;
        if let Some(c) = &self.caveat {
            if c.context.is_empty() {
                write!(f, "[{}]", c.name)?;
            } else {
                write!(f, "[{}:{}]", c.name, Value::Object(c.context.clone()))?;
            }
        }
        if let Some(e) = &self.expires_at {
            write!(f, "[expiration:{e}]")?;
        }
        Ok(())
    }
}

impl fmt::Display for Timestamp {
    /// RFC 3339 in UTC, `YYYY-MM-DDTHH:MM:SS[.frac]Z`, the fraction only when non-zero and
    /// without trailing zeros; a year outside 0..=9999 is written with as many digits as it
    /// needs (and a `-` before it), which [`parse_rfc3339`] reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let days = self.seconds.div_euclid(86_400);
        let secs = self.seconds.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        if y < 0 {
            write!(f, "-{:04}", y.unsigned_abs())?;
        } else {
            write!(f, "{y:04}")?;
        }
        write!(
            f,
            "-{m:02}-{d:02}T{:02}:{:02}:{:02}",
            secs / 3600,
            secs % 3600 / 60,
            secs % 60
        )?;
        if self.nanos != 0 {
            let frac = format!("{:09}", self.nanos);
            write!(f, ".{}", frac.trim_end_matches('0'))?;
        }
        f.write_str("Z")
    }
}

/// How a [`SubjectFilter`] constrains the subject's relation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SubjectRelationFilter {
    /// any relation, or none
    Any,
    /// only plain subjects (no relation, the `...` ellipsis)
    Ellipsis,
    /// only subject sets with exactly this relation
    Relation(String),
}

/// Selects relationships by subject.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SubjectFilter {
    /// subject type (required)
    pub subject_type: String,
    /// subject id, if constrained
    pub subject_id: Option<String>,
    /// subject relation constraint
    pub relation: SubjectRelationFilter,
}

impl SubjectFilter {
    /// Does `s` pass this filter?
    pub fn matches(&self, s: &SubjectRef) -> bool {
        s.object.object_type == self.subject_type
            && self
                .subject_id
                .as_ref()
                .is_none_or(|id| *id == s.object.object_id)
            && match &self.relation {
                SubjectRelationFilter::Any => true,
                SubjectRelationFilter::Ellipsis => s.relation.is_none(),
                SubjectRelationFilter::Relation(r) => s.relation.as_deref() == Some(r.as_str()),
            }
    }
}

/// Selects relationships; every set field must match. An all-empty filter is refused by the API.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct RelationshipFilter {
    /// resource type, if constrained
    pub resource_type: Option<String>,
    /// exact resource id, if constrained
    pub resource_id: Option<String>,
    /// resource id prefix, if constrained (never together with `resource_id`)
    pub resource_id_prefix: Option<String>,
    /// relation, if constrained
    pub relation: Option<String>,
    /// subject constraint
    pub subject: Option<SubjectFilter>,
}

impl RelationshipFilter {
    /// Does `key` pass this filter?
    pub fn matches(&self, key: &RelationshipKey) -> bool {
        self.resource_type
            .as_ref()
            .is_none_or(|t| *t == key.resource.object_type)
            && self
                .resource_id
                .as_ref()
                .is_none_or(|id| *id == key.resource.object_id)
            && self
                .resource_id_prefix
                .as_ref()
                .is_none_or(|p| key.resource.object_id.starts_with(p.as_str()))
            && self.relation.as_ref().is_none_or(|r| *r == key.relation)
            && self
                .subject
                .as_ref()
                .is_none_or(|s| s.matches(&key.subject))
    }

    /// Does `rel` pass this filter?
    pub fn matches_relationship(&self, rel: &Relationship) -> bool {
        self.resource_type
            .as_ref()
            .is_none_or(|t| *t == rel.resource.object_type)
            && self
                .resource_id
                .as_ref()
                .is_none_or(|id| *id == rel.resource.object_id)
            && self
                .resource_id_prefix
                .as_ref()
                .is_none_or(|p| rel.resource.object_id.starts_with(p.as_str()))
            && self.relation.as_ref().is_none_or(|r| *r == rel.relation)
            && self
                .subject
                .as_ref()
                .is_none_or(|s| s.matches(&rel.subject))
    }

    /// Is nothing constrained?
    pub fn is_empty(&self) -> bool {
        self.resource_type.is_none()
            && self.resource_id.is_none()
            && self.resource_id_prefix.is_none()
            && self.relation.is_none()
            && self.subject.is_none()
    }
}

/// Which caveat a relationship must carry to be counted by an [`OrphanCheck`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CaveatMatch {
    /// any caveat or none
    Any,
    /// only relationships carrying this caveat
    Named(String),
    /// only relationships without a caveat
    Uncaveated,
}

impl CaveatMatch {
    /// Does `rel`'s caveat satisfy this match?
    pub fn matches(&self, rel: &Relationship) -> bool {
        match self {
            CaveatMatch::Any => true,
            CaveatMatch::Named(n) => rel.caveat.as_ref().is_some_and(|c| c.name == *n),
            CaveatMatch::Uncaveated => rel.caveat.is_none(),
        }
    }
}

/// A guard of a schema change: no live relationship may match `filter` and `caveat`, else the
/// change would orphan it. `description` says what the change removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrphanCheck {
    /// the relationships that would be orphaned
    pub filter: RelationshipFilter,
    /// the caveat they must carry to count
    pub caveat: CaveatMatch,
    /// SpiceDB's wording of what is removed, e.g. "cannot delete relation `x` in object definition `y`, as at least one relationship exists under it"
    pub description: String,
}

/// A malformed relationship string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid relationship `{text}`: {reason}")]
pub struct ParseRelationshipError {
    /// the input
    pub text: String,
    /// what is wrong with it
    pub reason: String,
}

fn parse_object(s: &str, text: &str) -> Result<ObjectRef, ParseRelationshipError> {
    let (t, id) = s.split_once(':').ok_or_else(|| ParseRelationshipError {
        text: text.to_string(),
        reason: format!("`{s}` is not `type:id`"),
    })?;
    Ok(ObjectRef::new(t, id))
}

/// Parses the text form used by YAML test cases:
/// `document:d#viewer@user:tom[caveat_name:{"x":1}][expiration:2030-01-01T00:00:00Z]`.
/// Identifiers are not validated here; the expiration accepts RFC 3339 in UTC (`Z`) only.
pub fn parse_relationship(text: &str) -> Result<Relationship, ParseRelationshipError> {
    let err = |reason: &str| ParseRelationshipError {
        text: text.to_string(),
        reason: reason.to_string(),
    };
    let trimmed = text.trim();
    let (core, mut rest) = match trimmed.find('[') {
        Some(i) => (
            trimmed.get(..i).unwrap_or_default(),
            trimmed.get(i..).unwrap_or_default(),
        ),
        None => (trimmed, ""),
    };
    let (res_rel, subject) = core.split_once('@').ok_or_else(|| err("missing `@`"))?;
    let (res, relation) = res_rel
        .split_once('#')
        .ok_or_else(|| err("missing `#relation`"))?;
    let resource = parse_object(res, text)?;
    let (subj_obj, subj_rel) = match subject.split_once('#') {
        Some((o, r)) => (
            o,
            if r == "..." {
                None
            } else {
                Some(r.to_string())
            },
        ),
        None => (subject, None),
    };
    let mut rel = Relationship::new(
        resource,
        relation,
        SubjectRef {
            object: parse_object(subj_obj, text)?,
            relation: subj_rel,
        },
    );
    while !rest.is_empty() {
        let inner_end = rest.find(']').ok_or_else(|| err("unclosed `[`"))?;
        // A JSON context may itself contain `]`: take the longest bracket whose content parses.
        let mut end = inner_end;
        let mut chosen = None;
        loop {
            let inner = rest.get(1..end).unwrap_or_default();
            if let Some(ts) = inner.strip_prefix("expiration:") {
                chosen = Some(Bracket::Expiration(
                    parse_rfc3339(ts).ok_or_else(|| err("bad expiration"))?,
                ));
                break;
            }
            match inner.split_once(':') {
                None => {
                    chosen = Some(Bracket::Caveat(inner.to_string(), Context::new()));
                    break;
                }
                Some((name, json)) => {
                    if let Ok(Value::Object(m)) = serde_json::from_str::<Value>(json) {
                        chosen = Some(Bracket::Caveat(name.to_string(), m));
                        break;
                    }
                }
            }
            match rest.get(end + 1..).and_then(|r| r.find(']')) {
                Some(next) => end = end + 1 + next,
                None => break,
            }
        }
        match chosen {
            Some(Bracket::Expiration(ts)) => rel.expires_at = Some(ts),
            Some(Bracket::Caveat(name, context)) => rel.caveat = Some(Caveat { name, context }),
            None => return Err(err("bad caveat context")),
        }
        rest = rest.get(end + 1..).unwrap_or_default();
    }
    Ok(rel)
}

enum Bracket {
    Expiration(Timestamp),
    Caveat(String, Context),
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.frac]Z` (or `+00:00` for `Z`); a year of more than four digits
/// or with a leading `-` is read as [`Timestamp`]'s `Display` writes it. `None` when malformed or
/// outside the range of [`Timestamp`].
pub fn parse_rfc3339(s: &str) -> Option<Timestamp> {
    let s = s.strip_suffix('Z').or_else(|| s.strip_suffix("+00:00"))?;
    let (date, time) = s.split_once('T')?;
    let (negative, date) = match date.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, date),
    };
    let mut d = date.split('-');
    let y = digits::<i64>(d.next()?)?;
    let y = if negative { -y } else { y };
    let m = digits::<u32>(d.next()?)?;
    let day = digits::<u32>(d.next()?)?;
    if d.next().is_some() {
        return None;
    }
    let (hms, frac) = match time.split_once('.') {
        Some((a, b)) => (a, Some(b)),
        None => (time, None),
    };
    let mut t = hms.split(':');
    let hh = digits::<i64>(t.next()?)?;
    let mm = digits::<i64>(t.next()?)?;
    let ss = digits::<i64>(t.next()?)?;
    if t.next().is_some()
        || !(1..=12).contains(&m)
        || !(1..=31).contains(&day)
        || hh > 23
        || mm > 59
        || ss > 60
    {
        return None;
    }
    let nanos = match frac {
        None => 0,
        Some(frac) => {
            // digits beyond the nanosecond are dropped
            if !frac.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let kept = frac.get(..frac.len().min(9))?;
            let n = digits::<u32>(kept)?;
            n * 10u32.pow(9 - u32::try_from(kept.len()).ok()?)
        }
    };
    let days = days_from_civil(i128::from(y), m, day);
    let seconds = days * 86_400 + i128::from(hh * 3600 + mm * 60 + ss);
    Some(Timestamp {
        seconds: i64::try_from(seconds).ok()?,
        nanos,
    })
}

/// A non-empty run of ASCII digits (no sign, no spaces) as a number.
fn digits<T: std::str::FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i128, m: u32, d: u32) -> i128 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i128::from(m);
    let d = i128::from(d);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The proleptic Gregorian date `(year, month, day)` of a day count since 1970-01-01, the
/// inverse of [`days_from_civil`] (Howard Hinnant's algorithm). Any `i64` seconds' day count
/// fits without overflow.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // 0..=146_096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // 0..=399
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // 0..=365
    let mp = (5 * doy + 2) / 153; // 0..=11
    let d = doy - (153 * mp + 2) / 5 + 1; // 1..=31
    let m = if mp < 10 { mp + 3 } else { mp - 9 }; // 1..=12
    let y = yoe + era * 400 + i64::from(m <= 2);
    // both are in range by construction; the fallbacks cannot be taken
    (
        y,
        u32::try_from(m).unwrap_or(1),
        u32::try_from(d).unwrap_or(1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_subject_sets() {
        let r = parse_relationship("document:plan#viewer@user:ann").unwrap();
        assert_eq!(r.to_string(), "document:plan#viewer@user:ann");
        let r = parse_relationship("document:plan#viewer@group:eng#member").unwrap();
        assert_eq!(r.subject.relation.as_deref(), Some("member"));
        let r = parse_relationship("document:plan#viewer@group:eng#...").unwrap();
        assert_eq!(r.subject.relation, None);
        assert!(parse_relationship("document:plan@user:ann").is_err());
    }

    #[test]
    fn parses_caveat_and_expiration() {
        let r = parse_relationship(
            r#"document:d#viewer@user:tom[some_caveat:{"x":[1,2],"y":"]"}][expiration:2323-12-01T00:00:00Z]"#,
        )
        .unwrap();
        let c = r.caveat.unwrap();
        assert_eq!(c.name, "some_caveat");
        assert_eq!(c.context["y"], "]");
        assert_eq!(r.expires_at.unwrap().seconds, 11_168_409_600);
        let r = parse_relationship("document:d#viewer@user:tom[cav]").unwrap();
        assert_eq!(r.caveat.unwrap().name, "cav");
    }

    #[test]
    fn rfc3339() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z").unwrap().seconds, 0);
        assert_eq!(
            parse_rfc3339("2000-03-01T00:00:01.5Z").unwrap().nanos,
            500_000_000
        );
        assert_eq!(
            parse_rfc3339("2000-03-01T00:00:01Z").unwrap().seconds,
            951_868_801
        );
        assert!(parse_rfc3339("2000-13-01T00:00:00Z").is_none());
        assert!(parse_rfc3339("2000-01-01T00:00:+1Z").is_none());
        assert!(parse_rfc3339("99999999999999999999-01-01T00:00:00Z").is_none());
    }

    #[test]
    fn timestamps_print_as_rfc3339_utc() {
        let ts = |seconds, nanos| Timestamp { seconds, nanos }.to_string();
        assert_eq!(ts(0, 0), "1970-01-01T00:00:00Z");
        assert_eq!(ts(951_868_801, 500_000_000), "2000-03-01T00:00:01.5Z");
        assert_eq!(ts(11_168_409_600, 0), "2323-12-01T00:00:00Z");
        assert_eq!(ts(-1, 1), "1969-12-31T23:59:59.000000001Z");
        assert_eq!(ts(-62_135_596_800, 0), "0001-01-01T00:00:00Z");
        assert_eq!(ts(253_402_300_799, 0), "9999-12-31T23:59:59Z");
        for seconds in [
            i64::MIN,
            i64::MIN + 1,
            -62_135_596_801,
            -86_401,
            -1,
            0,
            1,
            86_399,
            86_400,
            951_868_800,
            253_402_300_800,
            i64::MAX,
        ] {
            for nanos in [0, 1, 120_000_000, 999_999_999] {
                let t = Timestamp { seconds, nanos };
                assert_eq!(parse_rfc3339(&t.to_string()), Some(t), "{t}");
            }
        }
    }

    #[test]
    fn context_floats_round_trip_in_the_text_form() {
        // serde_json reads this back bit for bit only with its `float_roundtrip` feature
        let text = r#"aaa:b#aaa@aaa:a[aaa:{"a":-2.4853452919763235e-142}]"#;
        let r = parse_relationship(text).unwrap();
        assert_eq!(parse_relationship(&r.to_string()).unwrap(), r);
    }

    #[test]
    fn expiration_round_trips_in_the_text_form() {
        let text = r#"document:d#viewer@user:tom[c:{"x":0.1}][expiration:2030-01-01T00:00:00.25Z]"#;
        let r = parse_relationship(text).unwrap();
        assert_eq!(r.to_string(), text);
    }
}
