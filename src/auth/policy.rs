//! Who may do what: action sets, repository patterns, and the grants of rules and
//! stored permissions.

use crate::config::Action;

/// A set of [`Action`]s; `admin` implies the others.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Actions(u8);

impl Actions {
    pub const NONE: Actions = Actions(0);
    pub const ALL: Actions = Actions(0b1111);

    fn bit(a: Action) -> u8 {
        match a {
            Action::Pull => 1,
            Action::Push => 2,
            Action::Delete => 4,
            Action::Admin => 8,
        }
    }

    pub fn of(actions: &[Action]) -> Actions {
        Actions(actions.iter().fold(0, |acc, a| acc | Self::bit(*a)))
    }

    pub fn contains(self, a: Action) -> bool {
        self.0 & Self::bit(Action::Admin) != 0 || self.0 & Self::bit(a) != 0
    }

    pub fn union(self, other: Actions) -> Actions {
        Actions(self.0 | other.0)
    }

    /// What both allow (admin in one side allows whatever the other allows).
    pub fn intersect(self, other: Actions) -> Actions {
        let expand = |s: Actions| match s.contains(Action::Admin) {
            true => Actions::ALL,
            false => s,
        };
        Actions(expand(self).0 & expand(other).0)
    }

    /// `self` less `other`; taking a concrete action from an admin set leaves the
    /// other actions but no longer admin.
    pub fn without(self, other: Actions) -> Actions {
        let admin = Self::bit(Action::Admin);
        let base = match self.0 & admin != 0 {
            true => Actions::ALL.0,
            false => self.0,
        };
        let mut left = base & !other.0;
        if other.0 & !admin != 0 {
            left &= !admin;
        }
        Actions(left)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The actions by name, `admin` last; an admin set lists all four.
    pub fn names(self) -> Vec<&'static str> {
        Action::ALL
            .iter()
            .filter(|a| self.contains(**a))
            .map(|a| a.as_str())
            .collect()
    }

    /// Parses `pull,push` (also `read`, `write`, `*`).
    pub fn parse(list: &str) -> Result<Actions, String> {
        let mut out = Actions::NONE;
        for a in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            out = out.union(Actions::of(&[Action::parse(a)?]));
        }
        match out.is_empty() {
            true => Err(format!("no actions in {list:?}")),
            false => Ok(out),
        }
    }
}

/// Whether `name` matches `pattern`, where `*` stands for any run of characters
/// (including `/`) and everything else matches itself. Names are canonical OCI names
/// (lowercase, validated) before they get here.
pub fn matches(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    let mut back: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && p[pi] == b'*' {
            back = Some((pi, ni));
            pi += 1;
        } else if pi < p.len() && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if let Some((bp, bn)) = back {
            pi = bp + 1;
            ni = bn + 1;
            back = Some((bp, bn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == b'*')
}

/// Who a grant is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    User(String),
    Group(String),
}

impl Subject {
    pub fn kind(&self) -> &'static str {
        match self {
            Subject::User(_) => "user",
            Subject::Group(_) => "group",
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Subject::User(n) | Subject::Group(n) => n,
        }
    }
}

/// `actions` on repositories matching `pattern` for `subject`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub pattern: String,
    pub subject: Subject,
    pub actions: Actions,
}

impl Grant {
    fn applies(&self, user: &str, groups: &[String]) -> bool {
        match &self.subject {
            Subject::User(u) => u == user,
            Subject::Group(g) => groups.iter().any(|x| x == g),
        }
    }
}

/// What `user` (a member of `groups`) is granted on `repo` by `grants`.
pub fn granted(grants: &[Grant], user: &str, groups: &[String], repo: &str) -> Actions {
    grants
        .iter()
        .filter(|g| g.applies(user, groups) && matches(&g.pattern, repo))
        .fold(Actions::NONE, |acc, g| acc.union(g.actions))
}

/// An API token's scope: `pattern:actions` such as `agents/*:pull,push`.
pub fn parse_scope(s: &str) -> Result<(String, Actions), String> {
    let (pattern, actions) = s
        .trim()
        .rsplit_once(':')
        .ok_or_else(|| format!("scope {s:?} is not PATTERN:ACTIONS (like 'agents/*:pull,push')"))?;
    if pattern.is_empty() || pattern.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("scope {s:?}: invalid repository pattern"));
    }
    Ok((pattern.to_string(), Actions::parse(actions)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_whole_names() {
        let cases = [
            ("*", "a/b/c", true),
            ("agents/*", "agents/x", true),
            ("agents/*", "agents/x/y", true),
            ("agents/*", "agents", false),
            ("agents/*", "agentsx/y", false),
            ("agents/*", "team/agents/x", false),
            ("a*c", "abbbc", true),
            ("a*c", "abbbd", false),
            ("*/bot", "x/y/bot", true),
            ("exact", "exact", true),
            ("exact", "exact2", false),
            ("", "", true),
            ("a**b", "ab", true),
        ];
        for (p, n, want) in cases {
            assert_eq!(matches(p, n), want, "{p} vs {n}");
        }
    }

    #[test]
    fn admin_implies_everything_and_sets_combine() {
        let pull = Actions::of(&[Action::Pull]);
        let admin = Actions::of(&[Action::Admin]);
        assert!(admin.contains(Action::Delete));
        assert!(!pull.contains(Action::Push));
        assert_eq!(admin.intersect(pull), pull);
        assert_eq!(
            Actions::parse("read, write").unwrap().names(),
            ["pull", "push"]
        );
        assert!(Actions::parse("fly").is_err());
        assert_eq!(admin.names(), ["pull", "push", "delete", "admin"]);
    }

    #[test]
    fn grants_apply_to_users_and_groups() {
        let grants = vec![
            Grant {
                pattern: "agents/*".into(),
                subject: Subject::Group("ci".into()),
                actions: Actions::parse("pull,push").unwrap(),
            },
            Grant {
                pattern: "agents/secret".into(),
                subject: Subject::User("bob".into()),
                actions: Actions::parse("delete").unwrap(),
            },
        ];
        let ci = ["ci".to_string()];
        let g = granted(&grants, "bob", &ci, "agents/secret");
        assert_eq!(g.names(), ["pull", "push", "delete"]);
        assert!(granted(&grants, "bob", &[], "agents/x").is_empty());
        assert_eq!(
            parse_scope("agents/*:pull,push").unwrap(),
            ("agents/*".to_string(), Actions::parse("pull,push").unwrap())
        );
        assert!(parse_scope("nocolon").is_err());
    }
}
