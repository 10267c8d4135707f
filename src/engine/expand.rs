//! Expand: the tree of `resource#permission` one level deep, as SpiceDB's shallow expand.
//!
//! Shaped as SpiceDB's `ExpandPermissionTree` (`internal/graph/expand.go`, shallow mode): a
//! relation is a leaf listing its stored subjects (subject sets such as `group:eng#member` are
//! listed, not expanded); a permission is a set-operation node whose children are the
//! expansions of the relations and permissions it names (computed usersets are followed), one
//! child per object an arrow reaches, and empty leaves for `nil` and for arrow targets without
//! the relation.

use crate::engine::caveats::{CaveatExpr, Cond};
use crate::engine::dispatch::{Dispatcher, resource_filter};
use crate::engine::error::EngineResult;
use crate::model::{Caveat, ObjectRef, SubjectRef};
use crate::schema::{ArrowKind, Expr, Member};

/// The operation of an intermediate node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetOperation {
    /// any child
    Union,
    /// every child
    Intersection,
    /// the first child minus the others
    Exclusion,
}

/// A node of an expansion, as SpiceDB's `PermissionRelationshipTree`.
#[derive(Debug, Clone, PartialEq)]
pub enum ExpandTree {
    /// a set operation over sub-trees
    Intermediate {
        /// union, intersection or exclusion
        operation: SetOperation,
        /// the operands, in schema order
        children: Vec<ExpandTree>,
        /// the object whose relation or permission this node expands
        object: ObjectRef,
        /// that relation or permission
        relation: String,
        /// the condition under which this sub-tree applies (the caveat of the relationship an
        /// arrow followed to get here), if any
        caveat: Option<CaveatExpr>,
    },
    /// the stored subjects of a relation
    Leaf {
        /// the object whose relation this node lists
        object: ObjectRef,
        /// that relation
        relation: String,
        /// the subjects: plain ones first, then subject sets, each in store order
        subjects: Vec<SubjectRef>,
        /// the caveat of each subject's relationship, parallel to `subjects`
        subject_caveats: Vec<Option<Caveat>>,
        /// as for `Intermediate`
        caveat: Option<CaveatExpr>,
    },
}

impl ExpandTree {
    /// The expanded object.
    pub fn object(&self) -> &ObjectRef {
        match self {
            ExpandTree::Intermediate { object, .. } | ExpandTree::Leaf { object, .. } => object,
        }
    }

    /// The expanded relation or permission.
    pub fn relation(&self) -> &str {
        match self {
            ExpandTree::Intermediate { relation, .. } | ExpandTree::Leaf { relation, .. } => {
                relation
            }
        }
    }

    fn empty(resource_type: &str, resource_id: &str, relation: &str) -> ExpandTree {
        ExpandTree::Leaf {
            object: ObjectRef::new(resource_type, resource_id),
            relation: relation.to_string(),
            subjects: Vec::new(),
            subject_caveats: Vec::new(),
            caveat: None,
        }
    }

    fn with_caveat(mut self, cond: Cond) -> ExpandTree {
        if let Cond::Expr(e) = cond {
            match &mut self {
                ExpandTree::Intermediate { caveat, .. } | ExpandTree::Leaf { caveat, .. } => {
                    *caveat = Some(e);
                }
            }
        }
        self
    }
}

/// Expands depth-first through the dispatcher's budget; a sub-problem met again while being
/// expanded is a data cycle, reported as [`MaxDepthExceeded`](crate::engine::EngineError)
/// (SpiceDB follows it until its budget runs out).
pub(crate) struct Expander<'d, 's> {
    d: &'d mut Dispatcher<'s>,
    stack: Vec<(String, String, String)>,
}

impl<'d, 's> Expander<'d, 's> {
    pub(crate) fn new(d: &'d mut Dispatcher<'s>) -> Self {
        Expander {
            d,
            stack: Vec::new(),
        }
    }

    /// Expands `resource_type:resource_id#relation` with `depth` budget left.
    pub(crate) fn expand(
        &mut self,
        resource_type: &str,
        resource_id: &str,
        relation: &str,
        depth: u32,
    ) -> EngineResult<ExpandTree> {
        self.d.poll()?;
        if depth == 0 || self.d.stack_exhausted() {
            return Err(self.d.depth_error());
        }
        if self
            .stack
            .iter()
            .any(|(t, i, r)| t == resource_type && i == resource_id && r == relation)
        {
            return Err(self.d.depth_error());
        }
        let schema = self.d.snap.schema;
        self.stack.push((
            resource_type.to_string(),
            resource_id.to_string(),
            relation.to_string(),
        ));
        let tree = match schema.member(resource_type, relation) {
            Some(Member::Relation(_)) => self.expand_direct(resource_type, resource_id, relation),
            Some(Member::Permission(p)) => {
                self.expand_rewrite(resource_type, resource_id, relation, &p.expr, depth, true)
            }
            None => Ok(ExpandTree::empty(resource_type, resource_id, relation)),
        };
        self.stack.pop();
        tree
    }

