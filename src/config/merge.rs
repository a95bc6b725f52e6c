//! File tables before they are typed: TOML parsing, `${VAR}` expansion, merging over the
//! embedded default (which is the schema), `AGENT_REGISTRY_*` overrides, and the origin
//! of every value.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use toml::{Table, Value};

use super::base::{invalid, ConfigError, EMBEDDED};

pub(super) type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Sections whose keys are names chosen by the user (checked one level down), and that
/// get no derived environment overrides: `upstreams."docker.io"` has no variable name.
pub(super) const NAMED_SECTIONS: [&str; 1] = ["upstreams"];

/// Keys whose value is an array of tables (`[[auth.users]]`, `[[policy.signatures]]`, the
/// top-level `[[preheat]]`); their default is empty and the typed section checks each
/// table's keys.
const TABLE_ARRAYS: [&str; 4] = ["auth.users", "auth.rules", "policy.signatures", "preheat"];

/// Where each dotted key's value came from; keys not listed come from the embedded default.
#[derive(Default)]
pub(super) struct Origins(pub(super) BTreeMap<String, String>);

impl Origins {
    /// `config <path>`, `environment <VAR>` or `config embedded default`. A key inside
    /// an array or an array of tables (`a.b[2]`, `auth.users[0].name`) has the origin of
    /// the nearest enclosing key that has one.
    pub(super) fn origin(&self, key: &str) -> String {
        let enclosing = key.match_indices('[').rev().map(|(i, _)| &key[..i]);
        std::iter::once(key)
            .chain(enclosing)
            .find_map(|k| self.0.get(k).cloned())
            .unwrap_or_else(|| format!("config {EMBEDDED}"))
    }

    pub(super) fn check<T>(&self, key: &str, result: Result<T, String>) -> Result<T, ConfigError> {
        result.map_err(|problem| invalid(&self.origin(key), key, problem))
    }

    pub(super) fn section<T: DeserializeOwned>(
        &self,
        table: &mut Table,
        key: &str,
    ) -> Result<T, ConfigError> {
        match table.remove(key) {
            Some(value) => self.parse(key, value),
            None => self.check(key, Err("missing section".to_string())),
        }
    }

    pub(super) fn parse<T: DeserializeOwned>(&self, key: &str, v: Value) -> Result<T, ConfigError> {
        let parsed = v
            .try_into()
            .map_err(|e: toml::de::Error| one_line(e.message()));
        self.check(key, parsed)
    }
}

pub(super) fn parse_table(text: &str, label: &str) -> Result<Table, ConfigError> {
    text.parse::<Table>().map_err(|e| {
        let before = text.get(..e.span().map_or(0, |s| s.start)).unwrap_or(text);
        ConfigError::Syntax {
            origin: label.to_string(),
            line: before.matches('\n').count() + 1,
            column: before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1,
            message: one_line(e.message()),
        }
    })
}

pub(super) fn one_line(message: &str) -> String {
    message.trim().replace(['\r', '\n'], "; ")
}

/// `prefix.key`, quoting `key` as TOML does when it is not a bare key (`upstreams."docker.io"`).
pub(super) fn join(prefix: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let key = match bare {
        true => key.to_string(),
        false => format!("{key:?}"),
    };
    match prefix {
        "" => key,
        _ => format!("{prefix}.{key}"),
    }
}

