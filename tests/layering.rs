//! The source tree's layering, checked from the `use` lines as a reader would check it: no
//! import cycle among the files of one layer (`src/plugin`, `src/abi`, `src/config`,
//! `src/ts`), `src/ts` imports nothing from the plugin, `src/abi` and `src/config` nothing from ATS or the plugin,
//! `unsafe` code only in `src/ts` (every other module forbids it), and no file over 500
//! lines but generated bindings and test files.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

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

/// The module path of a file under `src` (`src/plugin/backend/mod.rs` → `["plugin", "backend"]`).
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts
}

/// The file that defines module `path`, if it is a module with a file of its own.
fn file_of(src: &Path, path: &[String]) -> Option<PathBuf> {
    if path.is_empty() {
        return Some(src.join("lib.rs"));
    }
    let base: PathBuf = path.iter().collect();
    [src.join(&base).with_extension("rs"), src.join(&base).join("mod.rs")].into_iter().find(|p| p.exists())
}

/// The code of a file without its `#[cfg(test)] mod tests` (tests may `use super::*`).
fn non_test_code(text: &str) -> &str {
    text.split("#[cfg(test)]\nmod tests").next().unwrap_or(text)
}

/// Every `use` path in `code`, braces expanded (`a::{b, c::d}` → `a::b`, `a::c::d`).
fn use_paths(code: &str) -> Vec<String> {
    fn expand(u: &str, out: &mut Vec<String>) {
        let Some(open) = u.find('{') else {
            out.push(u.to_string());
            return;
        };
        let (prefix, inner) = (&u[..open], &u[open + 1..u.len() - 1]);
        let (mut depth, mut start) = (0, 0);
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&format!("{prefix}{}", &inner[start..i]), out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        if start < inner.len() {
            expand(&format!("{prefix}{}", &inner[start..]), out);
        }
    }
    let mut out = Vec::new();
    for stmt in code.split(';') {
        let s = stmt.trim_start();
        let s = s.strip_prefix("pub(crate) ").or_else(|| s.strip_prefix("pub(super) ")).unwrap_or(s);
        let s = s.strip_prefix("pub ").unwrap_or(s);
        if let Some(u) = s.strip_prefix("use ") {
            let u: String = u.chars().filter(|c| !c.is_whitespace()).collect();
            expand(&u, &mut out);
        }
    }
    out
}

/// The files each file imports from, within the crate (`crate::`, `super::`, `self::`, and a
/// `mod.rs`'s own child modules), each import resolved to the deepest module with a file.
fn import_graph(src: &Path, files: &[PathBuf]) -> BTreeMap<PathBuf, BTreeSet<PathBuf>> {
    let mut graph = BTreeMap::new();
    for file in files {
        let module = module_of(src, file);
        let is_dir_module = matches!(file.file_name().and_then(|n| n.to_str()), Some("mod.rs" | "lib.rs"));
        let text = std::fs::read_to_string(file).unwrap();
        let mut targets = BTreeSet::new();
        for path in use_paths(non_test_code(&text)) {
            let mut segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
            let mut base = match segs.first().copied() {
                Some("crate") => {
                    segs.remove(0);
                    Vec::new()
                }
                Some("super") => {
                    let mut b = module.clone();
                    while segs.first() == Some(&"super") {
                        b.pop();
                        segs.remove(0);
                    }
                    b
                }
                Some("self") => {
                    segs.remove(0);
                    module.clone()
                }
                Some(first)
                    if is_dir_module && file_of(src, &[module.clone(), vec![first.to_string()]].concat()).is_some() =>
                {
                    module.clone()
                }
                _ => continue,
            };
            let mut target = file_of(src, &base);
            for s in segs {
                let s = s.split(" as ").next().unwrap_or(s);
                base.push(s.to_string());
                match file_of(src, &base) {
                    Some(f) => target = Some(f),
                    None => break,
                }
            }
            if let Some(t) = target.filter(|t| t != file) {
                targets.insert(t);
            }
        }
        graph.insert(file.clone(), targets);
    }
    graph
}

/// A cycle among the files under `layer`, if there is one.
fn find_cycle(graph: &BTreeMap<PathBuf, BTreeSet<PathBuf>>, layer: &Path) -> Option<Vec<PathBuf>> {
    fn visit(
        n: &PathBuf,
        graph: &BTreeMap<PathBuf, BTreeSet<PathBuf>>,
        layer: &Path,
        state: &mut BTreeMap<PathBuf, u8>,
        stack: &mut Vec<PathBuf>,
    ) -> Option<Vec<PathBuf>> {
        state.insert(n.clone(), 1);
        stack.push(n.clone());
        for t in graph.get(n).into_iter().flatten().filter(|t| t.starts_with(layer)) {
            match state.get(t) {
                Some(1) => {
                    let at = stack.iter().position(|s| s == t).unwrap();
                    let mut cycle = stack[at..].to_vec();
                    cycle.push(t.clone());
                    return Some(cycle);
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(t, graph, layer, state, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        state.insert(n.clone(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in graph.keys().filter(|n| n.starts_with(layer)) {
        if !state.contains_key(n)
            && let Some(c) = visit(n, graph, layer, &mut state, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

fn crate_files() -> (PathBuf, Vec<PathBuf>) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    (src, files)
}

#[test]
fn no_layer_imports_in_a_circle_and_ts_imports_nothing_from_the_plugin() {
    let (src, files) = crate_files();
    let graph = import_graph(&src, &files);
    for layer in ["plugin", "abi", "config", "ts"] {
        if let Some(cycle) = find_cycle(&graph, &src.join(layer)) {
            let names: Vec<String> =
                cycle.iter().map(|p| p.strip_prefix(&src).unwrap().display().to_string()).collect();
            panic!("import cycle in src/{layer}: {}", names.join(" -> "));
        }
    }
    for (file, targets) in &graph {
        let layer = file.strip_prefix(&src).unwrap().iter().next().unwrap().to_string_lossy().into_owned();
        for t in targets {
            let to = t.strip_prefix(&src).unwrap().iter().next().unwrap().to_string_lossy().into_owned();
            let allowed = match layer.as_str() {
                "ts" => !matches!(to.as_str(), "plugin" | "abi" | "config"),
                "abi" | "config" => to != "plugin" && to != "ts",
                _ => true,
            };
            assert!(allowed, "{} imports {}", file.display(), t.display());
        }
    }
}

#[test]
fn unsafe_code_lives_in_ts_only_and_no_file_is_over_500_lines() {
    let (src, files) = crate_files();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let rel = file.strip_prefix(&src).unwrap();
        let generated_or_tests = rel.starts_with("ts/sys.rs") || rel.iter().any(|p| p == "tests" || p == "tests.rs");
        if !generated_or_tests {
            let lines = text.lines().count();
            assert!(lines <= 500, "{} has {lines} lines", rel.display());
        }
        // The compiler then refuses `unsafe` there. lib.rs only invokes ts's entry macro.
        if !rel.starts_with("ts") && rel != Path::new("lib.rs") && !generated_or_tests {
            assert!(text.contains("#![forbid(unsafe_code)]"), "{} lacks #![forbid(unsafe_code)]", rel.display());
        }
    }
}
