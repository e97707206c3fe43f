//! Serde building blocks for providers' params: the rules several providers share, written
//! once, each with the message a user sees when it is broken. Wrap a field in one of these
//! types (`Option<Seconds>`, `Bounded<1, 10>`), or use the `deserialize_with` functions where
//! the field keeps a plain type.
//!
//! A string kwarg may hold an environment reference: at sync time it arrives as a placeholder
//! string (`${env:NAME}`), at run time as the variable's value. The string types here accept
//! both; a rule on a string's content belongs in the provider's `check`, which must let a
//! placeholder through where a secret is expected.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserialize, Deserializer, SeqAccess, Visitor};

/// A string with something other than whitespace in it, kept as written (a file name may
/// start or end with a space).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NonBlank(pub String);

/// A string with surrounding whitespace removed, not empty: names, URLs and addresses, where
/// the spaces could only be a slip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trimmed(pub String);

/// One string, or a list of them: each trimmed and not empty, and at least one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StringList(pub Vec<String>);

/// A positive, finite number of seconds (whole or not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seconds(pub Duration);

/// A whole number between `MIN` and `MAX`, both included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounded<const MIN: i64, const MAX: i64>(pub i64);

/// A string visitor that hands the string to `accept`; `expecting` is what the error says.
struct StrVisitor<F> {
    expecting: &'static str,
    accept: F,
}

impl<'de, T, F> Visitor<'de> for StrVisitor<F>
where
    F: FnOnce(&str) -> Result<T, &'static str>,
{
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        (self.accept)(v).map_err(E::custom)
    }
}

impl<'de> Deserialize<'de> for NonBlank {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(StrVisitor {
            expecting: "a non-empty string",
            accept: |s: &str| {
                if s.trim().is_empty() {
                    Err("must not be empty")
                } else {
                    Ok(Self(s.to_string()))
                }
            },
        })
    }
}

impl<'de> Deserialize<'de> for Trimmed {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(StrVisitor {
            expecting: "a non-empty string",
            accept: |s: &str| match s.trim() {
                "" => Err("must not be empty"),
                trimmed => Ok(Self(trimmed.to_string())),
            },
        })
    }
}

impl<'de> Deserialize<'de> for StringList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ListVisitor;

        impl<'de> Visitor<'de> for ListVisitor {
            type Value = StringList;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a list of strings")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<StringList, E> {
                match v.trim() {
                    "" => Err(E::custom("must not be empty")),
                    trimmed => Ok(StringList(vec![trimmed.to_string()])),
                }
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<StringList, A::Error> {
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                // Element by element, so that an error names its index (`topics[2]`).
                while let Some(Trimmed(item)) = seq.next_element()? {
                    items.push(item);
                }
                if items.is_empty() {
                    return Err(de::Error::custom("must list at least one"));
                }
                Ok(StringList(items))
            }
        }

        d.deserialize_any(ListVisitor)
    }
}

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct SecondsVisitor;

        impl<'de> Visitor<'de> for SecondsVisitor {
            type Value = Seconds;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of seconds > 0")
            }

            fn visit_f64<E: de::Error>(self, secs: f64) -> Result<Seconds, E> {
                if !(secs.is_finite() && secs > 0.0) {
                    return Err(E::custom(format!(
                        "expected a number of seconds > 0, got {secs}"
                    )));
                }
                Duration::try_from_secs_f64(secs)
                    .map(Seconds)
                    .map_err(|_| E::custom("is too large a number of seconds"))
            }

            fn visit_i64<E: de::Error>(self, secs: i64) -> Result<Seconds, E> {
                match u64::try_from(secs) {
                    Ok(secs) => self.visit_u64(secs),
                    Err(_) => Err(E::custom(format!(
                        "expected a number of seconds > 0, got {secs}"
                    ))),
                }
            }

            fn visit_u64<E: de::Error>(self, secs: u64) -> Result<Seconds, E> {
                if secs == 0 {
                    return Err(E::custom("expected a number of seconds > 0, got 0"));
                }
                Ok(Seconds(Duration::from_secs(secs)))
            }
        }

        d.deserialize_any(SecondsVisitor)
    }
}

impl<const MIN: i64, const MAX: i64> Bounded<MIN, MAX> {
    pub fn get(self) -> i64 {
        self.0
    }
}

impl<'de, const MIN: i64, const MAX: i64> Deserialize<'de> for Bounded<MIN, MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct BoundedVisitor<const MIN: i64, const MAX: i64>;

        impl<'de, const MIN: i64, const MAX: i64> Visitor<'de> for BoundedVisitor<MIN, MAX> {
            type Value = Bounded<MIN, MAX>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a whole number between {MIN} and {MAX}")
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                if (MIN..=MAX).contains(&v) {
                    Ok(Bounded(v))
                } else {
                    Err(E::custom(format!(
                        "must be between {MIN} and {MAX}, got {v}"
                    )))
                }
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                match i64::try_from(v) {
                    Ok(v) => self.visit_i64(v),
                    Err(_) => Err(E::custom(format!(
                        "must be between {MIN} and {MAX}, got {v}"
                    ))),
                }
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Err(E::custom(format!(
                    "must be a whole number between {MIN} and {MAX}, got {v}"
                )))
            }
        }

        d.deserialize_any(BoundedVisitor::<MIN, MAX>)
    }
}

