//! The `schedule` of a DAG as the definition file writes it (README "Definition files"): checked here, stored
//! as JSON, turned into timetables by the scheduler. Every mistake names the `schedule` field.

use std::str::FromStr;

use serde_json::{json, Value};

use super::{CronSchedule, Timetable};
use crate::asset_expression::AssetExpr;

/// Airflow's presets and the cron expressions they stand for (`@once` and `@continuous` are not
/// cron and are handled apart).
pub const PRESETS: &[(&str, &str)] = &[
    ("@hourly", "0 * * * *"),
    ("@daily", "0 0 * * *"),
    ("@weekly", "0 0 * * 0"),
    ("@monthly", "0 0 1 * *"),
    ("@quarterly", "0 0 1 */3 *"),
    ("@yearly", "0 0 1 1 *"),
    ("@annually", "0 0 1 1 *"),
];

/// A checked schedule: its JSON form (stored, and shown by `dags list`), a one-line summary,
/// and the timetable it stands for.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub json: Value,
    pub summary: String,
    pub timetable: Timetable,
}

impl Schedule {
    /// The asset condition the schedule mentions, on either path.
    pub fn assets(&self) -> Option<&AssetExpr> {
        self.timetable
            .asset_triggered()
            .or_else(|| self.timetable.asset_gate())
    }
}

/// The timetable of a stored schedule (`None`: no schedule).
pub fn timetable_of(json: Option<&Value>) -> Result<Timetable, String> {
    match json {
        None | Some(Value::Null) => Ok(Timetable::Null),
        Some(value) => parse(value).map(|s| s.timetable),
    }
}

/// A calendar or fixed step for `every = "…"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Every {
    pub count: u32,
    pub unit: EveryUnit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EveryUnit {
    Seconds,
    Minutes,
    Hours,
    Days,
    Weeks,
    Months,
    Years,
}

impl FromStr for Every {
    type Err = String;

    /// `30s`, `15m`, `1h`, `1d`, `2w`, `1mo`, `1y` (whitespace between number and unit allowed).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (number, unit) = s.split_at(split);
        let count: u32 = number
            .parse()
            .map_err(|_| format!("`{s}` must start with a whole number, e.g. `1h`"))?;
        if count == 0 {
            return Err(format!("`{s}` must be a positive step"));
        }
        let unit = match unit.trim() {
            "s" | "sec" | "second" | "seconds" => EveryUnit::Seconds,
            "m" | "min" | "minute" | "minutes" => EveryUnit::Minutes,
            "h" | "hour" | "hours" => EveryUnit::Hours,
            "d" | "day" | "days" => EveryUnit::Days,
            "w" | "week" | "weeks" => EveryUnit::Weeks,
            "mo" | "month" | "months" => EveryUnit::Months,
            "y" | "year" | "years" => EveryUnit::Years,
            other => {
                return Err(format!(
                    "unknown unit `{other}` in `{s}`; use s, m, h, d, w, mo or y"
                ))
            }
        };
        Ok(Every { count, unit })
    }
}

fn summary_of_time(json: &serde_json::Map<String, Value>) -> Option<String> {
    let tz = json
        .get("timezone")
        .and_then(Value::as_str)
        .map(|tz| format!(" ({tz})"))
        .unwrap_or_default();
    if let Some(cron) = json.get("cron").and_then(Value::as_str) {
        return Some(format!("{cron}{tz}"));
    }
    json.get("every")
        .and_then(Value::as_str)
        .map(|every| format!("every {every}"))
}

/// Checks `value` (a TOML string or table already converted to JSON). Errors are messages for
/// the `schedule` field; the caller adds file, line and DAG.
pub fn parse(value: &Value) -> Result<Schedule, String> {
    match value {
        Value::String(s) => {
            let s = s.trim();
            let timetable = match s {
                "@once" => Timetable::Once,
                "@continuous" => Timetable::Continuous,
                cron => Timetable::CronTrigger(CronSchedule::new(cron, chrono_tz::UTC)?),
            };
            Ok(Schedule {
                json: json!(s),
                summary: s.to_string(),
                timetable,
            })
        }
        Value::Object(table) => parse_table(table),
        _ => Err(
            "must be a cron string, a preset such as \"@daily\", or a table \
                  (cron, timezone, data_interval, every, assets, combine)"
                .into(),
        ),
    }
}

