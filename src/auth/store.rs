//! `<data_dir>/auth.db` (SQLite, WAL): API tokens (hashes only), permissions and
//! visibility set at run time, the audit log and the rolling access log. Kept apart from
//! the image metadata so the access log's writes never queue behind a push.

use super::policy::{Actions, Grant, Subject};
use crate::config::Visibility;
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use sha2::Digest;
use std::path::Path;
use std::sync::Mutex;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS api_tokens (
    id TEXT PRIMARY KEY, user TEXT NOT NULL, hash TEXT NOT NULL UNIQUE, scopes TEXT NOT NULL,
    created INTEGER NOT NULL, expires INTEGER, revoked INTEGER
);
CREATE TABLE IF NOT EXISTS permissions (
    repo TEXT NOT NULL, kind TEXT NOT NULL, subject TEXT NOT NULL, actions TEXT NOT NULL,
    created INTEGER NOT NULL,
    PRIMARY KEY (repo, kind, subject)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS visibility (
    repo TEXT PRIMARY KEY, visibility TEXT NOT NULL, updated INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY, ts_ms INTEGER NOT NULL, event TEXT NOT NULL, user TEXT,
    client TEXT, repo TEXT, detail TEXT
);
CREATE INDEX IF NOT EXISTS audit_ts ON audit(ts_ms);
CREATE TABLE IF NOT EXISTS access (
    id INTEGER PRIMARY KEY, ts_ms INTEGER NOT NULL, client TEXT NOT NULL, user TEXT NOT NULL,
    method TEXT NOT NULL, route TEXT NOT NULL, repo TEXT, status INTEGER NOT NULL,
    bytes INTEGER, duration_us INTEGER NOT NULL, cache TEXT NOT NULL,
    outcome TEXT NOT NULL DEFAULT 'ok'
);
CREATE TABLE IF NOT EXISTS pulls (repo TEXT PRIMARY KEY, count INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS log_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY, hash TEXT NOT NULL, groups TEXT NOT NULL, updated INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS users_version (id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL);
"#;

/// The access log has no index: every one tripled the cost of a record. A record's id
/// is its timestamp shifted left by this many bits (plus a sequence within the
/// millisecond, carried into the next when one overflows), so a time range is a range
/// of row ids. Always `ts_ms <= id >> ID_SHIFT`.
const ID_SHIFT: u32 = 12;

/// The row id a record at `ts_ms` gets after the row id `last`.
fn next_access_id(last: i64, ts_ms: u64) -> i64 {
    let keyed = i64::try_from(ts_ms).unwrap_or(i64::MAX >> ID_SHIFT) << ID_SHIFT;
    keyed.max(last.saturating_add(1))
}

/// The lowest row id a record at or after `ts_ms` can have.
fn first_access_id(ts_ms: u64) -> i64 {
    i64::try_from(ts_ms).unwrap_or(i64::MAX >> ID_SHIFT) << ID_SHIFT
}

/// Brings an access log written before its row ids were time-keyed up to date, in one
/// transaction: counts its pulls, re-keys its ids and drops its three indexes.
fn migrate_access_log(conn: &mut Connection) -> Result<()> {
    let legacy: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = 'access_ts')",
        [],
        |r| r.get(0),
    )?;
    let tx = conn.transaction()?;
    if legacy {
        tx.execute_batch(&format!(
            "INSERT INTO pulls (repo, count)
                 SELECT repo, COUNT(*) FROM access
                 WHERE repo IS NOT NULL AND route = 'manifest' AND method = 'GET' AND status = 200
                 GROUP BY repo
                 ON CONFLICT (repo) DO UPDATE SET count = count + excluded.count;
             UPDATE access SET id = (ts_ms << {ID_SHIFT}) + (id & {seq});
             DROP INDEX access_ts;
             DROP INDEX IF EXISTS access_user_ts;
             DROP INDEX IF EXISTS access_repo;
             DELETE FROM log_meta WHERE key = 'access_rows';",
            seq = (1 << ID_SHIFT) - 1
        ))?;
    }
    // Logs from before outcomes were recorded: every row counts as sent whole.
    let outcome: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM pragma_table_info('access') WHERE name = 'outcome')",
        [],
        |r| r.get(0),
    )?;
    if !outcome {
        tx.execute(
            "ALTER TABLE access ADD COLUMN outcome TEXT NOT NULL DEFAULT 'ok'",
            [],
        )?;
    }
    let counted: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM log_meta WHERE key = 'access_rows')",
        [],
        |r| r.get(0),
    )?;
    if !counted {
        tx.execute(
            "INSERT INTO log_meta (key, value) VALUES ('access_rows', (SELECT COUNT(*) FROM access))",
            [],
        )?;
    }
    tx.commit()?;
    Ok(())
}

