//! Reading settings from JSON so that a bad value is reported under its key: serde's own
//! message for a typed struct says what was wrong but not where.

use serde::de::DeserializeOwned;
use serde_json::Value;

/// A JSON value that does not fit a settings struct. `field` is `(json)` when no single key
/// is to blame (the text is not an object, or the keys only fail together).
#[derive(Clone, Debug, PartialEq)]
pub struct FieldError {
    pub field: String,
    pub msg: String,
}

/// Deserializes `value`; on failure names the first key that fails on its own (every other
/// key taking its default).
pub fn from_value<T: DeserializeOwned>(value: Value) -> Result<T, FieldError> {
    let whole = match serde_json::from_value::<T>(value.clone()) {
        Ok(v) => return Ok(v),
        Err(e) => e.to_string(),
    };
    let Value::Object(map) = value else {
        return Err(FieldError {
            field: "(json)".into(),
            msg: format!("expected an object of settings: {whole}"),
        });
    };
    for (key, v) in map {
        let alone = Value::Object([(key.clone(), v)].into_iter().collect());
        if let Err(e) = serde_json::from_value::<T>(alone) {
            return Err(FieldError {
                field: key,
                msg: e.to_string(),
            });
        }
    }
    Err(FieldError {
        field: "(json)".into(),
        msg: whole,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, Default)]
    #[serde(default)]
    struct S {
        #[allow(dead_code)]
        a: usize,
        #[allow(dead_code)]
        b: bool,
    }

    #[test]
    fn the_failing_key_is_named() {
        let e = from_value::<S>(serde_json::json!({"a": 3, "b": "yes"})).unwrap_err();
        assert_eq!(e.field, "b");
        assert!(e.msg.contains("boolean"), "{}", e.msg);
        let e = from_value::<S>(serde_json::json!("x")).unwrap_err();
        assert_eq!(e.field, "(json)");
        assert!(from_value::<S>(serde_json::json!({"a": 3})).is_ok());
    }
}
