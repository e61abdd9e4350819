//! No import cycles among the top-level modules of pgrepl-core, of any length.
//!
//! A plain text scan of `src/`: every `crate::<module>` path (and every module named in
//! a `crate::{...}` group, and every name `lib.rs` re-exports from a module, as in
//! `crate::Error`) outside comments, string literals, `#[cfg(test)]` items and
//! `mod tests` blocks (or files) is an edge from the module of the file to `<module>`. A
//! module directory (`observe/`, `plan/`, `ha/`, `version/`, `testing/` next to
//! `testing.rs`, `deploy/`) counts as one module; `lib.rs` is the root and not a module.
//! The test fails on any cycle among these modules, of any length (a strongly connected
//! component of more than one module), printing a shortest cycle through it and every
//! reference between its modules with file:line.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Where module A refers to module B: `(file, line)` of each mention.
type Edges = BTreeMap<String, BTreeMap<String, Vec<(String, usize)>>>;

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut entries: Vec<PathBuf> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            out.extend(rust_files(&p));
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
    out
}

/// The top-level module a file under `src/` belongs to (`None` for `lib.rs`).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel.components().next()?.as_os_str().to_string_lossy().into_owned();
    if rel.components().count() == 1 {
        let stem = first.strip_suffix(".rs")?;
        return (stem != "lib").then(|| stem.to_string());
    }
    Some(first)
}

