//! The module graph of a crate, read from its sources, to prove it acyclic.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module name → the modules it depends on.
pub type Graph = BTreeMap<String, BTreeSet<String>>;

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for path in entries.flatten().map(|e| e.path()) {
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The names a file refers to as `crate::name` or `crate::{name, …}`.
fn crate_refs(text: &str) -> BTreeSet<String> {
    let ident = |s: &str| -> String {
        s.trim()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + "crate::".len()..];
        if let Some(list) = rest.strip_prefix('{') {
            let list = &list[..list.find('}').unwrap_or(0)];
            out.extend(list.split(',').map(ident));
        } else {
            out.insert(ident(rest));
        }
    }
    out.retain(|n| !n.is_empty() && n != "self");
    out
}

/// The top-level modules of the crate whose sources are in `src` (`a.rs`
/// and everything under `a/` are module `a`; `lib.rs` and `main.rs` are the
/// root, left out), each with the top-level modules it refers to.
pub fn module_graph(src: &Path) -> Graph {
    let mut files = Vec::new();
    sources(src, &mut files);
    let mut graph = Graph::new();
    for file in files {
        let Ok(rel) = file.strip_prefix(src) else {
            continue;
        };
        let Some(first) = rel.components().next() else {
            continue;
        };
        let module = first
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if module == "lib" || module == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let mut deps = crate_refs(&text);
        deps.remove(&module);
        graph.entry(module).or_default().extend(deps);
    }
    graph
}

/// A cycle of `graph`, as the path that closes it, if there is one.
pub fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &Graph,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if !done.insert(node.to_string()) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

/// Panics, naming the cycle, when the modules of the crate at
/// `manifest_dir` form one; `sample_edge` (a dependency known to exist)
/// proves the scan read the sources at all.
pub fn assert_no_module_cycle(manifest_dir: &str, sample_edge: (&str, &str)) {
    let graph = module_graph(&Path::new(manifest_dir).join("src"));
    let (from, to) = sample_edge;
    assert!(
        graph.get(from).is_some_and(|deps| deps.contains(to)),
        "the scan should find {from} → {to}: {graph:#?}"
    );
    if let Some(cycle) = find_cycle(&graph) {
        panic!("module cycle: {}", cycle.join(" → "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_cycle_and_reads_both_forms_of_use() {
        let refs = crate_refs("use crate::{a, b::C};\nuse crate::c::d;\nfn f() { crate::e::g() }");
        assert_eq!(refs.into_iter().collect::<Vec<_>>(), ["a", "b", "c", "e"]);
        let mut g = Graph::new();
        g.entry("a".into()).or_default().insert("b".into());
        g.entry("b".into()).or_default().insert("c".into());
        assert_eq!(find_cycle(&g), None);
        g.entry("c".into()).or_default().insert("a".into());
        assert_eq!(
            find_cycle(&g),
            Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
        );
    }
}
