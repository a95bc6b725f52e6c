//! Parsing `WWW-Authenticate` challenges (RFC 7235): case-insensitive schemes and
//! parameter names, quoted strings with escapes and commas inside, several challenges in
//! one header. Lenient where registries are sloppy (unquoted URLs as values).

/// One challenge: `Bearer realm="..",service=".."`. Scheme and parameter names are
/// lowercased; values are kept as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub scheme: String,
    pub params: Vec<(String, String)>,
}

impl Challenge {
    /// The value of parameter `name` (lowercase).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// All challenges in one header value, in order. Garbage yields fewer challenges, never
/// an error: the caller decides what a missing realm means.
pub fn parse(header: &str) -> Vec<Challenge> {
    let mut p = Cursor {
        s: header.as_bytes(),
        i: 0,
    };
    let mut out = Vec::new();
    loop {
        p.skip(|b| b == b',' || is_ws(b));
        if p.at_end() {
            return out;
        }
        let scheme = p.token();
        if scheme.is_empty() {
            p.i += 1; // not a token character: skip it
            continue;
        }
        let mut challenge = Challenge {
            scheme: scheme.to_ascii_lowercase(),
            params: Vec::new(),
        };
        while let Some(param) = p.param() {
            challenge.params.push(param);
        }
        out.push(challenge);
    }
}

struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
}

fn is_ws(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

impl Cursor<'_> {
    fn at_end(&self) -> bool {
        self.i >= self.s.len()
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn skip(&mut self, f: impl Fn(u8) -> bool) {
        while self.peek().is_some_and(&f) {
            self.i += 1;
        }
    }

    fn take(&mut self, f: impl Fn(u8) -> bool) -> String {
        let start = self.i;
        self.skip(f);
        String::from_utf8_lossy(&self.s[start..self.i]).into_owned()
    }

    fn token(&mut self) -> String {
        self.take(is_tchar)
    }

    /// `name = value` followed by an optional comma; `None` (position unchanged) when
    /// what follows is not a parameter, i.e. the next challenge's scheme or the end.
    fn param(&mut self) -> Option<(String, String)> {
        let start = self.i;
        self.skip(|b| b == b',' || is_ws(b));
        let name = self.token();
        self.skip(is_ws);
        if name.is_empty() || self.peek() != Some(b'=') {
            self.i = start;
            return None;
        }
        self.i += 1;
        self.skip(is_ws);
        let value = match self.peek() {
            Some(b'"') => self.quoted(),
            // Unquoted: a token, but registries send bare URLs too.
            _ => self.take(|b| b != b',' && !is_ws(b)),
        };
        self.skip(is_ws);
        if self.peek() == Some(b',') {
            self.i += 1;
        }
        Some((name.to_ascii_lowercase(), value))
    }

    /// A quoted string starting at `"`; `\x` stands for `x`. Unterminated: the rest.
    fn quoted(&mut self) -> String {
        self.i += 1;
        let mut out = Vec::new();
        while let Some(b) = self.peek() {
            self.i += 1;
            match b {
                b'"' => break,
                b'\\' => {
                    if let Some(next) = self.peek() {
                        out.push(next);
                        self.i += 1;
                    }
                }
                _ => out.push(b),
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: &[(&str, &[(&str, &str)])]) {
        let got = parse(input);
        let want: Vec<Challenge> = expected
            .iter()
            .map(|(scheme, params)| Challenge {
                scheme: scheme.to_string(),
                params: params
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            })
            .collect();
        assert_eq!(got, want, "parsing {input:?}");
    }

    #[test]
    fn challenges() {
        check(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#,
            &[(
                "bearer",
                &[
                    ("realm", "https://auth.docker.io/token"),
                    ("service", "registry.docker.io"),
                    ("scope", "repository:library/alpine:pull"),
                ],
            )],
        );
        check(
            r#"Bearer realm="https://r/token",scope="repository:a/b:pull,push",service="s""#,
            &[(
                "bearer",
                &[
                    ("realm", "https://r/token"),
                    ("scope", "repository:a/b:pull,push"),
                    ("service", "s"),
                ],
            )],
        );
        check(r#"BEARER Realm="x""#, &[("bearer", &[("realm", "x")])]);
        check(
            r#"bearer  realm = "x" ,  service="y" ,"#,
            &[("bearer", &[("realm", "x"), ("service", "y")])],
        );
        check(
            r#"Bearer realm="a\"b\\c""#,
            &[("bearer", &[("realm", r#"a"b\c"#)])],
        );
        check(
            r#"Basic realm="registry", Bearer realm="https://t",service="s""#,
            &[
                ("basic", &[("realm", "registry")]),
                ("bearer", &[("realm", "https://t"), ("service", "s")]),
            ],
        );
        check(
            "Bearer realm=https://t/token?x=1,service=s",
            &[(
                "bearer",
                &[("realm", "https://t/token?x=1"), ("service", "s")],
            )],
        );
        check(
            r#"Bearer realm="x",error="insufficient_scope""#,
            &[("bearer", &[("realm", "x"), ("error", "insufficient_scope")])],
        );
        check("Basic", &[("basic", &[])]);
        check("", &[]);
        check(
            r#"Bearer realm="unterminated"#,
            &[("bearer", &[("realm", "unterminated")])],
        );
        check(
            r#"Basic realm="a", Negotiate"#,
            &[("basic", &[("realm", "a")]), ("negotiate", &[])],
        );
    }

    #[test]
    fn garbage_never_loops() {
        for input in [
            "=",
            "\"",
            ",,,",
            "Bearer ==\"",
            "Bearer a=b=c",
            "@@ Bearer realm=x",
        ] {
            let _ = parse(input);
        }
        assert_eq!(parse("@@ Bearer realm=x")[0].param("realm"), Some("x"));
    }
}