/// Replaces `${VAR}` in every string under `value`.
pub(super) fn expand_value(
    value: &mut Value,
    path: &str,
    env: Env,
    label: &str,
) -> Result<(), ConfigError> {
    match value {
        Value::String(s) if s.contains('$') => {
            *s = expand(s, env).map_err(|problem| invalid(label, path, problem))?;
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                expand_value(item, &format!("{path}[{i}]"), env, label)?;
            }
        }
        Value::Table(table) => {
            for (key, item) in table.iter_mut() {
                expand_value(item, &join(path, key), env, label)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Replaces `${VAR}` from `env`; `$${` is a literal `${`, any other `$` stays.
pub(super) fn expand(s: &str, env: Env) -> Result<String, String> {
    let (mut out, mut rest) = (String::with_capacity(s.len()), s);
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(body) = tail.strip_prefix("${") {
            let end = body
                .find('}')
                .ok_or("unterminated ${ (write $${ for a literal ${)")?;
            let name = &body[..end];
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("invalid environment variable name {name:?}"));
            }
            out.push_str(&env(name).ok_or(format!("environment variable {name} is not set"))?);
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Gives every name in a [`NAMED_SECTIONS`] table of `over` that `base` lacks a copy of
/// `template`, so [`merge`] checks its keys against the template. The new keys are
/// attributed to `label`: a missing `url` is the user's to fix.
pub(super) fn add_named(
    base: &mut Table,
    over: &Table,
    template: &Table,
    label: &str,
    o: &mut Origins,
) {
    for section in NAMED_SECTIONS {
        let (Some(Value::Table(names)), Some(Value::Table(slots))) =
            (over.get(section), base.get_mut(section))
        else {
            continue;
        };
        let new: Vec<&String> = names.keys().filter(|n| !slots.contains_key(*n)).collect();
        for name in new {
            slots.insert(name.clone(), Value::Table(template.clone()));
            let prefix = join(section, name);
            for key in template.keys() {
                o.0.insert(join(&prefix, key), label.to_string());
            }
        }
    }
}

/// Merges `over` into `base` key by key; a key absent from `base` (the default) is unknown.
pub(super) fn merge(
    base: &mut Table,
    over: Table,
    prefix: &str,
    label: &str,
    o: &mut Origins,
) -> Result<(), ConfigError> {
    for (key, value) in over {
        let path = join(prefix, &key);
        let Some(slot) = base.get_mut(&key) else {
            return Err(ConfigError::UnknownKey {
                origin: label.to_string(),
                key: path,
            });
        };
        same_type_at(&path, slot, &value).map_err(|problem| invalid(label, &path, problem))?;
        o.0.insert(path.clone(), label.to_string());
        match (slot, value) {
            (Value::Table(slot), Value::Table(value)) => merge(slot, value, &path, label, o)?,
            (slot, value) => *slot = value,
        }
    }
    Ok(())
}

/// [`same_type`], except that the keys of [`TABLE_ARRAYS`] hold arrays of tables.
fn same_type_at(path: &str, default: &Value, value: &Value) -> Result<(), String> {
    if !TABLE_ARRAYS.contains(&path) {
        return same_type(default, value);
    }
    match value {
        Value::Array(items) => match items.iter().position(|v| !v.is_table()) {
            Some(i) => Err(format!(
                "expected an array of tables, found {} at index {i}",
                items[i].type_str()
            )),
            None => Ok(()),
        },
        v => Err(format!(
            "expected an array of tables, found {}",
            v.type_str()
        )),
    }
}

/// Checks that `value` has the type of the default (an integer may stand for a float).
/// Array items take the type of the default's first item; every array in the schema
/// holds strings, so an empty default array wants strings.
pub(super) fn same_type(default: &Value, value: &Value) -> Result<(), String> {
    let (want, got) = (default.type_str(), value.type_str());
    match (default, value) {
        (Value::Array(defaults), Value::Array(items)) => {
            let want = defaults.first().map_or("string", Value::type_str);
            match items.iter().enumerate().find(|(_, v)| v.type_str() != want) {
                Some((i, v)) => Err(format!(
                    "expected an array of {want}s, found {} {v} at index {i}",
                    v.type_str()
                )),
                None => Ok(()),
            }
        }
        (Value::Float(_), _) if value.is_integer() => Ok(()),
        _ if want == got => Ok(()),
        (Value::String(_), _) => Err(format!(
            "expected a string like {default}, found {got} {value}"
        )),
        _ => Err(format!("expected {want}, found {got}")),
    }
}

/// Applies `AGENT_REGISTRY_<SECTION>_<KEY>` for every section and key of the default,
/// except the [`NAMED_SECTIONS`].
pub(super) fn apply_env(
    merged: &mut Table,
    default: &Table,
    env: Env,
    o: &mut Origins,
) -> Result<(), ConfigError> {
    for (section, keys) in default {
        let (Value::Table(keys), Some(Value::Table(target))) = (keys, merged.get_mut(section))
        else {
            continue;
        };
        if NAMED_SECTIONS.contains(&section.as_str()) {
            continue;
        }
        for (key, default_value) in keys {
            let var = format!("AGENT_REGISTRY_{section}_{key}").to_uppercase();
            let Some(raw) = env(&var) else { continue };
            let (path, label) = (format!("{section}.{key}"), format!("environment {var}"));
            let value =
                env_value(&raw, &path, default_value).map_err(|e| invalid(&label, &path, e))?;
            target.insert(key.clone(), value);
            let nested = format!("{path}.");
            o.0.retain(|k, _| !k.starts_with(&nested));
            o.0.insert(path, label);
        }
    }
    Ok(())
}

/// Converts an environment string to the type of the default: a string stays
/// a string, anything else is parsed as a TOML value (`42`, `true`, `["a"]`).
pub(super) fn env_value(raw: &str, path: &str, default: &Value) -> Result<Value, String> {
    if default.is_str() {
        return Ok(Value::String(raw.to_string()));
    }
    let parsed = format!("v = {raw}").parse::<Table>().ok();
    let value = parsed.and_then(|mut t| t.remove("v"));
    let value = value.ok_or_else(|| format!("invalid {} {raw:?}", default.type_str()))?;
    same_type_at(path, default, &value)?;
    Ok(value)
}
