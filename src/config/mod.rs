//! Reading and validating appliance definitions.

mod schema;
mod size;
mod validate;
pub use validate::parse_user;

pub mod docs;

use std::ops::Range;
use std::path::{Path, PathBuf};

pub use schema::*;
pub use size::ByteSize;

/// An invalid or unreadable appliance definition.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read definition {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A TOML syntax error, an unknown key or a wrong type.
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// A value that parses but is not allowed; the message names the fix.
    #[error("{path}:{line}:{column}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
}

/// A definition with the file it came from, so that relative paths and
/// error locations can be resolved.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub definition: Definition,
    pub path: PathBuf,
    pub source: String,
}

impl Loaded {
    /// Resolves a path written in the definition relative to its file.
    pub fn resolve(&self, relative: &Path) -> PathBuf {
        self.path
            .parent()
            .unwrap_or(Path::new("."))
            .join(relative)
    }

    /// Returns an `Invalid` error located at `span` of the source text.
    fn invalid(&self, span: Range<usize>, message: String) -> ConfigError {
        let (line, column) = line_column(&self.source, span.start);
        ConfigError::Invalid {
            path: self.path.clone(),
            line,
            column,
            message,
        }
    }
}

/// Reads, parses and validates the definition at `path`.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let source = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, source)
}

/// Parses and validates definition text; `path` names it in errors.
pub fn parse(path: &Path, source: String) -> Result<Loaded, ConfigError> {
    let definition: Definition = toml::from_str(&source).map_err(|error| {
        let (line, column) = error
            .span()
            .map(|span| line_column(&source, span.start))
            .unwrap_or((1, 1));
        ConfigError::Parse {
            path: path.to_path_buf(),
            line,
            column,
            message: error.message().to_string(),
        }
    })?;
    let loaded = Loaded {
        definition,
        path: path.to_path_buf(),
        source,
    };
    validate::validate(&loaded)?;
    Ok(loaded)
}

/// Converts a byte offset into a 1-based line and column.
fn line_column(source: &str, offset: usize) -> (usize, usize) {
    let before = &source[..offset.min(source.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.chars().rev().take_while(|&c| c != '\n').count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests;
