//! Keyset pagination: one page of rows and whether more follow.

/// A page of results for keyset pagination.
#[derive(Debug, Clone)]
pub struct Page<T> {
    /// The rows, at most `limit`.
    pub items: Vec<T>,
    /// Whether more rows follow the last one.
    pub more: bool,
}

impl<T> Page<T> {
    /// Build from `limit + 1` fetched rows.
    pub fn from_overfetch(mut rows: Vec<T>, limit: usize) -> Self {
        let more = rows.len() > limit;
        rows.truncate(limit);
        Self { items: rows, more }
    }
}
