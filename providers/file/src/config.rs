//! Kwargs parsing (no I/O, runs at `dags sync` time) and, at run time, the resolution of
//! `filepath` into a watch root plus a matcher.

use std::io;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use glob::{MatchOptions, Pattern};
use serde_json::Value;
use triggerer_sdk::{KwargsError, TriggerError};

/// The kwargs a watcher may give, in the order the docs list them.
pub(crate) const KWARGS: &[&str] = &["filepath", "recursive", "include_modified", "poke_interval"];

/// A periodic rescan more often than this would only burn CPU: notifications already give
/// sub-second latency, the rescan is a safety net.
const MIN_POKE_INTERVAL: Duration = Duration::from_millis(100);

/// Validated kwargs of one file trigger.
#[derive(Debug, Clone, PartialEq)]
pub struct FileTriggerConfig {
    /// A directory, or a glob pattern over full paths; relative paths are resolved against the
    /// triggerer's working directory when the trigger starts.
    pub filepath: String,
    /// Also watch subdirectories (a `**` in the pattern implies it).
    pub recursive: bool,
    /// Also emit when an already emitted file is rewritten in place.
    pub include_modified: bool,
    /// Period of the safety-net rescan; `None`: rely on notifications alone.
    pub poke_interval: Option<Duration>,
}

impl FileTriggerConfig {
    /// Parses and checks `kwargs` without touching the filesystem.
    pub fn from_kwargs(kwargs: &Value) -> Result<Self, KwargsError> {
        let map = kwargs.as_object().ok_or_else(|| {
            KwargsError::new(
                "",
                format!(
                    "expected a JSON object with `filepath` (and optionally {}), got {}",
                    KWARGS[1..].join(", "),
                    json_type(kwargs)
                ),
            )
        })?;
        // Sorted so that the error names the same key every time.
        let mut keys: Vec<&String> = map.keys().collect();
        keys.sort();
        if let Some(unknown) = keys.into_iter().find(|k| !KWARGS.contains(&k.as_str())) {
            return Err(KwargsError::new(
                unknown.as_str(),
                format!("unknown kwarg; expected one of: {}", KWARGS.join(", ")),
            ));
        }

        let filepath = match map.get("filepath") {
            None | Some(Value::Null) => {
                return Err(KwargsError::new(
                    "filepath",
                    "required: a directory or a glob pattern such as /data/in/*.csv",
                ))
            }
            Some(Value::String(s)) if s.trim().is_empty() => {
                return Err(KwargsError::new("filepath", "must not be empty"))
            }
            Some(Value::String(s)) => s.clone(),
            Some(other) => {
                return Err(KwargsError::new(
                    "filepath",
                    format!("expected a string, got {}", json_type(other)),
                ))
            }
        };
        if filepath.contains('\0') {
            return Err(KwargsError::new("filepath", "must not contain a NUL byte"));
        }
        if let Err(e) = Pattern::new(&filepath) {
            return Err(KwargsError::new(
                "filepath",
                format!("invalid glob pattern {filepath:?}: {e}"),
            ));
        }

        let recursive = optional_bool(map.get("recursive"), "recursive")?;
        let include_modified = optional_bool(map.get("include_modified"), "include_modified")?;
        let poke_interval = match map.get("poke_interval") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => {
                let secs = n
                    .as_f64()
                    .filter(|s| s.is_finite() && *s > 0.0)
                    .ok_or_else(|| {
                        KwargsError::new(
                            "poke_interval",
                            format!("expected a number of seconds > 0, got {n}"),
                        )
                    })?;
                let period = Duration::try_from_secs_f64(secs).map_err(|_| {
                    KwargsError::new("poke_interval", format!("{secs} seconds is too large"))
                })?;
                Some(period.max(MIN_POKE_INTERVAL))
            }
            Some(other) => {
                return Err(KwargsError::new(
                    "poke_interval",
                    format!("expected a number of seconds > 0, got {}", json_type(other)),
                ))
            }
        };

        Ok(Self {
            filepath,
            recursive,
            include_modified,
            poke_interval,
        })
    }
}