#[derive(Debug, thiserror::Error)]
#[error("auth store: {0}")]
pub struct StoreError(pub String);

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError(e.to_string())
    }
}

type Result<T> = std::result::Result<T, StoreError>;

/// A user added with `agent-registry user add`: a bcrypt hash and groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredUser {
    pub name: String,
    pub hash: String,
    pub groups: Vec<String>,
}

fn bump_users_version(tx: &rusqlite::Transaction<'_>) -> Result<()> {
    tx.execute(
        "INSERT INTO users_version (id, version) VALUES (1, 1)
         ON CONFLICT(id) DO UPDATE SET version = version + 1",
        [],
    )?;
    Ok(())
}

/// An API token as stored: never the token itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenInfo {
    pub id: String,
    pub user: String,
    /// `pattern:actions`, space separated.
    pub scopes: String,
    pub created: u64,
    pub expires: Option<u64>,
    pub revoked: Option<u64>,
}

/// One request in the access log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccessRecord {
    pub ts_ms: u64,
    pub client: String,
    /// The user, or `-` for anonymous requests.
    pub user: String,
    pub method: String,
    pub route: String,
    pub repo: Option<String>,
    pub status: u16,
    pub bytes: Option<u64>,
    pub duration_us: u64,
    pub cache: String,
    /// `ok` (the whole body was sent), `failed` (the body broke off with an error) or
    /// `aborted` (the client left before the end); `status` and `bytes` are what was sent.
    pub outcome: String,
}

/// One request as the request path queues it for the access log: besides the
/// repository and a signed-in user's name (moved, not copied) nothing is allocated.
#[derive(Debug, Clone)]
pub struct AccessEntry {
    pub ts_ms: u64,
    pub client: std::net::IpAddr,
    /// None: anonymous (stored as `-`).
    pub user: Option<String>,
    pub method: http::Method,
    pub route: &'static str,
    pub repo: Option<String>,
    pub status: u16,
    pub bytes: Option<u64>,
    pub duration_us: u64,
    pub cache: &'static str,
    /// `ok`, `failed` or `aborted`: see [`AccessRecord::outcome`].
    pub outcome: &'static str,
}

#[cfg(test)]
impl AccessEntry {
    /// An anonymous manifest GET of repository `a` at `ts_ms` (tests).
    pub(crate) fn sample(ts_ms: u64) -> AccessEntry {
        AccessEntry {
            ts_ms,
            client: [127, 0, 0, 1].into(),
            user: None,
            method: http::Method::GET,
            route: "manifest",
            repo: Some("a".into()),
            status: 200,
            bytes: Some(1),
            duration_us: 5,
            cache: "hit",
            outcome: "ok",
        }
    }
}

/// One audit event: a login, a failure, a token or permission change, a denied request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditRecord {
    pub ts_ms: u64,
    pub event: String,
    pub user: Option<String>,
    pub client: Option<String>,
    pub repo: Option<String>,
    pub detail: Option<String>,
}