/// The code of a Rust file with comments and the contents of string and character
/// literals blanked (line breaks kept, so positions keep their line numbers).
fn strip_comments_and_literals(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |out: &mut String, ch: char| out.push(if ch == '\n' { '\n' } else { ' ' });
    let mut i = 0;
    while i < c.len() {
        let next = c.get(i + 1).copied();
        if c[i] == '/' && next == Some('/') {
            while i < c.len() && c[i] != '\n' {
                blank(&mut out, c[i]);
                i += 1;
            }
        } else if c[i] == '/' && next == Some('*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, c[i]);
                    i += 1;
                }
            }
        } else if c[i] == 'r' && (next == Some('"') || next == Some('#')) && (i == 0 || !is_ident(c[i - 1])) {
            // A raw string r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while c.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if c.get(j) != Some(&'"') {
                out.push(c[i]);
                i += 1;
                continue;
            }
            out.push('"');
            for _ in i..j {
                out.push(' ');
            }
            i = j + 1;
            while i < c.len() {
                if c[i] == '"' && (0..hashes).all(|k| c.get(i + 1 + k) == Some(&'#')) {
                    out.push('"');
                    for _ in 0..hashes {
                        out.push(' ');
                    }
                    i += 1 + hashes;
                    break;
                }
                blank(&mut out, c[i]);
                i += 1;
            }
        } else if c[i] == '"' {
            out.push('"');
            i += 1;
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' {
                    blank(&mut out, c[i]);
                    i += 1;
                }
                if i < c.len() {
                    blank(&mut out, c[i]);
                    i += 1;
                }
            }
            out.push('"');
            i += 1;
        } else if c[i] == '\'' && next == Some('\\') {
            // An escaped character literal: '\n', '\'', '\u{..}'.
            out.push('\'');
            i += 1;
            while i < c.len() && !(c[i] == '\'' && c[i - 1] != '\\') {
                blank(&mut out, c[i]);
                i += 1;
            }
            out.push('\'');
            i += 1;
        } else if c[i] == '\'' && c.get(i + 2) == Some(&'\'') {
            // A plain character literal such as '"' or '{'.
            out.push_str("' '");
            i += 3;
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

fn is_ident(ch: char) -> bool {
    ch.is_ascii_alphanumeric() || ch == '_'
}

/// The end (exclusive) of the item starting at `from`: after its first `;` at depth 0,
/// or after the brace block that opens first.
fn item_end(c: &[char], from: usize) -> usize {
    let mut i = from;
    // Skip further attributes (`#[...]`) before the item.
    loop {
        while i < c.len() && c[i].is_whitespace() {
            i += 1;
        }
        if c.get(i) == Some(&'#') && c.get(i + 1) == Some(&'[') {
            let mut depth = 0;
            while i < c.len() {
                match c[i] {
                    '[' => depth += 1,
                    ']' => {
                        depth -= 1;
                        if depth == 0 {
                            i += 1;
                            break;
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
        } else {
            break;
        }
    }
    while i < c.len() && c[i] != '{' && c[i] != ';' {
        i += 1;
    }
    if i >= c.len() || c[i] == ';' {
        return (i + 1).min(c.len());
    }
    let mut depth = 0;
    while i < c.len() {
        match c[i] {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    c.len()
}

/// `code` (already stripped) without its `#[cfg(test)]` items and `mod tests` items, and
/// the names of the out-of-line modules (`mod x;`) among what was removed.
fn strip_test_items(code: &str) -> (String, Vec<String>) {
    let mut c: Vec<char> = code.chars().collect();
    let mut removed_mods = Vec::new();
    let mut i = 0;
    while i < c.len() {
        let rest: String = c[i..c.len().min(i + 16)].iter().collect();
        let cfg_test = rest.starts_with("#[cfg(test)]");
        let mod_tests = rest.starts_with("mod tests") && (i == 0 || !is_ident(c[i - 1])) && !c.get(i + 9).copied().is_some_and(is_ident);
        if !cfg_test && !mod_tests {
            i += 1;
            continue;
        }
        let start = i;
        let end = item_end(&c, if cfg_test { i + "#[cfg(test)]".len() } else { i });
        let item: String = c[start..end].iter().collect();
        if item.trim_end().ends_with(';') {
            if let Some(name) = item.split("mod ").nth(1).map(|s| s.trim_end_matches(|ch: char| ch == ';' || ch.is_whitespace())) {
                removed_mods.push(name.trim().to_string());
            }
        }
        for ch in &mut c[start..end] {
            if *ch != '\n' {
                *ch = ' ';
            }
        }
        i = end;
    }
    (c.into_iter().collect(), removed_mods)
}

/// The first path segment of every `crate::` path in `code`, with its line: `crate::a::b`
/// gives `a`; `crate::{a::b, c}` gives `a` and `c`.
fn crate_paths(code: &str) -> Vec<(String, usize)> {
    let c: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let line_at = |i: usize| c[..i].iter().filter(|&&ch| ch == '\n').count() + 1;
    let ident_at = |mut i: usize| {
        while i < c.len() && c[i].is_whitespace() {
            i += 1;
        }
        let start = i;
        while i < c.len() && is_ident(c[i]) {
            i += 1;
        }
        (c[start..i].iter().collect::<String>(), i)
    };
    let mut i = 0;
    while i + 7 <= c.len() {
        let is_path = c[i..i + 7].iter().collect::<String>() == "crate::" && (i == 0 || !is_ident(c[i - 1]));
        if !is_path {
            i += 1;
            continue;
        }
        let line = line_at(i);
        let mut j = i + 7;
        while j < c.len() && c[j].is_whitespace() {
            j += 1;
        }
        if c.get(j) == Some(&'{') {
            // A group: the first segment of each entry at depth 1.
            let mut depth = 0;
            let mut expect_entry = true;
            while j < c.len() {
                match c[j] {
                    '{' => {
                        depth += 1;
                        expect_entry = depth == 1;
                        j += 1;
                    }
                    '}' => {
                        depth -= 1;
                        j += 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' => {
                        expect_entry = depth == 1;
                        j += 1;
                    }
                    ch if expect_entry && is_ident(ch) => {
                        let (name, k) = ident_at(j);
                        out.push((name, line_at(j)));
                        expect_entry = false;
                        j = k;
                    }
                    _ => j += 1,
                }
            }
        } else {
            let (name, k) = ident_at(j);
            if !name.is_empty() {
                out.push((name, line));
            }
            j = k;
        }
        i = j.max(i + 1);
    }
    out
}

/// The names `lib.rs` re-exports at the crate root, each with the module it comes from:
/// `pub use error::{Error, SpecError as E};` gives `Error -> error` and `E -> error`, so a
/// `crate::Error` path is an edge to `error` too.
fn root_reexports(lib_code: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for stmt in lib_code.split(';') {
        let Some(at) = stmt.find("pub use ") else { continue };
        let path = stmt[at + "pub use ".len()..].trim();
        let path = path.strip_prefix("crate::").unwrap_or(path);
        let Some((module, rest)) = path.split_once("::") else { continue };
        for entry in rest.trim().trim_start_matches('{').trim_end_matches('}').split(',') {
            let name = entry.split_whitespace().last().unwrap_or("").rsplit("::").next().unwrap_or("");
            if !name.is_empty() && name != "*" && name != "self" {
                out.insert(name.to_string(), module.trim().to_string());
            }
        }
    }
    out
}

/// The file of out-of-line module `name` declared in `file`.
fn child_files(file: &Path, name: &str) -> Vec<PathBuf> {
    let stem = file.file_stem().unwrap().to_string_lossy();
    let dir = if stem == "mod" || stem == "lib" { file.parent().unwrap().to_path_buf() } else { file.with_extension("") };
    vec![dir.join(format!("{name}.rs")), dir.join(name).join("mod.rs")]
}

/// Who refers to whom among the top-level modules of `src`.
fn module_graph(src: &Path) -> Edges {
    let files = rust_files(src);
    let modules: BTreeSet<String> = files.iter().filter_map(|f| module_of(src, f)).collect();
    let mut code: BTreeMap<PathBuf, String> = BTreeMap::new();
    let mut test_files: BTreeSet<PathBuf> = BTreeSet::new();
    for f in &files {
        let (c, removed) = strip_test_items(&strip_comments_and_literals(&fs::read_to_string(f).unwrap()));
        for name in removed {
            test_files.extend(child_files(f, &name));
        }
        code.insert(f.clone(), c);
    }
    let reexports = root_reexports(&code[&src.join("lib.rs")]);
    // A test module's own submodules are test code too.
    let mut edges = Edges::new();
    for (f, c) in &code {
        if test_files.iter().any(|t| f == t || t.file_name().is_some_and(|n| n == "mod.rs") && f.starts_with(t.parent().unwrap())) {
            continue;
        }
        let Some(from) = module_of(src, f) else { continue };
        for (to, line) in crate_paths(c) {
            let to = reexports.get(&to).cloned().unwrap_or(to);
            if to != from && modules.contains(&to) {
                let rel = f.strip_prefix(src.parent().unwrap()).unwrap().display().to_string();
                edges.entry(from.clone()).or_default().entry(to).or_default().push((rel, line));
            }
        }
    }
    edges
}

/// Cycles among top-level modules that are known and accepted for now, each as its
/// modules (sorted) and why it stays. Empty: every cycle fails the test.
const ALLOWED_CYCLES: &[(&[&str], &str)] = &[];

/// The strongly connected components of `edges` with more than one module, each sorted,
/// in order of their first module (Tarjan's algorithm).
fn cycles(edges: &Edges) -> Vec<Vec<String>> {
    struct Tarjan<'a> {
        edges: &'a Edges,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    impl<'a> Tarjan<'a> {
        fn visit(&mut self, v: &'a str) {
            let i = self.index.len();
            self.index.insert(v, i);
            self.low.insert(v, i);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.edges.get(v).into_iter().flat_map(|t| t.keys()) {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let lw = self.low[w];
                    let lv = self.low.get_mut(v).unwrap();
                    *lv = (*lv).min(lw);
                } else if self.on_stack.contains(w) {
                    let iw = self.index[w];
                    let lv = self.low.get_mut(v).unwrap();
                    *lv = (*lv).min(iw);
                }
            }
            if self.low[v] == self.index[v] {
                let mut scc = Vec::new();
                loop {
                    let w = self.stack.pop().unwrap();
                    self.on_stack.remove(w);
                    scc.push(w.to_string());
                    if w == v {
                        break;
                    }
                }
                if scc.len() > 1 {
                    scc.sort();
                    self.out.push(scc);
                }
            }
        }
    }
    let mut t =
        Tarjan { edges, index: BTreeMap::new(), low: BTreeMap::new(), stack: Vec::new(), on_stack: BTreeSet::new(), out: Vec::new() };
    let nodes: BTreeSet<&str> =
        edges.iter().flat_map(|(a, tos)| std::iter::once(a.as_str()).chain(tos.keys().map(String::as_str))).collect();
    for v in nodes {
        if !t.index.contains_key(v) {
            t.visit(v);
        }
    }
    t.out.sort();
    t.out
}

/// A shortest cycle through the first module of `scc`, staying inside `scc`: the modules
/// in order, the first repeated at the end.
fn shortest_cycle(edges: &Edges, scc: &[String]) -> Vec<String> {
    let start = &scc[0];
    let mut came_from: BTreeMap<&String, &String> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(v) = queue.pop_front() {
        for w in edges.get(v).into_iter().flat_map(|t| t.keys()).filter(|w| scc.contains(w)) {
            if w == start {
                let mut path = vec![start.clone(), v.clone()];
                let mut at = v;
                while at != start {
                    at = came_from[at];
                    path.push(at.clone());
                }
                path.reverse();
                return path;
            }
            if !came_from.contains_key(w) {
                came_from.insert(w, v);
                queue.push_back(w);
            }
        }
    }
    unreachable!("a strongly connected component has a cycle through each of its modules")
}

/// Every cycle among the modules of `edges`, one entry per strongly connected component:
/// a shortest cycle through it, then every reference between its modules with where.
fn describe_cycles(edges: &Edges) -> Vec<String> {
    let list = |v: &Vec<(String, usize)>| v.iter().map(|(f, l)| format!("{f}:{l}")).collect::<Vec<_>>().join(", ");
    cycles(edges)
        .into_iter()
        .map(|scc| {
            let mut s = shortest_cycle(edges, &scc).join(" -> ");
            for a in &scc {
                for (b, at) in edges.get(a).into_iter().flat_map(|t| t.iter()).filter(|(b, _)| scc.contains(b)) {
                    s.push_str(&format!("\n    {a} -> {b}: {}", list(at)));
                }
            }
            s
        })
        .collect()
}

#[test]
fn no_cycles_among_top_level_modules() {
    let edges = module_graph(&src_dir());
    // The scan sees the crate at all (a broken path would make the test pass on nothing).
    for (a, b) in [("validate", "cluster"), ("validate", "spec"), ("render", "cluster"), ("cluster", "spec")] {
        assert!(edges.get(a).is_some_and(|t| t.contains_key(b)), "the scan should see {a} -> {b}; edges: {edges:#?}");
    }
    let found = cycles(&edges);
    let allowed = |scc: &Vec<String>| ALLOWED_CYCLES.iter().any(|(m, _)| m.iter().copied().eq(scc.iter().map(String::as_str)));
    let bad: Vec<String> = describe_cycles(&edges).into_iter().zip(&found).filter(|(_, scc)| !allowed(scc)).map(|(d, _)| d).collect();
    assert!(
        bad.is_empty(),
        "cycles among top-level modules (move the shared piece to the lower module or a new one):\n  {}",
        bad.join("\n  ")
    );
    // An allowed cycle that is gone should leave the list too.
    for (m, why) in ALLOWED_CYCLES {
        assert!(
            found.iter().any(|scc| m.iter().copied().eq(scc.iter().map(String::as_str))),
            "allowed cycle {m:?} ({why}) no longer exists: remove it from ALLOWED_CYCLES"
        );
    }
}

#[test]
fn the_scanner_skips_comments_literals_and_test_code() {
    let code = r##"
use crate::a::X; // crate::b
/* crate::c /* nested crate::c */ still crate::c */
/// docs name [`crate::d`]
const S: &str = "crate::e \" crate::e";
const R: &str = r#"crate::f " crate::f"#;
const Q: char = '"';
fn g() -> crate::{h::Y, i, j::{k, crate_l}} { crate::m::f() }
#[cfg(test)]
mod tests { use crate::n; fn t() { let _ = '{'; } }
#[cfg(test)]
#[allow(unused)]
use crate::o;
#[cfg(test)]
mod more;
mod tests_helpers { use crate::p; }
"##;
    let (stripped, removed) = strip_test_items(&strip_comments_and_literals(code));
    let found: Vec<String> = crate_paths(&stripped).into_iter().map(|(m, _)| m).collect();
    assert_eq!(found, ["a", "h", "i", "j", "m", "p"]);
    assert_eq!(removed, ["more"]);
    let lines: Vec<usize> = crate_paths(&stripped).into_iter().map(|(_, l)| l).collect();
    assert_eq!(lines, [2, 8, 8, 8, 8, 16], "line numbers are kept");
}

#[test]
fn root_reexports_name_their_modules() {
    let lib = "pub mod error;\npub use error::{Error, SpecError as E, nested::Deep};\npub use lsn::Lsn;\nuse private::Hidden;\n";
    let found = root_reexports(lib);
    let pairs: Vec<(&str, &str)> = found.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(pairs, [("Deep", "error"), ("E", "error"), ("Error", "error"), ("Lsn", "lsn")]);
}

#[test]
fn a_cycle_of_two_names_both_directions() {
    let mut edges = Edges::new();
    edges.entry("a".into()).or_default().insert("b".into(), vec![("src/a.rs".into(), 3)]);
    edges.entry("b".into()).or_default().insert("a".into(), vec![("src/b/mod.rs".into(), 7)]);
    edges.entry("b".into()).or_default().insert("c".into(), vec![("src/b/x.rs".into(), 1)]);
    assert_eq!(describe_cycles(&edges), ["a -> b -> a\n    a -> b: src/a.rs:3\n    b -> a: src/b/mod.rs:7"]);
}

#[test]
fn longer_cycles_are_found_with_every_edge() {
    let mut edges = Edges::new();
    let mut edge =
        |a: &str, b: &str, at: &str, line| edges.entry(a.into()).or_default().entry(b.into()).or_default().push((at.into(), line));
    // error -> plan -> cluster -> error, with a chord plan -> error.
    edge("error", "plan", "src/error.rs", 95);
    edge("plan", "cluster", "src/plan/mod.rs", 35);
    edge("cluster", "error", "src/cluster.rs", 13);
    edge("plan", "error", "src/plan/up.rs", 2);
    // x -> y -> z -> w -> x, and acyclic edges around it.
    edge("x", "y", "src/x.rs", 1);
    edge("y", "z", "src/y.rs", 1);
    edge("z", "w", "src/z.rs", 1);
    edge("w", "x", "src/w.rs", 1);
    edge("x", "spec", "src/x.rs", 2);
    edge("spec", "lsn", "src/spec.rs", 2);
    assert_eq!(cycles(&edges), [vec!["cluster", "error", "plan"], vec!["w", "x", "y", "z"]]);
    assert_eq!(
        describe_cycles(&edges),
        [
            "cluster -> error -> plan -> cluster\n    cluster -> error: src/cluster.rs:13\n    error -> plan: src/error.rs:95\n    \
             plan -> cluster: src/plan/mod.rs:35\n    plan -> error: src/plan/up.rs:2",
            "w -> x -> y -> z -> w\n    w -> x: src/w.rs:1\n    x -> y: src/x.rs:1\n    y -> z: src/y.rs:1\n    z -> w: src/z.rs:1",
        ]
    );
    // No cycle, no entry.
    let mut dag = Edges::new();
    dag.entry("a".into()).or_default().insert("b".into(), vec![("src/a.rs".into(), 1)]);
    dag.entry("b".into()).or_default().insert("c".into(), vec![("src/b.rs".into(), 1)]);
    dag.entry("a".into()).or_default().insert("c".into(), vec![("src/a.rs".into(), 2)]);
    assert!(cycles(&dag).is_empty());
}
