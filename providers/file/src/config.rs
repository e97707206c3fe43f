//! Kwargs parsing (no I/O, runs at `dags sync` time) and, at run time, the resolution of
//! `filepath` into a watch root plus a matcher.

use std::io;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use glob::{MatchOptions, Pattern};
use serde::{Deserialize, Deserializer};
use triggerer_sdk::de::{self, Seconds};
use triggerer_sdk::{KwargsError, TriggerError};

/// A periodic rescan more often than this would only burn CPU: notifications already give
/// sub-second latency, the rescan is a safety net.
const MIN_POKE_INTERVAL: Duration = Duration::from_millis(100);

/// Validated kwargs of one file trigger. `null` stands for "not given" (JSON producers write
/// unset kwargs so).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table with `filepath` (and optionally recursive, include_modified, poke_interval)"
)]
pub struct FileTriggerConfig {
    /// A directory, a file, or a glob pattern over full paths; relative paths are resolved
    /// against the triggerer's working directory when the trigger starts.
    #[serde(deserialize_with = "de::non_blank")]
    pub filepath: String,
    /// Also watch subdirectories (a `**` in the pattern implies it).
    #[serde(default, deserialize_with = "de::null_as_default")]
    pub recursive: bool,
    /// Also emit when an already emitted file is rewritten in place.
    #[serde(default, deserialize_with = "de::null_as_default")]
    pub include_modified: bool,
    /// Period of the safety-net rescan; `None`: rely on notifications alone.
    #[serde(default, deserialize_with = "poke_interval")]
    pub poke_interval: Option<Duration>,
}

fn poke_interval<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let period = Option::<Seconds>::deserialize(d)?;
    Ok(period.map(|Seconds(p)| p.max(MIN_POKE_INTERVAL)))
}

/// What a missing `filepath` should be.
pub(crate) const FILEPATH_HINT: &str =
    "a directory, a file, or a glob pattern such as /data/in/*.csv";

impl FileTriggerConfig {
    /// The rules serde does not express. No I/O.
    pub(crate) fn check(&self) -> Result<(), KwargsError> {
        if self.filepath.contains('\0') {
            return Err(KwargsError::new("filepath", "must not contain a NUL byte"));
        }
        if let Err(e) = Pattern::new(&self.filepath) {
            return Err(KwargsError::new(
                "filepath",
                format!("invalid glob pattern {:?}: {e}", self.filepath),
            ));
        }
        Ok(())
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
    /// Single-file mode: exactly this path (under the root, its parent), hidden or not, since
    /// the user spelled its name.
    File { path: PathBuf },
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
            let named = normalize(&absolute);
            // A path that is not a directory names one file, there or still to come (Airflow's
            // most common use: wait for a flag file); a trailing `/` insists on a directory.
            let spelled_as_dir = config.filepath.ends_with('/') || config.filepath.ends_with("/.");
            let single_file = !spelled_as_dir
                && named.file_name().is_some()
                && match std::fs::metadata(&named) {
                    Ok(meta) => !meta.is_dir(),
                    Err(e) => matches!(
                        e.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                    ),
                };
            match named.parent() {
                Some(parent) if single_file => (
                    parent.to_path_buf(),
                    false,
                    Some(1),
                    Matcher::File {
                        path: named.clone(),
                    },
                ),
                _ => (
                    named,
                    config.recursive,
                    (!config.recursive).then_some(1),
                    Matcher::Dir {
                        recursive: config.recursive,
                    },
                ),
            }
        };

        match std::fs::metadata(&root) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                let why = match matcher {
                    Matcher::Glob { .. } => {
                        " (the part of a glob pattern before its first wildcard must be one)"
                    }
                    _ => "",
                };
                return Err(TriggerError::failed(format!(
                    "filepath {:?}: {} is not a directory{why}",
                    config.filepath,
                    root.display()
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let why = match matcher {
                    Matcher::File { .. } => {
                        " (a single file is waited for in its directory, which must exist)"
                    }
                    _ => "",
                };
                return Err(TriggerError::failed(format!(
                    "filepath {:?}: directory {} does not exist{why}",
                    config.filepath,
                    root.display()
                )));
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
            Matcher::File { path: file } => path == file,
        }
    }

    /// The file a single-file target waits for.
    pub fn single_file(&self) -> Option<&Path> {
        match &self.matcher {
            Matcher::File { path } => Some(path),
            _ => None,
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
            Matcher::File { path } => path.file_name() == Some(name),
        }
    }

    /// Whether a walk should look inside `dir` (a directory at `depth`, root = 0).
    pub fn descends_into(&self, dir_name: &std::ffi::OsStr, depth: usize) -> bool {
        if !self.recursive_watch || self.max_depth.is_some_and(|max| depth >= max) {
            return false;
        }
        match self.matcher {
            Matcher::Dir { .. } => !is_hidden(dir_name),
            Matcher::Glob { .. } | Matcher::File { .. } => true,
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

    fn resolve(filepath: String) -> Result<Target, TriggerError> {
        Target::resolve(&FileTriggerConfig {
            filepath,
            recursive: true,
            include_modified: false,
            poke_interval: None,
        })
    }

    #[test]
    fn a_path_that_is_no_directory_is_a_single_file_in_its_parent() {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().display().to_string();
        std::fs::write(dir.path().join("there.flag"), b"x").expect("file");
        for name in ["there.flag", "not-yet.flag", ".hidden"] {
            let t = resolve(format!("{root}/{name}")).expect("single file");
            let path = dir.path().join(name);
            assert_eq!(t.single_file(), Some(path.as_path()));
            assert_eq!(t.root, dir.path());
            assert!(!t.recursive_watch, "`recursive` means nothing for one file");
            assert!(t.matches(&path), "{name}");
            assert!(t.may_match_name(std::ffi::OsStr::new(name)), "{name}");
            assert!(!t.matches(&dir.path().join("other.flag")));
            assert!(!t.matches(&dir.path().join(format!("{name}2"))));
        }
        let t = resolve(root.clone()).expect("directory");
        assert_eq!(t.single_file(), None);
        // A trailing `/` insists on a directory, even a missing one.
        let err = resolve(format!("{root}/missing/")).expect_err("no such directory");
        assert!(err.to_string().contains("does not exist"), "{err}");
        let err = resolve(format!("{root}/there.flag/")).expect_err("a file is no directory");
        assert!(err.to_string().contains("is not a directory"), "{err}");
        // A single file's directory must exist.
        let err = resolve(format!("{root}/missing/ready.flag")).expect_err("no parent");
        assert!(err.to_string().contains("which must exist"), "{err}");
        let err = resolve(format!("{root}/there.flag/ready.flag")).expect_err("parent is a file");
        assert!(err.to_string().contains("is not a directory"), "{err}");
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
