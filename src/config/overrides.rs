//! `--set key.path=value` overrides: the value is read as a TOML value (numbers, strings,
//! booleans, arrays, inline tables); a bare word that is not valid TOML is a string.

use super::ConfigError;
use std::str::FromStr;

/// Parts a key path may have. hondo's deepest keys have three (`data.augment.hflip`); a
/// limit keeps a pathological path from nesting tables without end.
const MAX_KEY_PARTS: usize = 8;

/// One `--set key.path=value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    /// The text as given, for messages.
    pub text: String,
    /// Dotted key path, e.g. `["optimizer", "lr"]`.
    pub path: Vec<String>,
    /// The parsed value.
    pub value: toml::Value,
}

impl FromStr for Override {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (key, raw) = text
            .split_once('=')
            .ok_or_else(|| format!("`{text}` is not of the form key.path=value"))?;
        let key = key.trim();
        let path: Vec<String> = key.split('.').map(|s| s.trim().to_string()).collect();
        if path.iter().any(|p| p.is_empty()) {
            return Err(format!(
                "`{key}` is not a valid key path (e.g. optimizer.lr)"
            ));
        }
        if path.len() > MAX_KEY_PARTS {
            return Err(format!(
                "`{}...` has {} parts; hondo's keys have at most {MAX_KEY_PARTS} \
                 (e.g. data.augment.hflip)",
                path[..3].join("."),
                path.len()
            ));
        }
        let raw = raw.trim();
        let value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
            Ok(mut t) => t.remove("v").expect("parsed key"),
            Err(_) => toml::Value::String(raw.to_string()),
        };
        Ok(Override {
            text: text.to_string(),
            path,
            value,
        })
    }
}

impl Override {
    /// Sets the value in `table`, creating intermediate tables.
    pub fn apply(&self, table: &mut toml::Table) -> Result<(), ConfigError> {
        let (last, parents) = self.path.split_last().expect("non-empty path");
        let mut current = table;
        for (i, part) in parents.iter().enumerate() {
            let entry = current
                .entry(part.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            current = match entry {
                toml::Value::Table(t) => t,
                _ => {
                    return Err(ConfigError::Override {
                        text: self.text.clone(),
                        message: format!("`{}` is not a table", self.path[..=i].join(".")),
                    })
                }
            };
        }
        current.insert(last.clone(), self.value.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Override {
        s.parse().unwrap()
    }

    #[test]
    fn values_are_toml_and_bare_words_are_strings() {
        assert_eq!(parse("optimizer.lr=0.1").value, toml::Value::Float(0.1));
        assert_eq!(parse("train.epochs=3").value, toml::Value::Integer(3));
        assert_eq!(
            parse("model.strict=false").value,
            toml::Value::Boolean(false)
        );
        assert_eq!(
            parse("model.arch=resnet18").value,
            toml::Value::String("resnet18".into())
        );
        assert_eq!(
            parse("model.arch=\"resnet18\"").value,
            toml::Value::String("resnet18".into())
        );
        let arr = parse(r#"model.freeze=["conv1","layer1"]"#).value;
        assert_eq!(arr.as_array().unwrap().len(), 2);
        assert_eq!(parse("a.b.c=1").path, vec!["a", "b", "c"]);
    }

    #[test]
    fn malformed_overrides_are_rejected() {
        assert!("noequals".parse::<Override>().is_err());
        assert!("a..b=1".parse::<Override>().is_err());
        assert!("=1".parse::<Override>().is_err());
        let deep = format!("{}=1", vec!["a"; 30_000].join("."));
        let e = deep.parse::<Override>().unwrap_err();
        assert!(e.contains("30000 parts") && e.contains("at most 8"), "{e}");
        assert!(e.len() < 200, "the message does not repeat the key: {e}");
    }
}
