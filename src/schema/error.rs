//! Errors of the schema pipeline: one type, saying what went wrong and where in the text.
//!
//! Parse errors are what SpiceDB's compiler refuses (bad tokens and grammar, duplicate top-level
//! names, malformed caveat declarations, invalid names); the API answers them with
//! `INVALID_ARGUMENT`. Type errors are what SpiceDB's type system refuses once the text compiled
//! (unknown types and relations, bad arrows, wildcards, cycles); the API answers them with
//! `FAILED_PRECONDITION`.
//!
//! Questions asked of a compiled schema (what a relation can reach, what a permission reads)
//! fail when they name what the schema lacks; those errors carry no position.

use std::borrow::Cow;

use thiserror::Error;

/// A position in the schema text: 0-based line and column (columns count characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Position {
    /// byte offset of the position in the text
    pub offset: usize,
    /// 0-based line
    pub line: usize,
    /// 0-based column, in characters
    pub column: usize,
}

/// Why a schema was refused. `line` and `column` are 1-based, for humans.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SchemaError {
    /// The text is not a well-formed schema.
    #[error("parse error at line {line}, column {column}: {message}")]
    Parse {
        /// what is wrong
        message: String,
        /// 1-based line of the offending text
        line: usize,
        /// 1-based column (in characters) of the offending text
        column: usize,
    },
    /// The schema is well-formed but inconsistent.
    #[error("type error at line {line}, column {column}: {message}")]
    Type {
        /// what is wrong
        message: String,
        /// 1-based line of the offending item
        line: usize,
        /// 1-based column (in characters) of the offending item
        column: usize,
    },
    /// A question about the schema named a definition it does not have.
    #[error("object definition `{0}` not found")]
    UnknownDefinition(String),
    /// A question about the schema named a relation or permission its definition lacks.
    #[error("relation/permission `{relation}` not found under definition `{definition}`")]
    UnknownRelation {
        /// the definition asked about
        definition: String,
        /// the name it lacks
        relation: String,
    },
    /// A question about a permission named a relation.
    #[error("the relation `{relation}` is not a permission")]
    NotAPermission {
        /// the definition asked about
        definition: String,
        /// the relation named
        relation: String,
    },
}

impl SchemaError {
    /// A parse error at `pos`.
    pub(crate) fn parse(message: impl Into<String>, pos: Position) -> SchemaError {
        SchemaError::Parse {
            message: message.into(),
            line: pos.line.saturating_add(1),
            column: pos.column.saturating_add(1),
        }
    }

    /// A type error at `pos`.
    pub(crate) fn type_error(message: impl Into<String>, pos: Position) -> SchemaError {
        SchemaError::Type {
            message: message.into(),
            line: pos.line.saturating_add(1),
            column: pos.column.saturating_add(1),
        }
    }

    /// The message without its position.
    pub fn message(&self) -> Cow<'_, str> {
        match self {
            SchemaError::Parse { message, .. } | SchemaError::Type { message, .. } => {
                Cow::Borrowed(message)
            }
            SchemaError::UnknownDefinition(_)
            | SchemaError::UnknownRelation { .. }
            | SchemaError::NotAPermission { .. } => Cow::Owned(self.to_string()),
        }
    }

    /// 1-based line of the error (0 for an error about no text).
    pub fn line(&self) -> usize {
        match self {
            SchemaError::Parse { line, .. } | SchemaError::Type { line, .. } => *line,
            SchemaError::UnknownDefinition(_)
            | SchemaError::UnknownRelation { .. }
            | SchemaError::NotAPermission { .. } => 0,
        }
    }

    /// 1-based column (in characters) of the error (0 for an error about no text).
    pub fn column(&self) -> usize {
        match self {
            SchemaError::Parse { column, .. } | SchemaError::Type { column, .. } => *column,
            SchemaError::UnknownDefinition(_)
            | SchemaError::UnknownRelation { .. }
            | SchemaError::NotAPermission { .. } => 0,
        }
    }

    /// 0-based line of the error, as SpiceDB's `ErrorInfo` metadata reports it.
    pub fn line0(&self) -> usize {
        self.line().saturating_sub(1)
    }

    /// 0-based column of the error, as SpiceDB's `ErrorInfo` metadata reports it.
    pub fn column0(&self) -> usize {
        self.column().saturating_sub(1)
    }

    /// Is this a parse (compile) error rather than a type error?
    pub fn is_parse(&self) -> bool {
        matches!(self, SchemaError::Parse { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_for_humans() {
        let e = SchemaError::parse(
            "bad",
            Position {
                offset: 7,
                line: 2,
                column: 4,
            },
        );
        assert_eq!(e.line(), 3);
        assert_eq!(e.column(), 5);
        assert_eq!(e.line0(), 2);
        assert_eq!(e.column0(), 4);
        assert!(e.is_parse());
        assert_eq!(e.to_string(), "parse error at line 3, column 5: bad");
        let t = SchemaError::type_error("worse", Position::default());
        assert_eq!(t.to_string(), "type error at line 1, column 1: worse");
        assert_eq!(t.message(), "worse");
        assert!(!t.is_parse());
        let u = SchemaError::UnknownRelation {
            definition: "doc".into(),
            relation: "nope".into(),
        };
        assert_eq!(
            u.message(),
            "relation/permission `nope` not found under definition `doc`"
        );
        assert_eq!((u.line(), u.column()), (0, 0));
        assert!(!u.is_parse());
    }
}
