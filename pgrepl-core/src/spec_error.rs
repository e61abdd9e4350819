//! What is wrong with a cluster spec: [`SpecError`] (one problem) and [`SpecErrors`]
//! (all of them, in file order).
//!
//! Below [`spec`](crate::spec), [`cluster`](crate::cluster) and `validate`, which report
//! them, and below [`error`](crate::error), whose [`Error::Spec`](crate::Error::Spec)
//! wraps them and which re-exports both.

use std::fmt;

use serde::Serialize;

/// One problem in a cluster spec: which field, what is wrong, what was expected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SpecError {
    /// The field path as written in pgrepl.toml, such as `nodes[2].upstream`.
    pub field: String,
    /// What is wrong.
    pub problem: String,
    /// What was expected instead.
    pub expected: String,
}

impl SpecError {
    /// A problem with `field`.
    pub fn new(field: impl Into<String>, problem: impl Into<String>, expected: impl Into<String>) -> Self {
        SpecError { field: field.into(), problem: problem.into(), expected: expected.into() }
    }
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} (expected {})", self.field, self.problem, self.expected)
    }
}

/// Every problem found in a spec, in file order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SpecErrors(pub Vec<SpecError>);

impl SpecErrors {
    /// A list of one.
    pub fn one(e: SpecError) -> Self {
        SpecErrors(vec![e])
    }

    /// The problems.
    pub fn iter(&self) -> impl Iterator<Item = &SpecError> {
        self.0.iter()
    }

    /// The problem with `field`, if any.
    pub fn get(&self, field: &str) -> Option<&SpecError> {
        self.0.iter().find(|e| e.field == field)
    }
}

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SpecErrors {}