fn optional_bool(value: Option<&Value>, field: &str) -> Result<bool, KwargsError> {
    match value {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(KwargsError::new(
            field,
            format!("expected a boolean, got {}", json_type(other)),
        )),
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn has_glob_meta(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

fn is_hidden(name: &std::ffi::OsStr) -> bool {
    name.as_encoded_bytes().first() == Some(&b'.')
}

/// Which files of the watched tree a trigger emits.
#[derive(Debug)]
enum Matcher {
    /// Directory mode: every regular file under the root (direct children only unless
    /// recursive), hidden names excluded so that writers' temporary files are not emitted.
    Dir { recursive: bool },
    /// Glob mode: the pattern is matched against the full absolute path.
    Glob {
        pattern: Pattern,
        options: MatchOptions,
        /// The pattern's last component, when a matching path's file name must match it alone
        /// (no `**` there, and `*` cannot span `/`): a cheap first test during a scan.
        name_pattern: Option<Pattern>,
    },
}

/// `filepath` resolved at run time: where to watch and what to emit.
#[derive(Debug)]
pub(crate) struct Target {
    /// The root as the user spelled it (made absolute): payload paths are under it.
    pub root: PathBuf,
    /// The root with symlinks resolved: what the OS watch and the routing table use, so that two
    /// spellings of one directory share one watch.
    pub watch_root: PathBuf,
    /// Whether the OS watch must cover subdirectories.
    pub recursive_watch: bool,
    /// Deepest level (direct children = 1) at which a file can match; `None`: unbounded.
    pub max_depth: Option<usize>,
    matcher: Matcher,
}

impl Target {
    /// Resolves `config.filepath`. Does blocking I/O (cwd, stat, canonicalize).
    pub fn resolve(config: &FileTriggerConfig) -> Result<Self, TriggerError> {
        let cwd = || {
            std::env::current_dir()
                .map_err(|e| TriggerError::io("cannot read the working directory", e))
        };
        let (root, recursive_watch, max_depth, matcher) = if has_glob_meta(&config.filepath) {
            let absolute = if config.filepath.starts_with('/') {
                config.filepath.clone()
            } else {
                let cwd = cwd()?;
                let cwd = cwd.to_str().ok_or_else(|| {
                    TriggerError::failed(format!(
                        "the working directory {} is not UTF-8; give filepath as an absolute path",
                        cwd.display()
                    ))
                })?;
                format!("{}/{}", Pattern::escape(cwd), config.filepath)
            };
            let parts: Vec<&str> = absolute
                .split('/')
                .filter(|c| !c.is_empty() && *c != ".")
                .collect();
            let literal = parts.iter().take_while(|c| !has_glob_meta(c)).count();
            let globbed = &parts[literal..];
            let double_star = globbed.contains(&"**");
            let root: PathBuf = std::iter::once("/")
                .chain(parts[..literal].iter().copied())
                .collect();
            let normalized = format!("/{}", parts.join("/"));
            let pattern = Pattern::new(&normalized).map_err(|e| {
                TriggerError::failed(format!("invalid glob pattern {normalized:?}: {e}"))
            })?;
            let unbounded = config.recursive || double_star;
            let name_pattern = match parts.last() {
                Some(last) if !config.recursive && *last != "**" => Pattern::new(last).ok(),
                _ => None,
            };
            let matcher = Matcher::Glob {
                pattern,
                options: MatchOptions {
                    case_sensitive: true,
                    // Without `recursive`, `*` stays within one path component, as in a shell.
                    require_literal_separator: !config.recursive,
                    // As Python's glob: `*` does not match writers' hidden temporary files.
                    require_literal_leading_dot: true,
                },
                name_pattern,
            };
            (
                root,
                unbounded || globbed.len() > 1,
                (!unbounded).then_some(globbed.len()),
                matcher,
            )
        } else {
            let path = Path::new(&config.filepath);
            let absolute = if path.is_absolute() {
                path.to_path_buf()
            } else {
                cwd()?.join(path)
            };
            let root = normalize(&absolute);
            let matcher = Matcher::Dir {
                recursive: config.recursive,
            };
            (
                root,
                config.recursive,
                (!config.recursive).then_some(1),
                matcher,
            )
        };

        match std::fs::metadata(&root) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(TriggerError::failed(format!(
                    "filepath {:?}: {} is not a directory (give a directory, or a glob pattern \
                     whose directory part exists)",
                    config.filepath,
                    root.display()
                )))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(TriggerError::failed(format!(
                    "filepath {:?}: directory {} does not exist",
                    config.filepath,
                    root.display()
                )))
            }
            Err(e) => {
                return Err(TriggerError::io(
                    format!(
                        "filepath {:?}: cannot stat {}",
                        config.filepath,
                        root.display()
                    ),
                    e,
                ))
            }
        }
        let watch_root = std::fs::canonicalize(&root).map_err(|e| {
            TriggerError::io(
                format!(
                    "filepath {:?}: cannot resolve {}",
                    config.filepath,
                    root.display()
                ),
                e,
            )
        })?;

        Ok(Self {
            root,
            watch_root,
            recursive_watch,
            max_depth,
            matcher,
        })
    }

    /// Whether a regular file at `path` (under `root`) is one this trigger emits.
    pub fn matches(&self, path: &Path) -> bool {
        let Ok(relative) = path.strip_prefix(&self.root) else {
            return false;
        };
        let depth = relative.components().count();
        if depth == 0 || self.max_depth.is_some_and(|max| depth > max) {
            return false;
        }
        match &self.matcher {
            Matcher::Dir { recursive } => {
                (*recursive || depth == 1)
                    && relative.components().all(|c| match c {
                        Component::Normal(name) => !is_hidden(name),
                        _ => false,
                    })
            }
            Matcher::Glob {
                pattern, options, ..
            } => pattern.matches_path_with(path, *options),
        }
    }

    /// False when no file named `name` can match, whatever its directory: lets a scan skip
    /// most entries of a shared directory without building their paths (with 100,000 globs
    /// over 100 directories, full matching was most of the start-up time).
    pub fn may_match_name(&self, name: &std::ffi::OsStr) -> bool {
        match &self.matcher {
            Matcher::Dir { .. } => !is_hidden(name),
            Matcher::Glob {
                name_pattern: Some(last),
                options,
                ..
            } => name
                .to_str()
                .is_none_or(|name| last.matches_with(name, *options)),
            Matcher::Glob { .. } => true,
        }
    }

    /// Whether a walk should look inside `dir` (a directory at `depth`, root = 0).
    pub fn descends_into(&self, dir_name: &std::ffi::OsStr, depth: usize) -> bool {
        if !self.recursive_watch || self.max_depth.is_some_and(|max| depth >= max) {
            return false;
        }
        match self.matcher {
            Matcher::Dir { .. } => !is_hidden(dir_name),
            Matcher::Glob { .. } => true,
        }
    }

    /// Maps a path reported under `watch_root` back to the user's spelling of the root.
    pub fn to_user_path(&self, watched: &Path) -> Option<PathBuf> {
        if self.root == self.watch_root {
            return watched
                .starts_with(&self.root)
                .then(|| watched.to_path_buf());
        }
        let relative = watched.strip_prefix(&self.watch_root).ok()?;
        Some(if relative.as_os_str().is_empty() {
            self.root.clone()
        } else {
            self.root.join(relative)
        })
    }

    /// Depth of `path` below the root (root = 0), if it is under it.
    pub fn depth_of(&self, path: &Path) -> Option<usize> {
        path.strip_prefix(&self.root)
            .ok()
            .map(|r| r.components().count())
    }
}

/// Drops `.` components and trailing separators without resolving symlinks or `..` (which
/// would change what the user named).
fn normalize(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(root: &Path, pattern: &str, recursive: bool) -> Target {
        Target::resolve(&FileTriggerConfig {
            filepath: format!("{}/{pattern}", root.display()),
            recursive,
            include_modified: false,
            poke_interval: None,
        })
        .expect("target")
    }

    /// The name test is only a shortcut: it may never reject a path the full match accepts.
    #[test]
    fn the_file_name_shortcut_never_rejects_a_match() {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path();
        std::fs::create_dir(root.join("sub")).expect("sub");
        let paths = [
            "f000123.dat",
            "f000124.dat",
            ".f000123.dat",
            "sub/f000123.dat",
            "sub/x.csv",
            "sub/deeper/x.csv",
            "x.csv",
            "a1/2b",
            "ab",
        ];
        for (pattern, recursive) in [
            ("f000123.*", false),
            ("*.csv", false),
            ("*/x.csv", false),
            ("**/x.csv", false),
            ("sub/**", false),
            ("a*b", true),
            ("*.csv", true),
            ("f00012[34].dat", false),
        ] {
            let t = target(root, pattern, recursive);
            let mut matched = 0;
            for relative in paths {
                let path = t.root.join(relative);
                let name = path.file_name().expect("name");
                if t.matches(&path) {
                    matched += 1;
                    assert!(
                        t.may_match_name(name),
                        "{pattern} (recursive {recursive}) matches {relative} but the name test rejects it"
                    );
                }
            }
            assert!(matched > 0, "{pattern} matches none of the sample paths");
        }
        let exact = target(root, "f000123.*", false);
        assert!(!exact.may_match_name(std::ffi::OsStr::new("f000124.dat")));
        assert!(exact.may_match_name(std::ffi::OsStr::new("f000123.dat")));
    }
}
