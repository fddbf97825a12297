//! The env file (`.env`): its `KEY=value` lines read with dotenvy, a line that cannot be read
//! reported with its file, line number, key and fix, and the keys that look like a misspelt
//! setting. The original app's own keys (`REDIS_URL`, `SQLALCHEMY_*`, …) sit in the same file,
//! so a key that is not a setting is fine; only one close to a setting's name is worth a warning.

use std::path::{Path, PathBuf};

use crate::error::ConfigError;

/// An env file that was read.
#[derive(Debug, Clone)]
pub struct EnvFile {
    pub path: PathBuf,
    /// The keys and values, in file order.
    pub vars: Vec<(String, String)>,
}

/// Reads the env file at `path`. A missing file is an error only when it was `named` (a missing
/// default `.env` is fine: `None`).
pub fn read(path: &Path, named: bool) -> Result<Option<EnvFile>, ConfigError> {
    let iter = match dotenvy::from_path_iter(path) {
        Ok(iter) => iter,
        Err(dotenvy::Error::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            return if named {
                Err(ConfigError::EnvFileMissing {
                    path: path.to_owned(),
                })
            } else {
                Ok(None)
            };
        }
        Err(source) => return Err(file_error(path, source)),
    };
    let vars = iter
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| file_error(path, source))?;
    Ok(Some(EnvFile {
        path: path.to_owned(),
        vars,
    }))
}

/// dotenvy names the text it could not parse, not its line: find the line, and say how to fix it.
fn file_error(path: &Path, source: dotenvy::Error) -> ConfigError {
    let dotenvy::Error::LineParse(text, _) = &source else {
        return ConfigError::EnvFile {
            path: path.to_owned(),
            source,
        };
    };
    let contents = std::fs::read_to_string(path).unwrap_or_default();
    match locate(&contents, text) {
        Some((line, key, value)) => ConfigError::EnvFileLine {
            path: path.to_owned(),
            line,
            problem: line_problem(&key, &value),
        },
        None => ConfigError::EnvFile {
            path: path.to_owned(),
            source,
        },
    }
}

/// The 1-based number, key and raw value of the first line containing `text`.
fn locate(contents: &str, text: &str) -> Option<(usize, String, String)> {
    let text = text.trim();
    contents.lines().enumerate().find_map(|(n, line)| {
        if text.is_empty() || !line.contains(text) {
            return None;
        }
        let line = line.trim_start();
        let line = line.strip_prefix("export ").unwrap_or(line);
        let (key, value) = line.split_once('=')?;
        Some((n + 1, key.trim().to_owned(), value.trim().to_owned()))
    })
}

/// What is wrong with `KEY=value` and the line that would work.
fn line_problem(key: &str, value: &str) -> String {
    let unquoted = value.trim_matches(|c| c == '"' || c == '\'');
    let escaped = unquoted.replace('\\', "\\\\").replace('"', "\\\"");
    if value.contains(char::is_whitespace) && !value.starts_with(['"', '\'']) {
        format!("{key}: a value with spaces must be quoted: write {key}=\"{escaped}\"")
    } else {
        format!("{key}: the value {value} cannot be read (an unclosed quote or a stray character?): write {key}=\"{escaped}\"")
    }
}

/// A warning for every key that is not a setting but is close to one: the same name in another
/// case, or one or two letters off (swapped, missing, extra or wrong).
pub fn misspelt_keys<'a>(
    file: &'a EnvFile,
    known: &'a [String],
) -> impl Iterator<Item = String> + 'a {
    file.vars.iter().filter_map(move |(key, _)| {
        if known.iter().any(|k| k == key) {
            return None;
        }
        let suggestion = closest(key, known)?;
        Some(format!(
            "{}: {key} is not a setting and is ignored; did you mean {suggestion}?",
            file.path.display()
        ))
    })
}

/// The known name `key` most likely misspells, if any.
fn closest<'a>(key: &str, known: &'a [String]) -> Option<&'a str> {
    let upper = key.to_ascii_uppercase();
    // Short names differ from each other by a letter or two; only longer ones can be misspelt
    // by two without meaning another word.
    let allowed = if upper.len() >= 8 { 2 } else { 1 };
    known
        .iter()
        .map(|k| (distance(&upper, k), k))
        .filter(|(d, _)| *d <= allowed)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k.as_str())
}

