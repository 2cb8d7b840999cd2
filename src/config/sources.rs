//! Where each configuration value came from (a line of the operator's file, or an environment
//! variable), and deserialising that reports every bad value at once, each named by its source.
//!
//! Invariant: a problem is never reported without the key it is about; when the key was set by
//! the operator, the message also says where (`config.toml:12`, `COFFER_LIMITS__MAX_UPLOAD_BYTES`).

use std::collections::BTreeMap;

use super::Config;

/// Where each dotted key (`limits.max_upload_bytes`) was last set.
#[derive(Debug, Default)]
pub(super) struct Origins(BTreeMap<String, String>);

impl Origins {
    /// Record the keys of a TOML file, by the line that sets them. A plain scan of table
    /// headers and `key =` lines: enough for configuration files, which is what this names.
    pub(super) fn add_file(&mut self, text: &str, file: &str) {
        let mut section = String::new();
        for (i, line) in text.lines().enumerate() {
            let t = line.trim();
            if let Some(header) = t.strip_prefix('[').and_then(|h| h.split(']').next()) {
                section = header.trim().trim_start_matches('[').to_owned();
                if !section.is_empty() {
                    self.0.insert(section.clone(), format!("{file}:{}", i + 1));
                }
                continue;
            }
            let Some((key, _)) = t.split_once('=') else {
                continue;
            };
            let key = key.trim().trim_matches('"');
            if key.is_empty() || key.starts_with('#') || key.contains([' ', '{', '}']) {
                continue;
            }
            let dotted = if section.is_empty() {
                key.to_owned()
            } else {
                format!("{section}.{key}")
            };
            self.0.insert(dotted, format!("{file}:{}", i + 1));
        }
    }

    /// Record a key set by an environment variable (it wins over the file).
    pub(super) fn add_env(&mut self, dotted: String, var: &str) {
        self.0.insert(dotted, var.to_owned());
    }

    /// Where `dotted`, or the nearest enclosing key, was set.
    fn of(&self, dotted: &str) -> Option<&str> {
        let mut key = dotted;
        loop {
            if let Some(o) = self.0.get(key) {
                return Some(o);
            }
            key = key.rsplit_once('.')?.0;
        }
    }

    /// `msg` with the source of the key it starts with (or names) appended.
    pub(super) fn annotate(&self, msg: String) -> String {
        // The longest key the message mentions, so `uploads.allowed.png` beats `uploads`.
        let named = self
            .0
            .iter()
            .filter(|(k, _)| k.contains('.') && msg.contains(k.as_str()))
            .max_by_key(|(k, _)| k.len())
            .map(|(_, o)| o.clone());
        match named {
            Some(origin) => format!("{msg} (set in {origin})"),
            None => msg,
        }
    }
}

/// The most problems reported for one configuration; past it the operator has bigger trouble.
const MAX_PROBLEMS: usize = 64;

/// Deserialise `merged`, reporting every key that is unknown or of the wrong type: after each
/// error the key is put back to its default (or removed, when it has none) and the rest is
/// tried again. On success, the configuration and no problems.
pub(super) fn deserialize_all(
    mut merged: toml::Table,
    defaults: &toml::Table,
    origins: &Origins,
) -> (Option<Config>, Vec<String>) {
    let mut problems = Vec::new();
    for _ in 0..MAX_PROBLEMS {
        let attempt: Result<Config, _> =
            serde_path_to_error::deserialize(toml::Value::Table(merged.clone()));
        let err = match attempt {
            Ok(config) => return (Some(config), problems),
            Err(e) => e,
        };
        let path = err.path().to_string();
        let msg = err.inner().to_string();
        let msg = msg.lines().next().unwrap_or_default().trim().to_owned();
        let key = unknown_field(&msg).map_or_else(
            || path.clone(),
            |f| {
                if path.is_empty() || path == "." {
                    f.to_owned()
                } else if path.ends_with(&format!(".{f}")) || path == f {
                    path.clone()
                } else {
                    format!("{path}.{f}")
                }
            },
        );
        let origin = origins
            .of(&key)
            .map(|o| format!(" (set in {o})"))
            .unwrap_or_default();
        problems.push(format!("{key}: {msg}{origin}"));
        if !reset(&mut merged, defaults, &key) {
            return (None, problems);
        }
    }
    (None, problems)
}

/// The field named by serde's "unknown field `x`, expected ..." message.
fn unknown_field(msg: &str) -> Option<&str> {
    msg.strip_prefix("unknown field `")?.split('`').next()
}

/// Put `dotted` back to its default, or remove it when there is none. False when the key
/// cannot be found (nothing changed, so trying again would fail the same way).
fn reset(merged: &mut toml::Table, defaults: &toml::Table, dotted: &str) -> bool {
    let parts: Vec<&str> = dotted.split('.').filter(|p| !p.is_empty()).collect();
    let Some((last, parents)) = parts.split_last() else {
        return false;
    };
    let mut table = merged;
    let mut default = Some(defaults);
    for p in parents {
        default = default
            .and_then(|d| d.get(*p))
            .and_then(toml::Value::as_table);
        match table.get_mut(*p) {
            Some(toml::Value::Table(t)) => table = t,
            _ => return false,
        }
    }
    match default.and_then(|d| d.get(*last)) {
        Some(v) => {
            let changed = table.get(*last) != Some(v);
            table.insert((*last).to_owned(), v.clone());
            changed
        }
        None => table.remove(*last).is_some(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_lines_are_found_per_section() {
        let mut o = Origins::default();
        o.add_file(
            "# c\n[server]\nbind = \"x\"\n\n[limits]\n  max_upload_bytes = 5 # n\n",
            "c.toml",
        );
        assert_eq!(o.of("server.bind"), Some("c.toml:3"));
        assert_eq!(o.of("limits.max_upload_bytes"), Some("c.toml:6"));
        assert_eq!(o.of("limits.other"), Some("c.toml:5"));
        o.add_env(
            "limits.max_upload_bytes".into(),
            "COFFER_LIMITS__MAX_UPLOAD_BYTES",
        );
        assert_eq!(
            o.annotate("limits.max_upload_bytes must be at least 1".into()),
            "limits.max_upload_bytes must be at least 1 (set in COFFER_LIMITS__MAX_UPLOAD_BYTES)"
        );
    }
}
