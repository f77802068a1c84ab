//! Reading a config file: TOML syntax and type errors with file, line, column and key path;
//! overrides applied on top; semantic validation last.

use super::{overrides::Override, validate, Config};
use std::fmt;
use std::path::Path;

/// Everything that can be wrong with a configuration, each naming where.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// Path of the file, as given.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// TOML syntax error, or a value of the wrong type or an unknown key.
    #[error("{file}:{line}:{column}: {key}{message}")]
    Syntax {
        /// Name of the source (a path, or e.g. `ckpt (embedded config)`).
        file: String,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error, in characters.
        column: usize,
        /// Dotted path of the offending key, if known.
        key: KeyPrefix,
        /// The parser's message, trimmed.
        message: String,
    },
    /// A `--set` override that does not parse, or does not fit the config's types.
    #[error("--set {text}: {message}")]
    Override {
        /// The override as written on the command line (`key.path=value`).
        text: String,
        /// What is wrong, prefixed by the key when known.
        message: String,
    },
    /// One problem on one line (so an `error:` line names the key); several as a list.
    #[error("invalid configuration in {file}:{}", match .problems.as_slice() {
        [one] => format!(" {one}"),
        many => many.iter().map(|p| format!("\n  - {p}")).collect::<String>(),
    })]
    Invalid {
        /// Name of the source.
        file: String,
        /// Each problem as `key: message`, in check order; never empty.
        problems: Vec<String>,
    },
}

/// `key `model.arch`: ` when a key path is known, empty otherwise.
#[derive(Debug)]
pub struct KeyPrefix(pub String);

impl fmt::Display for KeyPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() || self.0 == "." {
            Ok(())
        } else {
            write!(f, "key `{}`: ", self.0)
        }
    }
}

/// Reads `path`, applies `overrides` in order and validates the result.
pub fn load(path: &Path, overrides: &[Override]) -> Result<Config, ConfigError> {
    let read_error = |reason: String| ConfigError::Read {
        path: path.display().to_string(),
        source: crate::file::io_error(reason),
    };
    let bytes =
        crate::file::read_regular(path, crate::file::MAX_CONFIG_BYTES).map_err(read_error)?;
    let text = String::from_utf8(bytes).map_err(|e| read_error(format!("not UTF-8 text: {e}")))?;
    load_str(&text, &path.display().to_string(), overrides)
}

/// As [`load`], from text; `file` names the source in messages.
pub fn load_str(text: &str, file: &str, overrides: &[Override]) -> Result<Config, ConfigError> {
    let mut config = parse(text, file)?;
    if !overrides.is_empty() {
        // The file parsed cleanly, so any error from here on comes from an override.
        let mut table: toml::Table = toml::from_str(text).map_err(|e| syntax(e, text, file, ""))?;
        for o in overrides {
            o.apply(&mut table)?;
            config = from_table(&table).map_err(|(key, message)| ConfigError::Override {
                text: o.text.clone(),
                message: if key.is_empty() {
                    message
                } else {
                    format!("key `{key}`: {message}")
                },
            })?;
        }
    }
    validated(config, file)
}

/// As [`load_str`] without overrides, for the config a checkpoint embeds: hondo before
/// `checkpoint.mode` became optional wrote `mode = "max"` whatever the monitor, so there a
/// mode that contradicts the monitor is dropped (inferred from the metric), not refused.
pub fn load_embedded(text: &str, file: &str) -> Result<Config, ConfigError> {
    let mut config = parse(text, file)?;
    let k = &mut config.checkpoint;
    if k.mode.is_some_and(|m| m != k.monitor.mode()) {
        k.mode = None;
    }
    validated(config, file)
}

/// Checks a config changed after it was loaded (values taken from elsewhere, such as the
/// preprocessing of named weights) as a loaded one is checked; `source` names the change.
pub(crate) fn check(config: &Config, source: &str) -> Result<(), ConfigError> {
    validated(config.clone(), source).map(|_| ())
}

fn validated(config: Config, file: &str) -> Result<Config, ConfigError> {
    let problems = validate::problems(&config);
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError::Invalid {
            file: file.to_string(),
            problems,
        })
    }
}

fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
    let de = toml::Deserializer::parse(text).map_err(|e| syntax(e, text, file, ""))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        syntax(e.into_inner(), text, file, &key)
    })
}

fn from_table(table: &toml::Table) -> Result<Config, (String, String)> {
    let value = toml::Value::Table(table.clone());
    serde_path_to_error::deserialize::<_, Config>(value).map_err(|e| {
        let key = e.path().to_string();
        (
            clean_key(&key, e.inner().message()),
            e.inner().message().trim().to_string(),
        )
    })
}

/// The key an error is about. `serde_path_to_error` reports an unknown field at its own
/// path (`model.archh`); a path that stops at the parent (`model`) gets the field's name
/// added.
fn clean_key(path: &str, message: &str) -> String {
    let path = if path == "." { "" } else { path };
    if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some(field) = rest.split('`').next() {
            let last = path.rsplit('.').next().unwrap_or("");
            return if path.is_empty() {
                field.to_string()
            } else if last == field {
                path.to_string()
            } else {
                format!("{path}.{field}")
            };
        }
    }
    path.to_string()
}

fn syntax(e: toml::de::Error, text: &str, file: &str, key: &str) -> ConfigError {
    let (line, column) = match e.span() {
        Some(span) => line_col(text, span.start),
        None => (1, 1),
    };
    let message = e.message().trim().to_string();
    ConfigError::Syntax {
        file: file.to_string(),
        line,
        column,
        key: KeyPrefix(clean_key(key, &message)),
        message,
    }
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one() {
        assert_eq!(line_col("a\nbc\n", 0), (1, 1));
        assert_eq!(line_col("a\nbc\n", 3), (2, 2));
    }

    #[test]
    fn an_embedded_config_of_older_hondo_still_loads() {
        let old = "[checkpoint]\nmonitor = \"val_loss\"\nmode = \"max\"\n";
        assert!(load_str(old, "config.toml", &[]).is_err());
        let c = load_embedded(old, "ckpt (embedded config)").unwrap();
        assert_eq!(c.checkpoint.mode(), crate::config::MonitorMode::Min);
    }

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(load_str("", "x.toml", &[]).unwrap(), Config::default());
    }
}