pub struct Store {
    conn: Mutex<Connection>,
    /// For the log queries: a scan of the access log (a `--user` filter reads the
    /// whole time range) never holds up token lookups or the log writer (WAL readers
    /// do not block the writer).
    reader: Mutex<Connection>,
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `2026-11-29T06:00:00Z` for seconds since the epoch (UTC, proleptic Gregorian).
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The stored form of an API token: its sha256, hex.
pub fn token_hash(token: &str) -> String {
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

impl Store {
    pub fn open(data_dir: &Path) -> Result<Store> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| StoreError(format!("{}: {e}", data_dir.display())))?;
        let mut conn = Connection::open(data_dir.join("auth.db"))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(SCHEMA)?;
        migrate_access_log(&mut conn)?;
        let reader = Connection::open(data_dir.join("auth.db"))?;
        reader.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(Store {
            conn: Mutex::new(conn),
            reader: Mutex::new(reader),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn reader(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.reader.lock().unwrap_or_else(|p| p.into_inner())
    }

    // Users (`agent-registry user add`). Every change bumps `users_version`, which a
    // running server polls to pick the change up.

    /// Adds `name` or replaces its hash and groups.
    pub fn put_user(&self, name: &str, hash: &str, groups: &[String]) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO users (name, hash, groups, updated) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(name) DO UPDATE SET hash = ?2, groups = ?3, updated = ?4",
            params![name, hash, groups.join(","), now_ms() as i64],
        )?;
        bump_users_version(&tx)?;
        tx.commit()?;
        Ok(())
    }

    /// Removes `name`; false if there was no such user.
    pub fn remove_user(&self, name: &str) -> Result<bool> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let n = tx.execute("DELETE FROM users WHERE name = ?1", [name])?;
        bump_users_version(&tx)?;
        tx.commit()?;
        Ok(n > 0)
    }