fn parse_table(table: &serde_json::Map<String, Value>) -> Result<Schedule, String> {
    const KEYS: &[&str] = &[
        "cron",
        "timezone",
        "data_interval",
        "every",
        "assets",
        "combine",
    ];
    for key in table.keys() {
        if !KEYS.contains(&key.as_str()) {
            return Err(format!(
                "unknown key `{key}`; expected one of: {}",
                KEYS.join(", ")
            ));
        }
    }
    let string = |key: &str| -> Result<Option<&str>, String> {
        match table.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(format!("`{key}` must be a string")),
        }
    };
    let cron = string("cron")?;
    let every = string("every")?;
    let timezone = string("timezone")?;
    let assets = string("assets")?;
    let combine = string("combine")?;
    let data_interval = match table.get("data_interval") {
        None => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => return Err("`data_interval` must be true or false".into()),
    };

    if cron.is_some() && every.is_some() {
        return Err("set either `cron` or `every`, not both".into());
    }
    if timezone.is_some() && cron.is_none() {
        return Err("`timezone` only applies to a `cron` schedule".into());
    }
    let tz = match timezone {
        None => chrono_tz::UTC,
        Some(tz) => tz.parse::<chrono_tz::Tz>().map_err(|_| {
            format!("`timezone`: `{tz}` is not an IANA time zone (e.g. \"Europe/Zurich\", \"UTC\")")
        })?,
    };
    let data_intervals = data_interval.unwrap_or(false);
    let time = match (cron, every) {
        (Some(cron), _) => {
            if cron == "@once" || cron == "@continuous" {
                return Err(format!(
                    "`cron = \"{cron}\"` is not a cron expression; write `schedule = \"{cron}\"`"
                ));
            }
            let schedule = CronSchedule::new(cron, tz).map_err(|e| format!("`cron`: {e}"))?;
            Some(if data_intervals {
                Timetable::CronDataInterval(schedule)
            } else {
                Timetable::CronTrigger(schedule)
            })
        }
        (None, Some(every)) => {
            let every = every
                .parse::<Every>()
                .map_err(|e| format!("`every`: {e}"))?;
            Some(if data_intervals {
                Timetable::DeltaDataInterval(every)
            } else {
                Timetable::DeltaTrigger(every)
            })
        }
        (None, None) => None,
    };
    let has_time = time.is_some();
    if data_interval.is_some() && !has_time {
        return Err("`data_interval` only applies to a `cron` or `every` schedule".into());
    }
    let expr = match assets {
        Some(text) => Some(AssetExpr::parse(text).map_err(|e| format!("`assets`: {e}"))?),
        None => None,
    };
    match (has_time, expr.is_some(), combine) {
        (false, false, _) => {
            return Err("a schedule table needs `cron`, `every` or `assets`".into());
        }
        (true, true, None) => {
            return Err("with both a time part and `assets`, set `combine = \"or\"` \
                        (run on either) or `combine = \"and\"` (run at the time once the assets arrived)"
                .into());
        }
        (_, _, Some(c)) if !(has_time && expr.is_some()) => {
            return Err(format!(
                "`combine = \"{c}\"` needs both a time part (`cron` or `every`) and `assets`"
            ));
        }
        (_, _, Some(c)) if c != "or" && c != "and" => {
            return Err(format!("`combine` must be \"or\" or \"and\", not \"{c}\""));
        }
        _ => {}
    }

    let json = Value::Object(table.clone());
    let summary_time = summary_of_time(table);
    let summary = match (&summary_time, &expr, combine) {
        (Some(t), Some(e), Some("and")) => format!("{t}, once {e}"),
        (Some(t), Some(e), _) => format!("{e} or {t}"),
        (Some(t), None, _) => t.clone(),
        (None, Some(e), _) => e.to_string(),
        (None, None, _) => String::new(),
    };
    let timetable = match (time, expr) {
        (Some(time), Some(expr)) if combine == Some("and") => {
            Timetable::AssetAndTime(Box::new(time), expr)
        }
        (Some(time), Some(expr)) => Timetable::AssetOrTime(Box::new(time), expr),
        (Some(time), None) => time,
        (None, Some(expr)) => Timetable::Assets(expr),
        (None, None) => Timetable::Null,
    };
    Ok(Schedule {
        json,
        summary,
        timetable,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_presets_and_cron() {
        for ok in [
            "@once",
            "@continuous",
            "@daily",
            "@quarterly",
            "0 1 * * 3",
            "*/5 * * * *",
        ] {
            assert!(parse(&json!(ok)).is_ok(), "{ok}");
        }
        assert!(parse(&json!("0 25 * * *"))
            .unwrap_err()
            .contains("0 25 * * *"));
        assert!(parse(&json!("every day")).unwrap_err().contains("5 fields"));
        assert!(parse(&json!("@fortnightly")).is_err());
    }

    #[test]
    fn tables() {
        let s = parse(&json!({"cron": "0 6 * * *", "timezone": "Europe/Zurich"})).unwrap();
        assert_eq!(s.summary, "0 6 * * * (Europe/Zurich)");
        let s = parse(&json!({"assets": "a & (b | c)"})).unwrap();
        assert_eq!(s.assets().unwrap().assets().len(), 3);
        assert!(matches!(s.timetable, Timetable::Assets(_)));
        let s = parse(&json!({"cron": "0 6 * * *", "assets": "orders", "combine": "and"})).unwrap();
        assert_eq!(s.summary, "0 6 * * *, once orders");
        assert!(matches!(s.timetable, Timetable::AssetAndTime(..)));
        assert!(parse(&json!({"every": "1mo", "data_interval": true})).is_ok());
    }

    #[test]
    fn table_mistakes_are_explained() {
        let cases = [
            (json!({"cron": "0 6 * * *", "every": "1h"}), "not both"),
            (json!({"cron": "0 6 * * *", "assets": "a"}), "combine"),
            (json!({"assets": "a", "combine": "or"}), "needs both"),
            (
                json!({"cron": "0 6 * * *", "assets": "a", "combine": "xor"}),
                "\"or\" or \"and\"",
            ),
            (
                json!({"cron": "0 6 * * *", "timezone": "Mars/Base"}),
                "IANA",
            ),
            (json!({"every": "1 fortnight"}), "unknown unit"),
            (json!({"crn": "0 6 * * *"}), "unknown key `crn`"),
            (json!({"assets": "a &"}), "`assets`"),
            (json!({"timezone": "UTC"}), "only applies"),
            (json!({}), "needs"),
        ];
        for (value, needle) in cases {
            let err = parse(&value).unwrap_err();
            assert!(err.contains(needle), "{value}: {err}");
        }
    }

    #[test]
    fn every_units() {
        assert_eq!(
            "90s".parse::<Every>().unwrap(),
            Every {
                count: 90,
                unit: EveryUnit::Seconds
            }
        );
        assert_eq!(
            "1 mo".parse::<Every>().unwrap(),
            Every {
                count: 1,
                unit: EveryUnit::Months
            }
        );
        assert!("0h".parse::<Every>().is_err());
        assert!("h".parse::<Every>().is_err());
    }
}
