//! Tidy: the source tree keeps its one-way layering (ARCHITECTURE.md, "Layers").
//!
//! Parses every `.rs` file under `src/` (comments, strings and `#[cfg(test)]` modules
//! left out), resolves each `crate::`, `super::`, `self::` and child-module path it uses
//! (grouped `use a::{b, c::{d}}` imports expanded, and paths written inline in code) to
//! the file that defines the module, and fails on:
//!
//! - an import from a lower layer into a higher one (entry -> dispatch -> handlers ->
//!   app -> services -> foundations, downward only);
//! - one of the imports the layering names explicitly (`storage/` or `upstream/` ->
//!   `mirror/`, `upstream/` -> `cache/`, `oci/` -> anything outside `oci/`, `cli/` ->
//!   the server side);
//! - a file-level import cycle of more than 4 files;
//! - a top-level module no layer claims (a new module must say where it stands).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// The layers, top to bottom, and the top-level modules of each.
const LAYERS: &[(&str, &[&str])] = &[
    ("entry", &["main", "bin", "cli", "server"]),
    ("dispatch", &["dispatch"]),
    ("handlers", &["handlers"]),
    ("app", &["app"]),
    (
        "services",
        &[
            "mirror", "cache", "storage", "auth", "upstream", "client", "limits", "sign", "scan",
            "policy", "cluster",
        ],
    ),
    (
        "foundations",
        &[
            "oci", "config", "error", "metrics", "web", "io", "logging", "logring", "lib",
        ],
    ),
];

/// Imports the layering forbids even within a layer: (from, to) top-level modules;
/// `*` means any module but `from` itself.
const FORBIDDEN: &[(&str, &str)] = &[
    ("storage", "mirror"),
    ("upstream", "mirror"),
    ("upstream", "cache"),
    ("oci", "*"),
    ("cli", "server"),
    ("cli", "dispatch"),
    ("cli", "handlers"),
    ("cli", "app"),
];

