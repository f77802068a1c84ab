//! A setting hondo picks for the machine unless the config fixes it.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `"auto"` (hondo chooses, for this machine: see [`crate::train::autotune`]) or an explicit
/// value, which always wins. Written in TOML as the value itself or the string `"auto"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Auto<T> {
    /// `"auto"`: chosen per machine when the run starts.
    #[default]
    Auto,
    /// The value the config gives.
    Set(T),
}

impl<T: Copy> Auto<T> {
    /// The explicit value, `None` for `"auto"`.
    pub fn get(self) -> Option<T> {
        match self {
            Auto::Auto => None,
            Auto::Set(v) => Some(v),
        }
    }
}

impl<T: Serialize> Serialize for Auto<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Auto::Auto => s.serialize_str("auto"),
            Auto::Set(v) => v.serialize(s),
        }
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Auto<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Through a generic value so that both spellings can be tried and the error can
        // name both.
        let value = toml::Value::deserialize(d)?;
        if value.as_str() == Some("auto") {
            return Ok(Auto::Auto);
        }
        let shown = value.to_string();
        T::deserialize(value).map(Auto::Set).map_err(|e| {
            serde::de::Error::custom(format!("expected \"auto\" or a value: {shown}: {e}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, Serialize, PartialEq)]
    struct T {
        flag: Auto<bool>,
    }

    #[test]
    fn auto_or_a_value_round_trips() {
        for (text, want) in [
            ("flag = \"auto\"", Auto::Auto),
            ("flag = true", Auto::Set(true)),
            ("flag = false", Auto::Set(false)),
        ] {
            let t: T = toml::from_str(text).unwrap();
            assert_eq!(t.flag, want, "{text}");
            assert_eq!(toml::to_string(&t).unwrap().trim(), text);
        }
        for bad in ["flag = \"yes\"", "flag = 1"] {
            let err = toml::from_str::<T>(bad).unwrap_err().to_string();
            assert!(err.contains("expected \"auto\" or a value"), "{bad}: {err}");
        }
    }
}
