//! Every version difference lives in `src/version/` (the capability table): a comparison
//! of PostgreSQL majors anywhere else in the crate's sources fails this test, naming the
//! file and line. Equality with a fixed major in tests is fine; ordering is not.

use std::path::Path;

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Whether a line orders majors: `< PgMajor::V..`, `PgMajor::V.. >=`, `major() >`, `.major <`,
/// `major.cmp(`, or a comparison of `major.number()`.
fn orders_majors(line: &str) -> bool {
    let code = line.split("//").next().unwrap_or("");
    let ops = ["<=", ">=", " < ", " > "];
    let mentions_major = code.contains("PgMajor::V") || code.contains("major") || code.contains("Major");
    if !mentions_major {
        return false;
    }
    let compares_fixed = code.contains("PgMajor::V") && ops.iter().any(|o| code.contains(o));
    let compares_field = ["major >", "major <", "major() >", "major() <", "major >=", "major <=", ".major.cmp(", "major.number() "]
        .iter()
        .any(|p| code.contains(p) && !code.contains("->"));
    compares_fixed || compares_field
}

#[test]
fn no_major_comparison_outside_the_version_module() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut found = Vec::new();
    for f in files {
        if f.starts_with(src.join("version")) {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        for (i, line) in text.lines().enumerate() {
            if orders_majors(line) {
                found.push(format!("{}:{}: {}", f.strip_prefix(&src).unwrap().display(), i + 1, line.trim()));
            }
        }
    }
    assert!(found.is_empty(), "version rules outside src/version/ (put them in caps.rs):\n{}", found.join("\n"));
}

#[test]
fn the_detector_sees_what_it_must() {
    assert!(orders_majors("if major >= PgMajor::V12 {"));
    assert!(orders_majors("let x = PgMajor::V9_6 < m;"));
    assert!(orders_majors("if caps.major > PgMajor::V10 {"));
    assert!(orders_majors("if cluster.major <= Some(PgMajor::V11) {"));
    assert!(!orders_majors("assert_eq!(f.majors, vec![PgMajor::V15]);"));
    assert!(!orders_majors("// if major >= PgMajor::V12"));
    assert!(!orders_majors("let caps = PgMajor::V16.caps();"));
}
