//! The layer rules of `src/lib.rs`'s crate map, held against the code: every
//! `crate::` and `super::` path in `src/` is resolved to the module it names,
//! and an import that runs up a layer, or closes a circle between modules,
//! fails with the file and line that make it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// `(layer, layers it must not import)`.
const FORBIDDEN: &[(&str, &[&str])] = &[
    (
        "core",
        &[
            "store",
            "publish",
            "replication",
            "transport",
            "http",
            "net",
            "gateway",
            "auth",
        ],
    ),
    (
        "store",
        &[
            "publish",
            "replication",
            "transport",
            "http",
            "net",
            "gateway",
        ],
    ),
    (
        "publish",
        &["replication", "transport", "http", "net", "gateway"],
    ),
    ("replication", &["transport", "http", "gateway", "fleet"]),
    ("http", &["transport", "gateway", "fleet"]),
    (
        "transport",
        &["store", "publish", "replication", "gateway", "fleet"],
    ),
    // Central operations' view: what the boxes report, never their insides.
    ("fleet", &["store", "publish", "transport", "gateway"]),
    (
        "net",
        &[
            "core",
            "store",
            "publish",
            "replication",
            "transport",
            "http",
            "gateway",
            "auth",
        ],
    ),
];

/// Leaves import nothing of the crate but these.
const LEAVES: &[(&str, &[&str])] = &[
    ("config", &[]),
    ("metrics", &[]),
    ("clock", &[]),
    ("auth", &["config", "core"]),
];

/// One import: which module's file, at which line, names which module.
#[derive(Debug, Clone)]
struct Import {
    from: Vec<String>,
    to: Vec<String>,
    file: PathBuf,
    line: usize,
}

/// Every module of the crate by path (`["core", "rooms"]`), with its file.
fn modules(src: &Path) -> BTreeMap<Vec<String>, PathBuf> {
    let mut found = BTreeMap::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src/") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|ext| ext != "rs") {
                continue;
            }
            let relative = path.strip_prefix(src).expect("under src/");
            let mut parts: Vec<String> = relative
                .iter()
                .map(|part| part.to_string_lossy().trim_end_matches(".rs").to_owned())
                .collect();
            match parts.last().map(String::as_str) {
                Some("main") if parts.len() == 1 => continue,
                Some("lib") if parts.len() == 1 => parts.clear(),
                Some("mod") => {
                    parts.pop();
                }
                _ => {}
            }
            found.insert(parts, path);
        }
    }
    found
}

/// The paths a line names through `crate::` or `super::`, as segments.
fn named_paths(line: &str) -> Vec<(bool, Vec<String>)> {
    let mut paths = Vec::new();
    for (prefix, from_crate) in [("crate::", true), ("super::", false)] {
        let mut rest = line;
        while let Some(at) = rest.find(prefix) {
            let before = rest[..at].chars().last();
            let tail = &rest[at + prefix.len()..];
            rest = tail;
            // `pub(crate)`, `pub(super)` and `foo::super::` are not paths from here.
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':' || c == '(') {
                continue;
            }
            let mut segments = Vec::new();
            let mut supers = 0;
            if !from_crate {
                supers = 1;
            }
            for segment in tail.split("::") {
                let name: String = segment
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if name.is_empty() {
                    break;
                }
                if name == "super" && segments.is_empty() {
                    supers += 1;
                    continue;
                }
                let whole = name.len() == segment.len();
                segments.push(name);
                if !whole {
                    break;
                }
            }
            let mut marked = vec![String::new(); supers];
            marked.extend(segments);
            paths.push((from_crate, marked));
        }
    }
    paths
}

fn imports(src: &Path, modules: &BTreeMap<Vec<String>, PathBuf>) -> Vec<Import> {
    let mut all = Vec::new();
    for (module, file) in modules {
        let text = std::fs::read_to_string(file).expect("read module");
        for (index, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            for (from_crate, path) in named_paths(code) {
                let absolute = if from_crate {
                    path
                } else {
                    // `super::` of module `a::b` (`a/b.rs`) is `a`, and of
                    // module `a` (`a/mod.rs`) the crate.
                    let supers = path.iter().take_while(|s| s.is_empty()).count();
                    let mut base = module.clone();
                    for _ in 0..supers {
                        base.pop();
                    }
                    base.extend(path.into_iter().skip(supers));
                    base
                };
                // The longest prefix that is a module of the crate.
                let target = (1..=absolute.len())
                    .rev()
                    .map(|len| absolute[..len].to_vec())
                    .find(|prefix| modules.contains_key(prefix));
                if let Some(to) = target {
                    if &to != module {
                        all.push(Import {
                            from: module.clone(),
                            to,
                            file: file
                                .strip_prefix(src.parent().unwrap_or(src))
                                .unwrap_or(file)
                                .to_path_buf(),
                            line: index + 1,
                        });
                    }
                }
            }
        }
    }
    all
}