const MAX_CYCLE: usize = 4;

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Module path of a file under `src/`: `cache/fill.rs` -> ["cache", "fill"],
/// `cache/mod.rs` -> ["cache"], `lib.rs` -> [].
fn module_of(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if let Some(last) = parts.pop() {
        let stem = last.trim_end_matches(".rs").to_string();
        if !matches!(stem.as_str(), "mod" | "lib" | "main") {
            parts.push(stem);
        } else if stem == "main" && parts.is_empty() {
            parts.push("main".into());
        }
    }
    parts
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The code of a Rust file with comments, string and char literals blanked out.
fn strip(src: &str) -> String {
    let b: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if c == 'r' && (next == Some('"') || next == Some('#')) && !ident_before(&b, i) {
            // A raw string: r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= b.len() {
                    break;
                }
                if b[j] == '"' && (0..hashes).all(|k| b.get(j + 1 + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j;
        } else if c == '"' {
            i += 1;
            while i < b.len() && b[i] != '"' {
                if b[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{..}') or a lifetime ('a).
            let close = match next {
                Some('\\') => (i + 2..b.len().min(i + 12)).find(|&j| b[j] == '\''),
                Some(_) if b.get(i + 2) == Some(&'\'') => Some(i + 2),
                _ => None,
            };
            match close {
                Some(j) => {
                    out.push_str("' '");
                    i = j + 1;
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn ident_before(b: &[char], i: usize) -> bool {
    i > 0 && (b[i - 1].is_alphanumeric() || b[i - 1] == '_')
}

/// `code` without its `#[cfg(test)]` items (test modules may reach anywhere).
fn without_tests(code: &str) -> String {
    let mut out = String::new();
    let mut rest = code;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        // The item ends at its `;` (a `use`, a `mod x;`) or its closing brace.
        let semi = after.find(';');
        let brace = after.find('{');
        let end = match (semi, brace) {
            (Some(s), Some(b)) if s < b => s + 1,
            (_, Some(b)) => {
                let mut depth = 0;
                let mut end = after.len();
                for (k, ch) in after[b..].char_indices() {
                    match ch {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = b + k + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                end
            }
            (Some(s), None) => s + 1,
            (None, None) => after.len(),
        };
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// Expands a `use` tree (`a::{b, c::{d, e as f}, self}`) into its paths.
fn expand(tree: &str) -> Vec<String> {
    let tree = tidy_spaces(tree);
    let Some(open) = tree.find('{') else {
        return vec![tree.split(" as ").next().unwrap_or("").to_string()];
    };
    let prefix = &tree[..open];
    let close = tree.rfind('}').unwrap_or(tree.len());
    let inner = &tree[open + 1..close];
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (k, ch) in inner.char_indices() {
        match ch {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..k]);
                start = k + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
        .into_iter()
        .filter(|p| !p.is_empty())
        .flat_map(|p| match p {
            "self" => vec![prefix.trim_end_matches("::").to_string()],
            _ => expand(p)
                .into_iter()
                .map(|e| format!("{prefix}{e}"))
                .collect(),
        })
        .collect()
}

/// One space between words (`route as r`), none around `::`, braces and commas.
fn tidy_spaces(s: &str) -> String {
    let words: Vec<&str> = s.split_whitespace().collect();
    let mut out = words.join(" ");
    for p in ["::", "{", "}", ","] {
        out = out
            .replace(&format!(" {p}"), p)
            .replace(&format!("{p} "), p);
    }
    out
}

struct Tree {
    /// Module path -> file (relative to `src/`).
    modules: HashMap<Vec<String>, PathBuf>,
}

impl Tree {
    /// The file of the longest module prefix of `path` (a path may end in an item).
    fn file_of(&self, path: &[String]) -> Option<&PathBuf> {
        (1..=path.len())
            .rev()
            .find_map(|n| self.modules.get(&path[..n]))
    }

    /// Resolves a path written in module `here` to an absolute module path.
    fn absolute(&self, here: &[String], path: &str) -> Option<Vec<String>> {
        let segs: Vec<String> = path
            .split("::")
            .filter(|s| !s.is_empty())
            .map(|s| s.split(" as ").next().unwrap_or(s).to_string())
            .collect();
        let first = segs.first()?;
        match first.as_str() {
            "crate" => Some(segs[1..].to_vec()),
            "self" => Some(
                here.iter()
                    .cloned()
                    .chain(segs[1..].iter().cloned())
                    .collect(),
            ),
            "super" => {
                let mut base = here.to_vec();
                let mut k = 0;
                while segs.get(k).is_some_and(|s| s == "super") {
                    base.pop();
                    k += 1;
                }
                Some(base.into_iter().chain(segs[k..].iter().cloned()).collect())
            }
            // A child module of `here` (`use child::Item;` in a mod.rs).
            _ => {
                let mut child = here.to_vec();
                child.push(first.clone());
                self.modules
                    .contains_key(&child)
                    .then(|| here.iter().cloned().chain(segs.iter().cloned()).collect())
            }
        }
    }
}

/// Every path a file's code uses that may name a module of this crate.
fn paths_in(code: &str) -> Vec<String> {
    let mut found = Vec::new();
    // `use` declarations, grouped trees included.
    let mut rest = code;
    while let Some(at) = find_word(rest, "use") {
        let after = &rest[at + 3..];
        let end = after.find(';').unwrap_or(after.len());
        found.extend(expand(after[..end].trim()));
        rest = &after[end..];
    }
    // Paths written inline: `crate::a::b`, `super::x`.
    for root in ["crate::", "super::"] {
        let mut rest = code;
        while let Some(at) = rest.find(root) {
            let before_ok = at == 0 || {
                let c = rest[..at].chars().next_back().unwrap_or(' ');
                !(c.is_alphanumeric() || c == '_' || c == ':')
            };
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(tail.len());
            if before_ok {
                found.push(tail[..end].trim_end_matches(':').to_string());
            }
            rest = &rest[at + root.len()..];
        }
    }
    let mut seen = BTreeSet::new();
    found.retain(|p| seen.insert(p.clone()));
    found
}

fn find_word(s: &str, w: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(k) = s[from..].find(w) {
        let at = from + k;
        let before = s[..at].chars().next_back();
        let after = s[at + w.len()..].chars().next();
        let boundary = |c: Option<char>| c.is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
        if boundary(before) && after.is_some_and(char::is_whitespace) {
            return Some(at);
        }
        from = at + w.len();
    }
    None
}

fn layer_of(top: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, mods)| mods.contains(&top))
}

fn top(rel: &Path) -> String {
    let first = rel
        .iter()
        .next()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    first.trim_end_matches(".rs").to_string()
}

/// File-level import edges of the crate: file -> files it uses.
fn graph() -> BTreeMap<PathBuf, BTreeSet<PathBuf>> {
    let src = src_dir();
    let mut files = Vec::new();
    rs_files(&src, &mut files);
    let rels: Vec<PathBuf> = files
        .iter()
        .map(|f| f.strip_prefix(&src).expect("under src").to_path_buf())
        // Binaries reach the crate as `agent_registry::`: the entry layer, above all.
        .filter(|r| !r.starts_with("bin") && r != Path::new("main.rs"))
        .collect();
    let tree = Tree {
        modules: rels.iter().map(|r| (module_of(r), r.clone())).collect(),
    };
    let mut edges = BTreeMap::new();
    for rel in &rels {
        let text = std::fs::read_to_string(src.join(rel)).expect("read source");
        let code = without_tests(&strip(&text));
        let here = module_of(rel);
        let mut to = BTreeSet::new();
        for p in paths_in(&code) {
            let Some(abs) = tree.absolute(&here, &p) else {
                continue;
            };
            if let Some(f) = tree.file_of(&abs) {
                if f != rel {
                    to.insert(f.clone());
                }
            }
        }
        edges.insert(rel.clone(), to);
    }
    edges
}

#[test]
fn every_top_level_module_has_a_layer() {
    let edges = graph();
    let unknown: BTreeSet<String> = edges
        .keys()
        .map(|f| top(f))
        .filter(|t| layer_of(t).is_none())
        .collect();
    assert!(
        unknown.is_empty(),
        "modules with no layer (add them to LAYERS in tests/tidy.rs and to ARCHITECTURE.md): {unknown:?}"
    );
}

#[test]
fn imports_only_go_down() {
    let mut bad = Vec::new();
    for (from, tos) in graph() {
        let (ft, fl) = (top(&from), layer_of(&top(&from)));
        for to in tos {
            let (tt, tl) = (top(&to), layer_of(&top(&to)));
            if let (Some(fl), Some(tl)) = (fl, tl) {
                if tl < fl {
                    bad.push(format!(
                        "{} ({}) imports {} ({}), a layer above it",
                        from.display(),
                        LAYERS[fl].0,
                        to.display(),
                        LAYERS[tl].0
                    ));
                }
            }
            let forbidden = FORBIDDEN
                .iter()
                .any(|(f, t)| *f == ft && (*t == tt || (*t == "*" && tt != ft)));
            if forbidden {
                bad.push(format!(
                    "{} imports {}: {ft}/ may not use {tt}/",
                    from.display(),
                    to.display()
                ));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "imports against the layering:\n{}",
        bad.join("\n")
    );
}

#[test]
fn no_import_cycle_is_larger_than_four_files() {
    let edges = graph();
    let sccs = strongly_connected(&edges);
    let big: Vec<_> = sccs.iter().filter(|c| c.len() > MAX_CYCLE).collect();
    assert!(
        big.is_empty(),
        "import cycles of more than {MAX_CYCLE} files: {big:#?}"
    );
}

/// Tarjan's strongly connected components.
fn strongly_connected(edges: &BTreeMap<PathBuf, BTreeSet<PathBuf>>) -> Vec<Vec<PathBuf>> {
    struct St<'a> {
        edges: &'a BTreeMap<PathBuf, BTreeSet<PathBuf>>,
        index: HashMap<&'a PathBuf, usize>,
        low: HashMap<&'a PathBuf, usize>,
        stack: Vec<&'a PathBuf>,
        on: BTreeSet<&'a PathBuf>,
        next: usize,
        out: Vec<Vec<PathBuf>>,
    }
    fn visit<'a>(s: &mut St<'a>, v: &'a PathBuf) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        s.on.insert(v);
        let edges = s.edges;
        for w in edges.get(v).into_iter().flatten() {
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(lw);
            } else if s.on.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on.remove(w);
                comp.push(w.clone());
                if w == v {
                    break;
                }
            }
            s.out.push(comp);
        }
    }
    let mut s = St {
        edges,
        index: HashMap::new(),
        low: HashMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    s.out
}

// The checker checks itself: each rule fires on a made-up tree.

#[test]
fn grouped_and_renamed_imports_expand() {
    let mut got = expand("crate::{app::App, web::{body::{self, Body}, route as r}, io}");
    got.sort();
    assert_eq!(
        got,
        [
            "crate::app::App",
            "crate::io",
            "crate::web::body",
            "crate::web::body::Body",
            "crate::web::route",
        ]
    );
}

#[test]
fn comments_strings_and_test_modules_are_not_imports() {
    let code = r#"
        // use crate::app::App;
        /* use crate::server; */
        const S: &str = "crate::dispatch::x";
        fn f<'a>(c: char) -> bool { c == '"' }
        use crate::oci::Digest;
        #[cfg(test)]
        mod tests { use crate::app::App; }
        fn g() { crate::metrics::rate_limited(); }
    "#;
    let paths = paths_in(&without_tests(&strip(code)));
    assert_eq!(
        paths,
        ["crate::oci::Digest", "crate::metrics::rate_limited"]
    );
}

#[test]
fn relative_paths_resolve_to_their_files() {
    let tree = Tree {
        modules: [
            (vec!["cache".to_string()], PathBuf::from("cache/mod.rs")),
            (
                vec!["cache".to_string(), "fill".to_string()],
                PathBuf::from("cache/fill.rs"),
            ),
            (vec!["app".to_string()], PathBuf::from("app.rs")),
        ]
        .into_iter()
        .collect(),
    };
    let here = ["cache".to_string(), "fill".to_string()];
    let parent = ["cache".to_string()];
    let resolve = |here: &[String], p: &str| {
        tree.absolute(here, p)
            .and_then(|a| tree.file_of(&a).cloned())
    };
    assert_eq!(resolve(&here, "super::Fills"), Some("cache/mod.rs".into()));
    assert_eq!(
        resolve(&here, "super::super::app::App"),
        Some("app.rs".into())
    );
    assert_eq!(
        resolve(&parent, "fill::Fills"),
        Some("cache/fill.rs".into())
    );
    assert_eq!(resolve(&here, "crate::app::App"), Some("app.rs".into()));
    assert_eq!(resolve(&here, "std::sync::Arc"), None);
}

#[test]
fn an_upward_import_and_a_big_cycle_are_caught() {
    let e = |pairs: &[(&str, &str)]| {
        let mut m: BTreeMap<PathBuf, BTreeSet<PathBuf>> = BTreeMap::new();
        for (a, b) in pairs {
            m.entry(PathBuf::from(a))
                .or_default()
                .insert(PathBuf::from(b));
            m.entry(PathBuf::from(b)).or_default();
        }
        m
    };
    let ring = e(&[
        ("a.rs", "b.rs"),
        ("b.rs", "c.rs"),
        ("c.rs", "d.rs"),
        ("d.rs", "e.rs"),
        ("e.rs", "a.rs"),
    ]);
    assert!(strongly_connected(&ring).iter().any(|c| c.len() == 5));
    assert!(
        layer_of("cache") > layer_of("app"),
        "services sit below app"
    );
    assert!(layer_of("metrics") > layer_of("handlers"));
    assert!(FORBIDDEN.contains(&("upstream", "cache")));
}
