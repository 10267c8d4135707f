//! Identifier rules: the regexes and lengths `authzed.api.v1` puts on names and object ids.
//!
//! Type names, relation names and object ids are checked by hand (no regex engine on the hot
//! path).

use thiserror::Error;

/// Longest object type name, in bytes.
pub const MAX_TYPE_LEN: usize = 128;
/// Longest relation or permission name, in bytes.
pub const MAX_RELATION_LEN: usize = 64;
/// Longest object id, in bytes.
pub const MAX_OBJECT_ID_LEN: usize = 1024;
/// Longest caveat name, in bytes.
pub const MAX_CAVEAT_NAME_LEN: usize = 128;

/// A malformed identifier.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IdError {
    /// The value does not match the pattern the field requires.
    #[error("`{value}` does not match regex pattern `{pattern}`")]
    Pattern {
        /// the offending value
        value: String,
        /// the pattern it had to match
        pattern: &'static str,
    },
    /// The value is longer than the field allows.
    #[error("value length must be at most {max} bytes, got {len}")]
    TooLong {
        /// the limit
        max: usize,
        /// the actual length
        len: usize,
    },
}

/// Pattern for object type names (with optional `prefix/` segments).
pub const TYPE_PATTERN: &str = "^([a-z][a-z0-9_]{1,61}[a-z0-9]/)*[a-z][a-z0-9_]{1,62}[a-z0-9]$";
/// Pattern for relation and permission names.
pub const RELATION_PATTERN: &str = "^[a-z][a-z0-9_]{1,62}[a-z0-9]$";
/// Pattern for object ids (`*` is the public wildcard).
pub const OBJECT_ID_PATTERN: &str = r"^(([a-zA-Z0-9/_|\-=+]{1,})|\*)$";
/// Pattern for caveat names.
pub const CAVEAT_NAME_PATTERN: &str = "^([a-zA-Z0-9_][a-zA-Z0-9/_|-]{0,127})$";

/// Is `s` one `[a-z][a-z0-9_]{1,max_mid}[a-z0-9]` segment?
fn is_name_segment(s: &[u8], max_mid: usize) -> bool {
    let (Some(first), Some(last)) = (s.first(), s.last()) else {
        return false;
    };
    if s.len() < 3 || s.len() > max_mid + 2 {
        return false;
    }
    let mid = s.get(1..s.len() - 1).unwrap_or_default();
    first.is_ascii_lowercase()
        && (last.is_ascii_lowercase() || last.is_ascii_digit())
        && mid
            .iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_')
}

fn pattern_error(value: &str, pattern: &'static str) -> IdError {
    IdError::Pattern {
        value: value.to_string(),
        pattern,
    }
}

/// Checks an object type name such as `document` or `tenant/document`.
pub fn validate_type_name(s: &str) -> Result<(), IdError> {
    if s.len() > MAX_TYPE_LEN {
        return Err(IdError::TooLong {
            max: MAX_TYPE_LEN,
            len: s.len(),
        });
    }
    let mut parts: Vec<&str> = s.split('/').collect();
    let last = parts.pop().unwrap_or_default();
    let ok = is_name_segment(last.as_bytes(), 62)
        && parts.iter().all(|p| is_name_segment(p.as_bytes(), 61));
    if ok {
        Ok(())
    } else {
        Err(pattern_error(s, TYPE_PATTERN))
    }
}

/// Checks a relation or permission name.
pub fn validate_relation(s: &str) -> Result<(), IdError> {
    if s.len() > MAX_RELATION_LEN {
        return Err(IdError::TooLong {
            max: MAX_RELATION_LEN,
            len: s.len(),
        });
    }
    if is_name_segment(s.as_bytes(), 62) {
        Ok(())
    } else {
        Err(pattern_error(s, RELATION_PATTERN))
    }
}

/// Is `c` allowed in a non-wildcard object id?
pub fn is_object_id_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'/' | b'_' | b'|' | b'-' | b'=' | b'+')
}

/// Checks an object id; `*` (the wildcard) is accepted here, callers that forbid it check separately.
pub fn validate_object_id(s: &str) -> Result<(), IdError> {
    if s.len() > MAX_OBJECT_ID_LEN {
        return Err(IdError::TooLong {
            max: MAX_OBJECT_ID_LEN,
            len: s.len(),
        });
    }
    if s == "*" || (!s.is_empty() && s.bytes().all(is_object_id_char)) {
        Ok(())
    } else {
        Err(pattern_error(s, OBJECT_ID_PATTERN))
    }
}

/// Checks a caveat name.
pub fn validate_caveat_name(s: &str) -> Result<(), IdError> {
    let b = s.as_bytes();
    let ok = match b.split_first() {
        Some((first, rest)) => {
            (first.is_ascii_alphanumeric() || *first == b'_')
                && rest.len() <= 127
                && rest
                    .iter()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'/' | b'_' | b'|' | b'-'))
        }
        None => false,
    };
    if ok {
        Ok(())
    } else {
        Err(pattern_error(s, CAVEAT_NAME_PATTERN))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names() {
        assert!(validate_type_name("document").is_ok());
        assert!(validate_type_name("tenant/document").is_ok());
        assert!(
            validate_type_name("a/b/doc").is_err(),
            "segments need 3 chars"
        );
        assert!(validate_type_name("ab").is_err());
        assert!(validate_type_name("Document").is_err());
        assert!(validate_type_name("doc_").is_err());
        assert!(validate_type_name("").is_err());
        assert!(validate_type_name(&"a".repeat(65)).is_err());
        assert!(validate_type_name(&"a".repeat(64)).is_ok());
    }

    #[test]
    fn relations() {
        assert!(validate_relation("viewer").is_ok());
        assert!(validate_relation("can_view2").is_ok());
        assert!(validate_relation("v").is_err());
        assert!(validate_relation("view-er").is_err());
    }

    #[test]
    fn object_ids() {
        assert!(validate_object_id("ann").is_ok());
        assert!(validate_object_id("a/b|c-d=e+f_G9").is_ok());
        assert!(validate_object_id("*").is_ok());
        assert!(validate_object_id("").is_err());
        assert!(validate_object_id("a b").is_err());
        assert!(validate_object_id("a*").is_err());
        assert!(validate_object_id(&"x".repeat(1025)).is_err());
    }

    #[test]
    fn caveat_names() {
        assert!(validate_caveat_name("is_weekday").is_ok());
        assert!(validate_caveat_name("a").is_ok());
        assert!(validate_caveat_name("-a").is_err());
        assert!(validate_caveat_name("").is_err());
    }
}