/// `deserialize_with` for a `String` field that must not be blank ([`NonBlank`]).
pub fn non_blank<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    NonBlank::deserialize(d).map(|s| s.0)
}

/// `deserialize_with` for a field whose `null` means "not given" (JSON producers write unset
/// values so): `null` gives the type's default. Use with `#[serde(default)]`.
pub fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Option::<T>::deserialize(d).map(Option::unwrap_or_default)
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::json;

    use super::*;
    use crate::parse_kwargs;

    #[allow(dead_code)]
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct P {
        #[serde(default)]
        name: Option<Trimmed>,
        #[serde(default)]
        path: Option<NonBlank>,
        #[serde(default)]
        list: Option<StringList>,
        #[serde(default)]
        wait: Option<Seconds>,
        #[serde(default)]
        n: Option<Bounded<1, 10>>,
        #[serde(default, deserialize_with = "null_as_default")]
        flag: bool,
    }

    fn ok(kwargs: serde_json::Value) -> P {
        parse_kwargs(&kwargs, &[]).unwrap_or_else(|e| panic!("{kwargs}: {e}"))
    }

    fn err(kwargs: serde_json::Value) -> String {
        match parse_kwargs::<P>(&kwargs, &[]) {
            Err(e) => e.to_string(),
            Ok(p) => panic!("{kwargs} parsed: {p:?}"),
        }
    }

    #[test]
    fn strings() {
        assert_eq!(ok(json!({"name": " a "})).name, Some(Trimmed("a".into())));
        assert_eq!(
            ok(json!({"path": " a "})).path,
            Some(NonBlank(" a ".into()))
        );
        assert_eq!(err(json!({"name": "  "})), "kwargs.name: must not be empty");
        assert_eq!(err(json!({"path": ""})), "kwargs.path: must not be empty");
        assert_eq!(
            err(json!({"path": 3})),
            "kwargs.path: expected a non-empty string, got 3"
        );
    }

    #[test]
    fn string_lists() {
        assert_eq!(
            ok(json!({"list": "a"})).list,
            Some(StringList(vec!["a".into()]))
        );
        assert_eq!(
            ok(json!({"list": [" a", "b "]})).list,
            Some(StringList(vec!["a".into(), "b".into()]))
        );
        assert_eq!(
            err(json!({"list": []})),
            "kwargs.list: must list at least one"
        );
        assert_eq!(
            err(json!({"list": ["a", " "]})),
            "kwargs.list[1]: must not be empty"
        );
        assert_eq!(
            err(json!({"list": ["a", 2]})),
            "kwargs.list[1]: expected a non-empty string, got 2"
        );
        assert_eq!(
            err(json!({"list": {}})),
            "kwargs.list: expected a string or a list of strings, got a table"
        );
    }

    #[test]
    fn seconds() {
        assert_eq!(
            ok(json!({"wait": 2})).wait,
            Some(Seconds(Duration::from_secs(2)))
        );
        assert_eq!(
            ok(json!({"wait": 0.25})).wait,
            Some(Seconds(Duration::from_millis(250)))
        );
        for bad in [json!(0), json!(-1), json!(-1.5), json!(0.0)] {
            let e = err(json!({ "wait": bad }));
            assert!(
                e.starts_with("kwargs.wait: expected a number of seconds > 0, got"),
                "{e}"
            );
        }
        assert_eq!(
            err(json!({"wait": 1e300})),
            "kwargs.wait: is too large a number of seconds"
        );
        assert_eq!(
            err(json!({"wait": "5"})),
            "kwargs.wait: expected a number of seconds > 0, got a string"
        );
    }

    #[test]
    fn bounded() {
        assert_eq!(ok(json!({"n": 10})).n.map(Bounded::get), Some(10));
        assert_eq!(
            err(json!({"n": 11})),
            "kwargs.n: must be between 1 and 10, got 11"
        );
        assert_eq!(
            err(json!({"n": 0})),
            "kwargs.n: must be between 1 and 10, got 0"
        );
        assert_eq!(
            err(json!({"n": 2.5})),
            "kwargs.n: must be a whole number between 1 and 10, got 2.5"
        );
        assert_eq!(
            err(json!({"n": "3"})),
            "kwargs.n: expected a whole number between 1 and 10, got a string"
        );
    }

    #[test]
    fn null_is_the_default() {
        assert!(!ok(json!({"flag": null})).flag);
        assert!(ok(json!({"flag": true})).flag);
    }
}
