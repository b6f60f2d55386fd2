//! Errors shown with their causes: [`Report`] writes an error and every
//! error in its `source()` chain, so a log line says why as well as what
//! (`error = %Report(&e)`).

use std::fmt;

/// An error and its causes, outermost first, joined with `": "`.
///
/// A cause whose text the message before it already ends with is skipped
/// (many errors, sqlx's among them, repeat their source in their own
/// message), so nothing is said twice.
pub struct Report<'a>(pub &'a (dyn std::error::Error + 'static));

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut last = self.0.to_string();
        f.write_str(&last)?;
        let mut next = self.0.source();
        while let Some(cause) = next {
            let text = cause.to_string();
            if !text.is_empty() && !last.ends_with(&text) {
                write!(f, ": {text}")?;
            }
            last = text;
            next = cause.source();
        }
        Ok(())
    }
}

impl fmt::Debug for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("reading the tenant")]
    struct Outer(#[source] Middle);

    #[derive(Debug, thiserror::Error)]
    #[error("database unavailable: {0}")]
    struct Middle(#[source] std::io::Error);

    #[test]
    fn every_cause_once() {
        let e = Outer(Middle(std::io::Error::other("connection refused")));
        assert_eq!(
            Report(&e).to_string(),
            "reading the tenant: database unavailable: connection refused"
        );
    }
}
