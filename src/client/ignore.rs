//! `.agentignore` / `.dockerignore` patterns, with docker's meaning: one pattern a line,
//! `#` comments, `*`, `?`, `[...]` within one path segment, `**` across any number of
//! segments, a leading `!` re-includes, the last matching line wins, and a pattern that
//! matches a directory excludes everything below it.

#[derive(Debug, Clone)]
struct Pattern {
    segments: Vec<String>,
    exception: bool,
}

#[derive(Debug, Clone, Default)]
pub struct Ignore {
    patterns: Vec<Pattern>,
}

impl Ignore {
    /// Parses the text of an ignore file.
    pub fn parse(text: &str) -> Ignore {
        let mut patterns = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (exception, p) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            let segments: Vec<String> = p
                .split('/')
                .filter(|s| !s.is_empty() && *s != ".")
                .map(str::to_string)
                .collect();
            if segments.is_empty() {
                continue;
            }
            patterns.push(Pattern {
                segments,
                exception,
            });
        }
        Ignore { patterns }
    }

    /// True if some pattern re-includes paths (then excluded directories are still walked).
    pub fn has_exceptions(&self) -> bool {
        self.patterns.iter().any(|p| p.exception)
    }

    /// True if `path` (relative, `/`-separated) is excluded.
    pub fn excluded(&self, path: &str) -> bool {
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let mut excluded = false;
        for p in &self.patterns {
            // The pattern matches the path itself or one of its parent directories.
            let hit = (1..=segs.len()).any(|n| match_segments(&p.segments, &segs[..n]));
            if hit {
                excluded = !p.exception;
            }
        }
        excluded
    }
}

fn match_segments(pat: &[String], path: &[&str]) -> bool {
    match pat.first() {
        None => path.is_empty(),
        Some(p) if p == "**" => (0..=path.len()).any(|i| match_segments(&pat[1..], &path[i..])),
        Some(p) => match path.first() {
            Some(s) => glob(p.as_bytes(), s.as_bytes()) && match_segments(&pat[1..], &path[1..]),
            None => false,
        },
    }
}

/// Go's `filepath.Match` for one segment: `*`, `?`, `[a-z]`, `[^a-z]`, `\` escapes.
fn glob(p: &[u8], s: &[u8]) -> bool {
    match p.first() {
        None => s.is_empty(),
        Some(b'*') => (0..=s.len()).any(|i| glob(&p[1..], &s[i..])),
        Some(b'?') => !s.is_empty() && glob(&p[1..], &s[1..]),
        Some(b'[') => {
            let Some(&c) = s.first() else {
                return false;
            };
            let mut i = 1;
            let negate = matches!(p.get(1), Some(b'^') | Some(b'!'));
            if negate {
                i += 1;
            }
            let mut matched = false;
            let mut first = true;
            while i < p.len() && (p[i] != b']' || first) {
                first = false;
                let mut lo = p[i];
                if lo == b'\\' && i + 1 < p.len() {
                    i += 1;
                    lo = p[i];
                }
                let mut hi = lo;
                if i + 2 < p.len() && p[i + 1] == b'-' && p[i + 2] != b']' {
                    hi = p[i + 2];
                    i += 2;
                }
                if lo <= c && c <= hi {
                    matched = true;
                }
                i += 1;
            }
            if i >= p.len() {
                return false; // unterminated class: no match, like Go's ErrBadPattern
            }
            matched != negate && glob(&p[i + 1..], &s[1..])
        }
        Some(b'\\') if p.len() > 1 => s.first() == Some(&p[1]) && glob(&p[2..], &s[1..]),
        Some(&c) => s.first() == Some(&c) && glob(&p[1..], &s[1..]),
    }
}

/// Go's `filepath.Match` on a whole string where `*` does not cross `/`, used for docker's
/// `reference=` filter.
pub fn match_path(pattern: &str, s: &str) -> bool {
    let p: Vec<String> = pattern.split('/').map(str::to_string).collect();
    let v: Vec<&str> = s.split('/').collect();
    p.len() == v.len() && match_segments(&p, &v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_semantics() {
        let i = Ignore::parse(
            "# comment\n*.log\nbuild\n**/secret*\n!keep.log\ndocs/*.md\n!docs/README.md\n",
        );
        assert!(i.excluded("a.log"));
        assert!(!i.excluded("keep.log"));
        assert!(!i.excluded("sub/a.log")); // `*` stays in the top directory
        assert!(i.excluded("build"));
        assert!(i.excluded("build/out/x.bin")); // below an excluded directory
        assert!(i.excluded("secret.txt"));
        assert!(i.excluded("a/b/secret-key"));
        assert!(i.excluded("docs/guide.md"));
        assert!(!i.excluded("docs/README.md"));
        assert!(!i.excluded("src/main.py"));
        assert!(i.has_exceptions());
    }

    #[test]
    fn globs() {
        assert!(glob(b"[a-c]x", b"bx"));
        assert!(!glob(b"[^a-c]x", b"bx"));
        assert!(glob(b"a?c", b"abc"));
        assert!(glob(b"\\*", b"*"));
        assert!(!glob(b"[a", b"a"));
        assert!(match_path("my-*:*", "my-agent:1.0"));
        assert!(!match_path("my-*", "org/my-agent"));
        assert!(match_path("*/my-*", "org/my-agent"));
    }
}
