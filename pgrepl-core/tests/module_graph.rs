//! No two top-level modules of pgrepl-core refer to each other.
//!
//! A plain text scan of `src/`: every `crate::<module>` path (and every module named in
//! a `crate::{...}` group) outside comments, string literals, `#[cfg(test)]` items and
//! `mod tests` blocks (or files) is an edge from the module of the file to `<module>`. A
//! module directory (`observe/`, `plan/`, `ha/`, `version/`, `testing/` next to
//! `testing.rs`) counts as one module; `lib.rs` is the root and not a module. The test
//! fails when A refers to B and B to A, naming both and where each reference is.

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
    // A test module's own submodules are test code too.
    let mut edges = Edges::new();
    for (f, c) in &code {
        if test_files.iter().any(|t| f == t || t.file_name().is_some_and(|n| n == "mod.rs") && f.starts_with(t.parent().unwrap())) {
            continue;
        }
        let Some(from) = module_of(src, f) else { continue };
        for (to, line) in crate_paths(c) {
            if to != from && modules.contains(&to) {
                let rel = f.strip_prefix(src.parent().unwrap()).unwrap().display().to_string();
                edges.entry(from.clone()).or_default().entry(to).or_default().push((rel, line));
            }
        }
    }
    edges
}

/// Every pair of modules that refer to each other, each with where.
fn mutual_references(edges: &Edges) -> Vec<String> {
    let mut cycles = Vec::new();
    for (a, tos) in edges {
        for (b, at_a) in tos {
            if a < b {
                if let Some(at_b) = edges.get(b).and_then(|t| t.get(a)) {
                    let list = |v: &Vec<(String, usize)>| v.iter().map(|(f, l)| format!("{f}:{l}")).collect::<Vec<_>>().join(", ");
                    cycles.push(format!("{a} <-> {b}\n    {a} -> {b}: {}\n    {b} -> {a}: {}", list(at_a), list(at_b)));
                }
            }
        }
    }
    cycles
}

#[test]
fn no_two_top_level_modules_refer_to_each_other() {
    let edges = module_graph(&src_dir());
    // The scan sees the crate at all (a broken path would make the test pass on nothing).
    for (a, b) in [("validate", "cluster"), ("validate", "spec"), ("render", "cluster"), ("cluster", "spec")] {
        assert!(edges.get(a).is_some_and(|t| t.contains_key(b)), "the scan should see {a} -> {b}; edges: {edges:#?}");
    }
    let cycles = mutual_references(&edges);
    assert!(
        cycles.is_empty(),
        "modules that refer to each other (move the shared piece to the lower module or a new one):\n  {}",
        cycles.join("\n  ")
    );
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
fn mutual_references_name_both_directions() {
    let mut edges = Edges::new();
    edges.entry("a".into()).or_default().insert("b".into(), vec![("src/a.rs".into(), 3)]);
    edges.entry("b".into()).or_default().insert("a".into(), vec![("src/b/mod.rs".into(), 7)]);
    edges.entry("b".into()).or_default().insert("c".into(), vec![("src/b/x.rs".into(), 1)]);
    assert_eq!(mutual_references(&edges), ["a <-> b\n    a -> b: src/a.rs:3\n    b -> a: src/b/mod.rs:7"]);
}
