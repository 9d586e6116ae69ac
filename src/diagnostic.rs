//! Source positions for errors in user-written files (room configs, show scripts).
//!
//! Every file a user edits by hand is parsed with spans kept, so that an error can be printed the
//! way compilers print them: `path:line:col: error: message`, followed by a hint. This module owns
//! the conversion from byte spans to line/column and the one error type both loaders return.

use std::fmt;
use std::ops::Range;

/// One problem found in a user file, located to a line and column (both 1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub path: String,
    pub line: usize,
    pub col: usize,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: error: {}", self.path, self.line, self.col, self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

/// All problems found in one file. Loading stops at the first syntax error but collects every
/// semantic error, so a user fixes a file in one pass.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// A file's text plus its display path, able to turn byte offsets into positions.
pub struct SourceText<'a> {
    pub path: &'a str,
    pub text: &'a str,
}

impl<'a> SourceText<'a> {
    pub fn new(path: &'a str, text: &'a str) -> Self {
        Self { path, text }
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..floor_char_boundary(self.text, offset)];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let col = before[line_start..].chars().count() + 1;
        (line, col)
    }

    pub fn error(&self, span: Option<Range<usize>>, message: impl Into<String>, hint: Option<String>) -> Diagnostic {
        let (line, col) = span.map_or((1, 1), |s| self.position(s.start));
        Diagnostic { path: self.path.to_string(), line, col, message: message.into(), hint }
    }

    /// Parses TOML into `T`, turning a syntax or type error (including an unknown key, since the
    /// loaders' structs deny them) into a located diagnostic.
    pub fn parse_toml<T: serde::de::DeserializeOwned>(&self) -> Result<T, Diagnostics> {
        toml::from_str(self.text).map_err(|e| {
            let message = e.message().trim().to_string();
            let hint = if message.starts_with("unknown field") {
                Some("remove the key or check its spelling; the expected keys are listed above".to_string())
            } else if message.starts_with("missing field") {
                Some("add the key to this table".to_string())
            } else {
                None
            };
            Diagnostics(vec![self.error(e.span(), message, hint)])
        })
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_and_count_characters() {
        let src = SourceText::new("f.toml", "a = 1\nb = \"价格\"\nc = 3");
        assert_eq!(src.position(0), (1, 1));
        assert_eq!(src.position(6), (2, 1));
        let c = src.text.find("c =").unwrap();
        assert_eq!(src.position(c), (3, 1));
        let after_cjk = src.text.find("\"\nc").unwrap();
        assert_eq!(src.position(after_cjk), (2, 8));
    }

    #[test]
    fn unknown_key_is_located() {
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct T {
            a: u32,
        }
        let src = SourceText::new("room.toml", "a = 1\nbogus = 2\n");
        let err = src.parse_toml::<T>().unwrap_err();
        assert_eq!(err.0[0].line, 2);
        assert_eq!(err.0[0].col, 1);
        assert!(err.to_string().starts_with("room.toml:2:1: error: unknown field `bogus`"), "{err}");
    }
}