    pub fn users(&self) -> Result<Vec<StoredUser>> {
        let conn = self.reader();
        let mut st = conn.prepare("SELECT name, hash, groups FROM users ORDER BY name")?;
        let rows = st.query_map([], |r| {
            let groups: String = r.get(2)?;
            Ok(StoredUser {
                name: r.get(0)?,
                hash: r.get(1)?,
                groups: groups
                    .split(',')
                    .filter(|g| !g.is_empty())
                    .map(str::to_string)
                    .collect(),
            })
        })?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    /// Changes with every user added, changed or removed.
    pub fn users_version(&self) -> Result<i64> {
        Ok(self
            .reader()
            .query_row("SELECT version FROM users_version WHERE id = 1", [], |r| {
                r.get(0)
            })
            .optional()?
            .unwrap_or(0))
    }

    // API tokens.

    /// Makes a token for `user` and returns it (the only time it is visible) with its record.
    pub fn create_token(
        &self,
        user: &str,
        scopes: &str,
        expires: Option<u64>,
    ) -> Result<(String, TokenInfo)> {
        let mut secret = [0u8; 32];
        rand::Rng::fill(&mut rand::rngs::OsRng, &mut secret);
        let token = format!("{}{}", super::API_TOKEN_PREFIX, hex::encode(secret));
        let id = format!("tok_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let info = TokenInfo {
            id: id.clone(),
            user: user.to_string(),
            scopes: scopes.to_string(),
            created: now_secs(),
            expires,
            revoked: None,
        };
        self.conn().execute(
            "INSERT INTO api_tokens (id, user, hash, scopes, created, expires) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![id, user, token_hash(&token), scopes, info.created as i64, expires.map(|e| e as i64)],
        )?;
        Ok((token, info))
    }

    pub fn token_by_hash(&self, hash: &str) -> Result<Option<TokenInfo>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT id, user, scopes, created, expires, revoked FROM api_tokens WHERE hash = ?1",
                [hash],
                token_row,
            )
            .optional()?)
    }

    pub fn token_by_id(&self, id: &str) -> Result<Option<TokenInfo>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT id, user, scopes, created, expires, revoked FROM api_tokens WHERE id = ?1",
                [id],
                token_row,
            )
            .optional()?)
    }

    pub fn tokens(&self, user: Option<&str>) -> Result<Vec<TokenInfo>> {
        let conn = self.conn();
        let mut st = conn.prepare(
            "SELECT id, user, scopes, created, expires, revoked FROM api_tokens
             WHERE (?1 IS NULL OR user = ?1) ORDER BY created, id",
        )?;
        let rows = st.query_map([user], token_row)?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    /// Marks a token revoked; `false` when there is no such token.
    pub fn revoke_token(&self, id: &str) -> Result<bool> {
        let n = self.conn().execute(
            "UPDATE api_tokens SET revoked = ?2 WHERE id = ?1 AND revoked IS NULL",
            params![id, now_secs() as i64],
        )?;
        Ok(n == 1)
    }

    /// Tokens that can still be used.
    pub fn live_token_count(&self) -> Result<u64> {
        let n: i64 = self.conn().query_row(
            "SELECT COUNT(*) FROM api_tokens WHERE revoked IS NULL AND (expires IS NULL OR expires > ?1)",
            [now_secs() as i64],
            |r| r.get(0),
        )?;
        Ok(n as u64)
    }

    // Permissions and visibility.

    pub fn permissions(&self) -> Result<Vec<Grant>> {
        let conn = self.conn();
        let mut st = conn.prepare(
            "SELECT repo, kind, subject, actions FROM permissions ORDER BY repo, kind, subject",
        )?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (pattern, kind, name, actions) = row?;
            let subject = match kind.as_str() {
                "group" => Subject::Group(name),
                _ => Subject::User(name),
            };
            // A row this version cannot read grants nothing.
            let actions = Actions::parse(&actions).unwrap_or(Actions::NONE);
            out.push(Grant {
                pattern,
                subject,
                actions,
            });
        }
        Ok(out)
    }

    /// Adds `actions` to what `subject` has on `repo`; returns the new set.
    pub fn add_permission(
        &self,
        repo: &str,
        subject: &Subject,
        actions: Actions,
    ) -> Result<Actions> {
        let conn = self.conn();
        let old: Option<String> = conn
            .query_row(
                "SELECT actions FROM permissions WHERE repo = ?1 AND kind = ?2 AND subject = ?3",
                params![repo, subject.kind(), subject.name()],
                |r| r.get(0),
            )
            .optional()?;
        let old = old
            .and_then(|a| Actions::parse(&a).ok())
            .unwrap_or(Actions::NONE);
        let new = old.union(actions);
        conn.execute(
            "INSERT INTO permissions (repo, kind, subject, actions, created) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (repo, kind, subject) DO UPDATE SET actions = excluded.actions",
            params![repo, subject.kind(), subject.name(), new.names().join(","), now_secs() as i64],
        )?;
        Ok(new)
    }

    /// Takes `actions` (all when `None`) away; returns whether anything was there.
    pub fn remove_permission(
        &self,
        repo: &str,
        subject: &Subject,
        actions: Option<Actions>,
    ) -> Result<bool> {
        let conn = self.conn();
        let key = params![repo, subject.kind(), subject.name()];
        let old: Option<String> = conn
            .query_row(
                "SELECT actions FROM permissions WHERE repo = ?1 AND kind = ?2 AND subject = ?3",
                key,
                |r| r.get(0),
            )
            .optional()?;
        let Some(old) = old.and_then(|a| Actions::parse(&a).ok()) else {
            return Ok(false);
        };
        let left = match actions {
            None => Actions::NONE,
            Some(drop) => old.without(drop),
        };
        if left.is_empty() {
            conn.execute(
                "DELETE FROM permissions WHERE repo = ?1 AND kind = ?2 AND subject = ?3",
                key,
            )?;
        } else {
            conn.execute(
                "UPDATE permissions SET actions = ?4 WHERE repo = ?1 AND kind = ?2 AND subject = ?3",
                params![repo, subject.kind(), subject.name(), left.names().join(",")],
            )?;
        }
        Ok(true)
    }

    pub fn visibilities(&self) -> Result<Vec<(String, Visibility)>> {
        let conn = self.conn();
        let mut st = conn.prepare("SELECT repo, visibility FROM visibility")?;
        let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (repo, v) = row?;
            out.push((repo, Visibility::parse(&v).unwrap_or(Visibility::Private)));
        }
        Ok(out)
    }

    pub fn set_visibility(&self, repo: &str, v: Visibility) -> Result<()> {
        self.conn().execute(
            "INSERT INTO visibility (repo, visibility, updated) VALUES (?1, ?2, ?3)
             ON CONFLICT (repo) DO UPDATE SET visibility = excluded.visibility, updated = excluded.updated",
            params![repo, v.as_str(), now_secs() as i64],
        )?;
        Ok(())
    }

    // Logs.

    /// Writes a batch of records in one transaction, and adds the batch's successful
    /// manifest GETs to each repository's pull count.
    pub fn append(&self, access: &[AccessEntry], audit: &[AuditRecord]) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        // The rowid B-tree's right edge: one seek per batch.
        let mut last: i64 = tx
            .prepare_cached("SELECT IFNULL(MAX(id), 0) FROM access")?
            .query_row([], |r| r.get(0))?;
        {
            let mut st = tx.prepare_cached(
                "INSERT INTO access (id, ts_ms, client, user, method, route, repo, status, bytes, duration_us, cache, outcome)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )?;
            let mut pulls: std::collections::HashMap<&str, i64> = Default::default();
            for a in access {
                last = next_access_id(last, a.ts_ms);
                if let (Some(repo), "manifest", &http::Method::GET, 200, "ok") =
                    (&a.repo, a.route, &a.method, a.status, a.outcome)
                {
                    *pulls.entry(repo).or_default() += 1;
                }
                st.execute(params![
                    last,
                    a.ts_ms as i64,
                    a.client.to_string(),
                    a.user.as_deref().unwrap_or("-"),
                    a.method.as_str(),
                    a.route,
                    a.repo,
                    a.status,
                    a.bytes.map(|b| b as i64),
                    a.duration_us as i64,
                    a.cache,
                    a.outcome
                ])?;
            }
            let mut st = tx.prepare_cached(
                "INSERT INTO pulls (repo, count) VALUES (?1, ?2)
                 ON CONFLICT (repo) DO UPDATE SET count = count + excluded.count",
            )?;
            for (repo, n) in pulls {
                st.execute(params![repo, n])?;
            }
            tx.prepare_cached("UPDATE log_meta SET value = value + ?1 WHERE key = 'access_rows'")?
                .execute([access.len() as i64])?;
            let mut st = tx.prepare_cached(
                "INSERT INTO audit (ts_ms, event, user, client, repo, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for a in audit {
                st.execute(params![
                    a.ts_ms as i64,
                    a.event,
                    a.user,
                    a.client,
                    a.repo,
                    a.detail
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Requests since `since_ms`, oldest first, at most `limit` (the newest ones);
    /// `user` `-` is anonymous. Reads the row-id range from `since_ms` backwards.
    pub fn access_log(
        &self,
        user: Option<&str>,
        since_ms: u64,
        limit: u32,
    ) -> Result<Vec<AccessRecord>> {
        let conn = self.reader();
        let mut st = conn.prepare_cached(
            "SELECT ts_ms, client, user, method, route, repo, status, bytes, duration_us, cache, outcome FROM access
             WHERE id >= ?4 AND ts_ms >= ?1 AND (?2 IS NULL OR user = ?2) ORDER BY id DESC LIMIT ?3",
        )?;
        let first = first_access_id(since_ms);
        let rows = st.query_map(params![since_ms as i64, user, limit, first], |r| {
            Ok(AccessRecord {
                ts_ms: r.get::<_, i64>(0)? as u64,
                client: r.get(1)?,
                user: r.get(2)?,
                method: r.get(3)?,
                route: r.get(4)?,
                repo: r.get(5)?,
                status: r.get(6)?,
                bytes: r.get::<_, Option<i64>>(7)?.map(|b| b as u64),
                duration_us: r.get::<_, i64>(8)? as u64,
                cache: r.get(9)?,
                outcome: r.get(10)?,
            })
        })?;
        let mut out: Vec<AccessRecord> = rows.collect::<std::result::Result<_, _>>()?;
        out.reverse();
        Ok(out)
    }

    pub fn audit_log(
        &self,
        user: Option<&str>,
        since_ms: u64,
        limit: u32,
    ) -> Result<Vec<AuditRecord>> {
        let conn = self.reader();
        let mut st = conn.prepare_cached(
            "SELECT ts_ms, event, user, client, repo, detail FROM audit
             WHERE ts_ms >= ?1 AND (?2 IS NULL OR user = ?2) ORDER BY ts_ms DESC, id DESC LIMIT ?3",
        )?;
        let rows = st.query_map(params![since_ms as i64, user, limit], |r| {
            Ok(AuditRecord {
                ts_ms: r.get::<_, i64>(0)? as u64,
                event: r.get(1)?,
                user: r.get(2)?,
                client: r.get(3)?,
                repo: r.get(4)?,
                detail: r.get(5)?,
            })
        })?;
        let mut out: Vec<AuditRecord> = rows.collect::<std::result::Result<_, _>>()?;
        out.reverse();
        Ok(out)
    }

    /// Successful manifest GETs of `repo` ever written to the access log (pruning
    /// the log does not lower it).
    pub fn pulls(&self, repo: &str) -> Result<u64> {
        let n: Option<i64> = self
            .reader()
            .query_row("SELECT count FROM pulls WHERE repo = ?1", [repo], |r| {
                r.get(0)
            })
            .optional()?;
        Ok(n.unwrap_or(0).max(0) as u64)
    }

    /// Drops access records older than `before_ms`, then the oldest beyond `max`;
    /// returns how many. Audit events are kept ten times as long and as many (denied
    /// requests from a scanner must not grow the file without bound either).
    pub fn prune_access(&self, before_ms: u64, max: u64) -> Result<usize> {
        let mut conn = self.conn();
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        let tx = conn.transaction()?;
        // Row ids below the cutoff's are all older than it (a few older ones above it,
        // from a clock that stepped back, go in a later round).
        let mut gone = tx.execute(
            "DELETE FROM access WHERE id < ?1",
            [first_access_id(before_ms)],
        )?;
        let rows: i64 = tx.query_row(
            "SELECT value FROM log_meta WHERE key = 'access_rows'",
            [],
            |r| r.get(0),
        )?;
        let excess = rows - gone as i64 - max;
        if excess > 0 {
            gone += tx.execute(
                "DELETE FROM access WHERE id <= (SELECT id FROM access ORDER BY id LIMIT 1 OFFSET ?1)",
                [excess - 1],
            )?;
        }
        tx.execute(
            "UPDATE log_meta SET value = value - ?1 WHERE key = 'access_rows'",
            [gone as i64],
        )?;
        let mut n = gone;
        n += tx.execute(
            "DELETE FROM audit WHERE ts_ms < ?1",
            [audit_cutoff(before_ms)],
        )?;
        n += tx.execute(
            "DELETE FROM audit WHERE id <= (SELECT MAX(id) FROM audit) - ?1",
            [max.saturating_mul(10)],
        )?;
        tx.commit()?;
        Ok(n)
    }
}

/// The audit log's cutoff for an access-log cutoff: ten times as far back.
fn audit_cutoff(access_before_ms: u64) -> i64 {
    let now = now_ms();
    let span = now.saturating_sub(access_before_ms).saturating_mul(10);
    now.saturating_sub(span) as i64
}

fn token_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TokenInfo> {
    Ok(TokenInfo {
        id: r.get(0)?,
        user: r.get(1)?,
        scopes: r.get(2)?,
        created: r.get::<_, i64>(3)? as u64,
        expires: r.get::<_, Option<i64>>(4)?.map(|v| v as u64),
        revoked: r.get::<_, Option<i64>>(5)?.map(|v| v as u64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The timestamps `access_log(None, since_ms, limit)` returns.
    fn stamps(s: &Store, since_ms: u64, limit: u32) -> Vec<u64> {
        let log = s.access_log(None, since_ms, limit).unwrap();
        log.iter().map(|r| r.ts_ms).collect()
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_796_000_000), "2026-11-30T00:53:20Z");
    }

    #[test]
    fn tokens_are_stored_as_hashes_and_revocable() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let (token, info) = s.create_token("ci", "agents/*:pull,push", None).unwrap();
        assert!(token.starts_with(super::super::API_TOKEN_PREFIX));
        let db = std::fs::read(dir.path().join("auth.db")).unwrap_or_default();
        let wal = std::fs::read(dir.path().join("auth.db-wal")).unwrap_or_default();
        let hay = [db, wal].concat();
        assert!(!hay.windows(token.len()).any(|w| w == token.as_bytes()));
        assert_eq!(
            s.token_by_hash(&token_hash(&token)).unwrap(),
            Some(info.clone())
        );
        assert_eq!(s.token_by_id(&info.id).unwrap(), Some(info.clone()));
        assert_eq!(s.token_by_id("tok_nope").unwrap(), None);
        assert_eq!(s.live_token_count().unwrap(), 1);
        assert!(s.revoke_token(&info.id).unwrap());
        assert!(!s.revoke_token(&info.id).unwrap());
        assert_eq!(s.live_token_count().unwrap(), 0);
        assert!(s
            .token_by_hash(&token_hash(&token))
            .unwrap()
            .unwrap()
            .revoked
            .is_some());
    }

    #[test]
    fn access_log_prunes_by_age_and_count() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let batch: Vec<AccessEntry> = (1..=10).map(AccessEntry::sample).collect();
        s.append(&batch, &[]).unwrap();
        assert_eq!(s.prune_access(3, 100).unwrap(), 2);
        assert_eq!(s.prune_access(0, 5).unwrap(), 3);
        assert_eq!(stamps(&s, 0, 100), [6, 7, 8, 9, 10]);
        assert_eq!(s.pulls("a").unwrap(), 10, "pruning keeps the pull count");
        // The count of rows stays true across batches and prunes.
        s.append(&batch[..3], &[]).unwrap();
        assert_eq!(s.prune_access(0, 4).unwrap(), 4);
        assert_eq!(s.access_log(None, 0, 100).unwrap().len(), 4);
        // Audit events live ten times longer: with a one-hour cutoff for requests, a
        // five-hour-old event stays and a day-old one goes.
        let now = now_ms();
        let event = |ts_ms: u64| AuditRecord {
            ts_ms,
            event: "denied".into(),
            user: None,
            client: None,
            repo: None,
            detail: None,
        };
        let (hour, day) = (3_600_000, 86_400_000);
        s.append(&[], &[event(now - day), event(now - 5 * hour)])
            .unwrap();
        s.prune_access(now - hour, 100).unwrap();
        assert_eq!(s.audit_log(None, 0, 10).unwrap().len(), 1);
    }

    #[test]
    fn access_ids_are_time_keyed_and_increasing() {
        assert_eq!(next_access_id(0, 5), 5 << ID_SHIFT);
        // Same millisecond: the sequence; a clock stepping back: still increasing.
        assert_eq!(next_access_id(5 << ID_SHIFT, 5), (5 << ID_SHIFT) + 1);
        assert_eq!(next_access_id(9 << ID_SHIFT, 5), (9 << ID_SHIFT) + 1);
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let ts = [100, 100, 90, 200, 300];
        let batch: Vec<AccessEntry> = ts.iter().map(|&t| AccessEntry::sample(t)).collect();
        s.append(&batch, &[]).unwrap();
        assert_eq!(stamps(&s, 0, 100), ts, "oldest first, in the order written");
        assert_eq!(stamps(&s, 100, 100), [100, 100, 200, 300]);
        assert_eq!(stamps(&s, 201, 100), [300]);
        assert_eq!(stamps(&s, 0, 2), [200, 300], "the newest");
        // A reopened store continues after the highest id.
        drop(s);
        let s = Store::open(dir.path()).unwrap();
        s.append(&[AccessEntry::sample(50)], &[]).unwrap();
        assert_eq!(s.access_log(None, 0, 1).unwrap()[0].ts_ms, 50);
    }

    #[test]
    fn log_queries_do_not_wait_for_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let s = std::sync::Arc::new(Store::open(dir.path()).unwrap());
        s.append(&[AccessEntry::sample(7)], &[]).unwrap();
        // The writer's connection is busy (a batch being written, a token lookup)...
        let mut writer = s.conn();
        let tx = writer.transaction().unwrap();
        tx.execute("DELETE FROM access", []).unwrap();
        // ...and a query still answers, from the last committed state.
        let (done, rx) = std::sync::mpsc::channel();
        let q = s.clone();
        std::thread::spawn(move || done.send(q.access_log(None, 0, 10).map(|l| l.len())));
        let got = rx.recv_timeout(std::time::Duration::from_secs(10));
        assert_eq!(got.expect("the query waited for the writer").unwrap(), 1);
        drop(tx);
    }

    #[test]
    fn access_log_of_an_older_store_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        {
            // The schema before time-keyed ids, with rows in it.
            let c = Connection::open(dir.path().join("auth.db")).unwrap();
            c.execute_batch(
                "CREATE TABLE access (
                    id INTEGER PRIMARY KEY, ts_ms INTEGER NOT NULL, client TEXT NOT NULL, user TEXT NOT NULL,
                    method TEXT NOT NULL, route TEXT NOT NULL, repo TEXT, status INTEGER NOT NULL,
                    bytes INTEGER, duration_us INTEGER NOT NULL, cache TEXT NOT NULL);
                 CREATE INDEX access_ts ON access(ts_ms);
                 CREATE INDEX access_user_ts ON access(user, ts_ms);
                 CREATE INDEX access_repo ON access(repo, route);
                 INSERT INTO access (ts_ms, client, user, method, route, repo, status, bytes, duration_us, cache) VALUES
                    (10, '1.2.3.4', '-', 'GET', 'manifest', 'a', 200, 1, 1, 'hit'),
                    (10, '1.2.3.4', 'bob', 'GET', 'manifest', 'a', 200, 1, 1, 'hit'),
                    (20, '1.2.3.4', '-', 'GET', 'manifest', 'a', 404, 1, 1, 'miss'),
                    (30, '1.2.3.4', '-', 'GET', 'blob', 'a', 200, 1, 1, 'hit');",
            )
            .unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(stamps(&s, 10, 100), [10, 10, 20, 30]);
        assert_eq!(s.access_log(Some("bob"), 0, 100).unwrap().len(), 1);
        assert_eq!(s.access_log(None, 11, 100).unwrap().len(), 2);
        assert_eq!(s.pulls("a").unwrap(), 2);
        // New records go after the migrated ones, and the row count is right.
        s.append(&[AccessEntry::sample(40)], &[]).unwrap();
        assert_eq!(s.access_log(None, 0, 1).unwrap()[0].ts_ms, 40);
        assert_eq!(s.pulls("a").unwrap(), 3);
        // Rows from before outcomes read as sent whole; a pull whose body broke off is
        // recorded as such and is not counted as a pull.
        let log = s.access_log(None, 0, 100).unwrap();
        assert!(log.iter().all(|r| r.outcome == "ok"), "{log:?}");
        let failed = AccessEntry {
            outcome: "failed",
            ..AccessEntry::sample(41)
        };
        s.append(&[failed], &[]).unwrap();
        assert_eq!(s.access_log(None, 41, 1).unwrap()[0].outcome, "failed");
        assert_eq!(s.pulls("a").unwrap(), 3);
        assert_eq!(s.prune_access(0, 2).unwrap(), 4);
        let indexes: i64 = s
            .conn()
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND name LIKE 'access%'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(indexes, 0);
        // Opening again does not migrate or count twice.
        drop(s);
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.pulls("a").unwrap(), 3);
        assert_eq!(s.access_log(None, 0, 100).unwrap().len(), 2);
    }

    #[test]
    fn permissions_merge_and_shrink() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let john = Subject::User("john".into());
        s.add_permission("my-agent", &john, Actions::parse("pull").unwrap())
            .unwrap();
        let all = s
            .add_permission("my-agent", &john, Actions::parse("push").unwrap())
            .unwrap();
        assert_eq!(all.names(), ["pull", "push"]);
        assert!(s
            .remove_permission("my-agent", &john, Some(Actions::parse("push").unwrap()))
            .unwrap());
        assert_eq!(s.permissions().unwrap()[0].actions.names(), ["pull"]);
        assert!(s.remove_permission("my-agent", &john, None).unwrap());
        assert!(s.permissions().unwrap().is_empty());
        assert!(!s.remove_permission("my-agent", &john, None).unwrap());
    }
}
