//! htpasswd files as CNCF distribution reads them: `user:hash` lines, bcrypt only.

use crate::config::check_bcrypt;

pub struct Entry {
    pub user: String,
    pub hash: String,
}

/// Parses the file; blank lines and `#` comments are skipped. Any other hash type
/// (MD5 `$apr1$`, SHA `{SHA}`, crypt) is an error naming the line, as is a duplicate user.
pub fn parse(text: &str) -> Result<Vec<Entry>, String> {
    let mut out: Vec<Entry> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let n = i + 1;
        let (user, hash) = line
            .split_once(':')
            .ok_or_else(|| format!("line {n}: expected user:hash"))?;
        if user.is_empty() {
            return Err(format!("line {n}: empty user name"));
        }
        check_bcrypt(hash).map_err(|_| {
            format!("line {n}: user {user:?} has no bcrypt hash (create entries with htpasswd -B)")
        })?;
        if out.iter().any(|e| e.user == user) {
            return Err(format!("line {n}: user {user:?} is listed twice"));
        }
        out.push(Entry {
            user: user.to_string(),
            hash: hash.to_string(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_bcrypt_and_names_bad_lines() {
        let h = bcrypt::hash("pw", 4).unwrap();
        let text = format!("# users\n\nalice:{h}\nbob:{h}\n");
        let e = parse(&text).unwrap();
        assert_eq!(e.len(), 2);
        assert!(bcrypt::verify("pw", &e[0].hash).unwrap());
        assert_eq!(
            parse("carol:$apr1$xyz$abc\n").err().unwrap(),
            "line 1: user \"carol\" has no bcrypt hash (create entries with htpasswd -B)"
        );
        assert_eq!(parse("x\n").err().unwrap(), "line 1: expected user:hash");
        assert!(parse(&format!("a:{h}\na:{h}\n"))
            .err()
            .unwrap()
            .contains("twice"));
    }
}