/// Edit distance with adjacent swaps (optimal string alignment), over bytes.
fn distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let width = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * width];
    for i in 0..=a.len() {
        d[i * width] = i;
    }
    for (j, cell) in d.iter_mut().enumerate().take(width) {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[(i - 1) * width + j] + 1)
                .min(d[i * width + j - 1] + 1)
                .min(d[(i - 1) * width + j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[(i - 2) * width + j - 2] + 1);
            }
            d[i * width + j] = best;
        }
    }
    d[a.len() * width + b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known() -> Vec<String> {
        [
            "ALLOW_ORIGINS",
            "ALLOW_CREDENTIALS",
            "ALLOW_METHODS",
            "ALLOW_HEADERS",
            "MAX_AGE",
            "PROXY_UPSTREAM",
            "PROXY_LISTEN",
            "TLS_CERT_FILE",
            "TLS_KEY_FILE",
        ]
        .map(String::from)
        .to_vec()
    }

    fn file(keys: &[&str]) -> EnvFile {
        EnvFile {
            path: PathBuf::from(".env"),
            vars: keys.iter().map(|k| (k.to_string(), "x".into())).collect(),
        }
    }

    #[test]
    fn misspelt_keys_get_a_suggestion() {
        // (key in the file, the suggestion, or None for no warning)
        let cases = [
            ("ALLOW_CREDENTAILS", Some("ALLOW_CREDENTIALS")),
            ("ALLOW_ORIGIN", Some("ALLOW_ORIGINS")),
            ("PROXY_UPSTRAEM", Some("PROXY_UPSTREAM")),
            ("allow_origins", Some("ALLOW_ORIGINS")),
            ("Max_Age", Some("MAX_AGE")),
            ("ALLOW_CREDENTIALS", None),
            // The original app's own keys.
            ("REDIS_URL", None),
            ("SQLALCHEMY_DATABASE_URL", None),
            ("SECRET_KEY", None),
            ("ALGORITHM", None),
            ("ACCESS_TOKEN_EXPIRE_MINUTES", None),
            ("MAX_AGES_X", None),
        ];
        let known = known();
        for (key, suggestion) in cases {
            let f = file(&[key]);
            let warnings: Vec<String> = misspelt_keys(&f, &known).collect();
            match suggestion {
                Some(s) => {
                    assert_eq!(warnings.len(), 1, "{key}: {warnings:?}");
                    assert!(
                        warnings[0].contains(&format!("did you mean {s}?")),
                        "{key}: {warnings:?}"
                    );
                    assert!(warnings[0].contains(".env"), "{warnings:?}");
                }
                None => assert!(warnings.is_empty(), "{key}: {warnings:?}"),
            }
        }
    }

    #[test]
    fn distances() {
        let cases = [
            ("ABC", "ABC", 0),
            ("ABC", "ACB", 1),
            ("ABC", "AB", 1),
            ("ABC", "ABCD", 1),
            ("ABC", "XBC", 1),
            ("", "AB", 2),
            ("KITTEN", "SITTING", 3),
        ];
        for (a, b, d) in cases {
            assert_eq!(distance(a, b), d, "{a} {b}");
        }
    }

    fn temp_file(name: &str, contents: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("proxy-envfile-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(".env");
        std::fs::write(&path, contents).unwrap();
        path
    }

    #[test]
    fn an_unreadable_line_is_named_with_its_fix() {
        let path = temp_file(
            "unquoted",
            "# CORS\nALLOW_ORIGINS=http://localhost\n\nALLOW_CREDENTIALS=yes please\n",
        );
        let err = read(&path, true).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains("line 4"), "{err}");
        assert!(
            err.contains(r#"write ALLOW_CREDENTIALS="yes please""#),
            "{err}"
        );
    }

    #[test]
    fn the_original_apps_env_file_reads() {
        let path = temp_file(
            "original",
            "# The tutorial's settings\nSQLALCHEMY_DATABASE_URL = \"sqlite:///./sql_app.db\"\n\
             REDIS_URL = \"redis://localhost:6379\"\nALLOW_ORIGINS=\"http://localhost:3000\"\n\
             ALLOW_CREDENTIALS=True\nALLOW_METHODS=\"*\"\nALLOW_HEADERS=\"*\"\n",
        );
        let file = read(&path, true).unwrap().unwrap();
        assert!(file
            .vars
            .contains(&("ALLOW_ORIGINS".into(), "http://localhost:3000".into())));
        assert_eq!(misspelt_keys(&file, &known()).count(), 0);
        assert!(read(&path.with_file_name("absent"), false)
            .unwrap()
            .is_none());
    }
}