    /// A relation: its stored subjects, unexpanded.
    fn expand_direct(
        &mut self,
        resource_type: &str,
        resource_id: &str,
        relation: &str,
    ) -> EngineResult<ExpandTree> {
        let rels = self
            .d
            .all(&resource_filter(resource_type, resource_id, relation, None))?;
        let (terminal, non_terminal): (Vec<_>, Vec<_>) =
            rels.into_iter().partition(|r| r.subject.relation.is_none());
        let mut subjects = Vec::with_capacity(terminal.len() + non_terminal.len());
        let mut subject_caveats = Vec::with_capacity(terminal.len() + non_terminal.len());
        for r in terminal.into_iter().chain(non_terminal) {
            subjects.push(r.subject);
            subject_caveats.push(r.caveat);
        }
        Ok(ExpandTree::Leaf {
            object: ObjectRef::new(resource_type, resource_id),
            relation: relation.to_string(),
            subjects,
            subject_caveats,
            caveat: None,
        })
    }

    /// A permission's expression. At the root, an expression that is not a set operation is
    /// wrapped in a one-child union, as SpiceDB's compiler does.
    fn expand_rewrite(
        &mut self,
        resource_type: &str,
        resource_id: &str,
        permission: &str,
        expr: &'s Expr,
        depth: u32,
        root: bool,
    ) -> EngineResult<ExpandTree> {
        let node = |operation, children| ExpandTree::Intermediate {
            operation,
            children,
            object: ObjectRef::new(resource_type, resource_id),
            relation: permission.to_string(),
            caveat: None,
        };
        let (operation, operands): (SetOperation, Vec<&'s Expr>) = match expr {
            Expr::Union(items) => (SetOperation::Union, items.iter().collect()),
            Expr::Intersection(items) => (SetOperation::Intersection, items.iter().collect()),
            Expr::Exclusion(a, b) => (SetOperation::Exclusion, vec![&**a, &**b]),
            other if root => (SetOperation::Union, vec![other]),
            other => {
                return self.expand_operand(resource_type, resource_id, permission, other, depth);
            }
        };
        let mut children = Vec::with_capacity(operands.len());
        for e in operands {
            children.push(self.expand_operand(resource_type, resource_id, permission, e, depth)?);
        }
        Ok(node(operation, children))
    }

    /// One operand of a set operation.
    fn expand_operand(
        &mut self,
        resource_type: &str,
        resource_id: &str,
        permission: &str,
        expr: &'s Expr,
        depth: u32,
    ) -> EngineResult<ExpandTree> {
        match expr {
            Expr::Nil => Ok(ExpandTree::empty(resource_type, resource_id, permission)),
            Expr::Self_ => Ok(ExpandTree::Leaf {
                object: ObjectRef::new(resource_type, resource_id),
                relation: permission.to_string(),
                subjects: vec![SubjectRef::object(resource_type, resource_id)],
                subject_caveats: vec![None],
                caveat: None,
            }),
            Expr::Computed(name) => {
                self.expand(resource_type, resource_id, name, depth.saturating_sub(1))
            }
            Expr::Arrow {
                tupleset,
                computed,
                kind,
            } => self.expand_tuple_to_userset(
                (resource_type, resource_id, permission),
                (tupleset, computed, *kind),
                depth,
            ),
            Expr::Union(_) | Expr::Intersection(_) | Expr::Exclusion(..) => {
                self.expand_rewrite(resource_type, resource_id, permission, expr, depth, false)
            }
        }
    }

    /// An arrow: a union (`->`, `.any`) or intersection (`.all`) of the expansions of
    /// `computed` on each object the tupleset relation points to.
    fn expand_tuple_to_userset(
        &mut self,
        (resource_type, resource_id, permission): (&str, &str, &str),
        (tupleset, computed, kind): (&str, &str, ArrowKind),
        depth: u32,
    ) -> EngineResult<ExpandTree> {
        let schema = self.d.snap.schema;
        let rels = self
            .d
            .all(&resource_filter(resource_type, resource_id, tupleset, None))?;
        let mut children = Vec::with_capacity(rels.len());
        for rel in rels {
            let target = &rel.subject.object;
            let child = if schema.has_member(&target.object_type, computed) {
                self.expand(
                    &target.object_type,
                    &target.object_id,
                    computed,
                    depth.saturating_sub(1),
                )?
            } else {
                ExpandTree::empty(resource_type, resource_id, permission)
            };
            children.push(child.with_caveat(Cond::of_caveat(rel.caveat.as_ref())));
        }
        Ok(ExpandTree::Intermediate {
            operation: match kind {
                ArrowKind::Any => SetOperation::Union,
                ArrowKind::All => SetOperation::Intersection,
            },
            children,
            object: ObjectRef::new(resource_type, resource_id),
            relation: permission.to_string(),
            caveat: None,
        })
    }
}