fn layer(module: &[String]) -> &str {
    module.first().map_or("crate", String::as_str)
}

/// What breaks the rules: one message per offending import or circle.
fn violations(src: &Path) -> Vec<String> {
    let modules = modules(src);
    let imports = imports(src, &modules);
    let mut found = Vec::new();
    for import in &imports {
        let (from, to) = (layer(&import.from), layer(&import.to));
        if from == to {
            continue;
        }
        let forbidden = FORBIDDEN
            .iter()
            .find(|(layer, _)| *layer == from)
            .is_some_and(|(_, banned)| banned.contains(&to));
        let leaf_breach = LEAVES
            .iter()
            .find(|(leaf, _)| *leaf == from)
            .is_some_and(|(_, allowed)| !allowed.contains(&to));
        if forbidden || leaf_breach {
            found.push(format!(
                "{}:{}: {} imports {} ({from} may not import {to})",
                import.file.display(),
                import.line,
                import.from.join("::"),
                import.to.join("::"),
            ));
        }
    }
    // Circles between modules: a module that reaches itself again.
    let mut edges: BTreeMap<&Vec<String>, BTreeMap<&Vec<String>, &Import>> = BTreeMap::new();
    for import in &imports {
        edges
            .entry(&import.from)
            .or_default()
            .entry(&import.to)
            .or_insert(import);
    }
    let mut reported = BTreeSet::new();
    for start in edges.keys() {
        if let Some(circle) = circle_from(start, &edges) {
            let mut members: Vec<_> = circle.iter().map(|import| import.from.join("::")).collect();
            members.sort();
            if reported.insert(members) {
                let arrows: Vec<String> = circle
                    .iter()
                    .map(|import| {
                        format!(
                            "{}:{} ({} -> {})",
                            import.file.display(),
                            import.line,
                            import.from.join("::"),
                            import.to.join("::")
                        )
                    })
                    .collect();
                found.push(format!("import circle: {}", arrows.join(", ")));
            }
        }
    }
    found
}

/// A path of imports from `start` back to it, if there is one.
fn circle_from<'a>(
    start: &'a Vec<String>,
    edges: &BTreeMap<&'a Vec<String>, BTreeMap<&'a Vec<String>, &'a Import>>,
) -> Option<Vec<&'a Import>> {
    let mut stack: Vec<(&Vec<String>, Vec<&Import>)> = vec![(start, Vec::new())];
    let mut seen = BTreeSet::new();
    while let Some((at, path)) = stack.pop() {
        for (next, import) in edges.get(at).into_iter().flatten() {
            let mut longer = path.clone();
            longer.push(*import);
            if *next == start {
                return Some(longer);
            }
            if seen.insert(*next) {
                stack.push((next, longer));
            }
        }
    }
    None
}

#[test]
fn imports_follow_the_layers_and_close_no_circle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let found = violations(&src);
    assert!(
        found.is_empty(),
        "layer rules broken:\n{}",
        found.join("\n")
    );
}

#[test]
fn a_violation_is_caught_with_its_file_and_line() {
    let scratch = tempfile::tempdir().expect("temp dir");
    let src = scratch.path().join("src");
    for (path, text) in [
        ("lib.rs", "pub mod core;\npub mod store;\n"),
        ("core/mod.rs", "pub mod rooms;\npub mod room;\n"),
        ("core/room.rs", "use super::rooms::Rooms;\n"),
        (
            "core/rooms.rs",
            "use super::room::Room;\nuse crate::store::Row;\n",
        ),
        ("store/mod.rs", "use crate::core::room::Room;\n"),
    ] {
        let file = src.join(path);
        std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
        std::fs::write(file, text).expect("write");
    }
    let found = violations(&src);
    assert!(
        found
            .iter()
            .any(|message| message.starts_with("src/core/rooms.rs:2: core::rooms imports store")),
        "{found:#?}"
    );
    assert!(
        found
            .iter()
            .any(|message| message.starts_with("import circle:")
                && message.contains("src/core/room.rs:1")),
        "{found:#?}"
    );
}
