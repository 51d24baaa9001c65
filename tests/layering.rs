//! The layering rules the README's architecture section states, checked on the sources so a
//! change that breaks one fails here, naming the files:
//! - no import circle between the modules of any crate (module A naming `crate::B...` or
//!   `super::B` while B, directly or through others, names A);
//! - no source file outside tests longer than 800 lines.
//!
//! Only code counts: comments (doc links included) and `#[cfg(test)] mod tests` blocks are
//! not imports of the module.
//!
//! What is not done yet is listed below by name ([`OPEN_CIRCLES`], [`OPEN_LONG_FILES`]), as
//! the README's architecture section says: a new circle or a new long file fails, and so does
//! an entry that is no longer true, so the lists can only shrink.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_LINES: usize = 800;

/// Circles still to break (issue 23): (crate folder, the modules in it).
const OPEN_CIRCLES: &[(&str, &[&str])] = &[];

/// Files still to split (issue 23).
const OPEN_LONG_FILES: &[&str] = &[];

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every crate's `src` folder: the root crate's and each member's.
fn crate_sources() -> Vec<(String, PathBuf)> {
    let root = workspace();
    let mut out = vec![("lamplighter".to_string(), root.join("src"))];
    for entry in std::fs::read_dir(&root).unwrap() {
        let dir = entry.unwrap().path();
        if dir.join("Cargo.toml").is_file() && dir.join("src").is_dir() {
            let name = dir.file_name().unwrap().to_string_lossy().into_owned();
            out.push((name, dir.join("src")));
        }
    }
    out.sort();
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/core/policy/mod.rs` -> `["core", "policy"]`; `lib.rs`/`main.rs` -> `[]`.
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

fn is_test_file(module: &[String]) -> bool {
    module
        .last()
        .is_some_and(|m| m == "tests" || m.starts_with("tests_"))
}

/// The code of a file without comments and without its unit-test module.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    };
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The path segments after each `prefix` in `code` (`crate::core::policy::X` -> core, policy).
fn paths_after<'a>(code: &'a str, prefix: &str) -> Vec<Vec<&'a str>> {
    code.match_indices(prefix)
        .map(|(at, _)| {
            code[at + prefix.len()..]
                .split("::")
                .map(|seg| {
                    let end = seg
                        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .unwrap_or(seg.len());
                    &seg[..end]
                })
                .take_while(|seg| !seg.is_empty())
                .collect()
        })
        .collect()
}

/// Edges between sibling modules: `a::b` naming `crate::a::c::x` makes the edge b -> c
/// (under a), and `crate::d` from `a::b` makes a -> d.
fn module_edges(src: &Path) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for file in files {
        let module = module_path(src, &file);
        if is_test_file(&module) {
            continue;
        }
        let code = code(&std::fs::read_to_string(&file).unwrap());
        let mut targets: Vec<Vec<String>> = paths_after(&code, "crate::")
            .into_iter()
            .map(|p| p.into_iter().map(str::to_string).collect())
            .collect();
        for p in paths_after(&code, "super::") {
            if let (Some(first), Some(parent)) = (p.first(), module.split_last().map(|(_, p)| p)) {
                let mut t = parent.to_vec();
                t.push(first.to_string());
                targets.push(t);
            }
        }
        for target in targets {
            let shared = module
                .iter()
                .zip(&target)
                .take_while(|(a, b)| a == b)
                .count();
            if shared < module.len() && shared < target.len() {
                edges
                    .entry(module[..=shared].to_vec())
                    .or_default()
                    .insert(target[..=shared].to_vec());
            }
        }
    }
    edges
}

/// One circle among `edges`, if there is any, as the modules along it.
fn find_circle(edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Option<Vec<String>> {
    fn visit(
        node: &Vec<String>,
        edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        path: &mut Vec<Vec<String>>,
        done: &mut BTreeSet<Vec<String>>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == node) {
            let mut circle: Vec<String> = path[at..].iter().map(|m| m.join("::")).collect();
            circle.push(node.join("::"));
            return Some(circle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.clone());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, edges, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.clone());
        None
    }
    let mut done = BTreeSet::new();
    edges
        .keys()
        .find_map(|start| visit(start, edges, &mut Vec::new(), &mut done))
}

#[test]
fn no_crate_has_an_import_circle_between_its_modules() {
    let mut circles = Vec::new();
    for (name, src) in crate_sources() {
        let mut edges = module_edges(&src);
        if let Some((_, open)) = OPEN_CIRCLES.iter().find(|(c, _)| *c == name) {
            assert!(
                find_circle(&edges).is_some(),
                "{name}: the open circle {open:?} is gone: delete it from OPEN_CIRCLES"
            );
            // Without the open circle's own edges, no other circle may remain.
            let open: Vec<Vec<String>> = open
                .iter()
                .map(|m| m.split("::").map(str::to_string).collect())
                .collect();
            for (from, to) in edges.iter_mut() {
                if open.contains(from) {
                    to.retain(|t| !open.contains(t));
                }
            }
        }
        if let Some(circle) = find_circle(&edges) {
            circles.push(format!("{name}: {}", circle.join(" -> ")));
        }
    }
    assert!(
        circles.is_empty(),
        "import circles:\n{}",
        circles.join("\n")
    );
}

#[test]
fn the_checker_sees_a_circle_when_there_is_one() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir_all(src.join("plan")).unwrap();
    std::fs::write(src.join("lib.rs"), "mod plan;\n").unwrap();
    std::fs::write(
        src.join("plan/engine.rs"),
        "// crate::plan::queue in a comment is no import\nuse super::traffic::Shared;\n",
    )
    .unwrap();
    std::fs::write(
        src.join("plan/traffic.rs"),
        "pub struct Shared;\nfn f() { crate::plan::engine::run(); }\n",
    )
    .unwrap();
    std::fs::write(src.join("plan/queue.rs"), "use crate::plan::engine;\n").unwrap();
    let circle = find_circle(&module_edges(src)).expect("engine <-> traffic");
    assert_eq!(circle.first(), circle.last());
    assert!(circle.contains(&"plan::engine".to_string()), "{circle:?}");
    assert!(circle.contains(&"plan::traffic".to_string()), "{circle:?}");
    assert!(!circle.contains(&"plan::queue".to_string()), "{circle:?}");

    std::fs::write(src.join("plan/traffic.rs"), "pub struct Shared;\n").unwrap();
    assert_eq!(find_circle(&module_edges(src)), None);
}

#[test]
fn no_source_file_outside_tests_is_over_800_lines() {
    let mut long = Vec::new();
    for (_, src) in crate_sources() {
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        for file in files {
            if is_test_file(&module_path(&src, &file)) {
                continue;
            }
            let lines = std::fs::read_to_string(&file).unwrap().lines().count();
            if lines > MAX_LINES {
                long.push(
                    file.strip_prefix(workspace())
                        .unwrap()
                        .display()
                        .to_string(),
                );
            }
        }
    }
    long.sort();
    let new: Vec<&String> = long
        .iter()
        .filter(|f| !OPEN_LONG_FILES.contains(&f.as_str()))
        .collect();
    assert!(
        new.is_empty(),
        "files over {MAX_LINES} lines (split them, or say why in the README's architecture \
         section and list them in OPEN_LONG_FILES): {new:?}"
    );
    let done: Vec<&&str> = OPEN_LONG_FILES
        .iter()
        .filter(|f| !long.iter().any(|l| l == *f))
        .collect();
    assert!(
        done.is_empty(),
        "now at most {MAX_LINES} lines: delete from OPEN_LONG_FILES: {done:?}"
    );
}
