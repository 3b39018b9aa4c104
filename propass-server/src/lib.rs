//! # propass-server
//!
//! The central PROPASS server: it authenticates kiosks (JWT bound to a
//! device), records every copy a kiosk made in an exactly-once ledger in
//! PostgreSQL, keeps each client's quota, and pushes live updates over a
//! WebSocket. It is wire-compatible with the existing Electron kiosk client.
//!
//! What it is **not**: it never talks to an NFC reader and never refuses a
//! copy for lack of quota — a copy is a card that already exists; an
//! overdraft is recorded and flagged, not rejected.
//!
//! Layout, from the leaves to the composition root (no module imports one
//! below it in this list): [`clock`] and [`rng`] (time and chance, behind
//! traits), [`config`] (one struct, file → env → flags), [`error`] (one error
//! type, mapped to the wire error body), [`ledger`] (the ledger's vocabulary
//! and its store trait), [`db`] (PostgreSQL, by table), [`auth`] (passwords,
//! tokens, throttle, extractors), [`ws`] (hub, sessions, listener), [`state`]
//! (what handlers share), [`push`] (the push use case), [`routes`] (HTTP
//! handlers), [`startup`] (the [`startup::Application`] used by `main` and
//! the tests) and [`cli`] (the operator commands).

pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
pub mod db;
pub mod error;
pub mod ledger;
pub mod push;
pub mod rng;
pub mod routes;
pub mod startup;
pub mod state;
pub mod ws;

/// The module graph is acyclic: no top-level module reaches, through
/// `crate::` paths, a module that reaches back to it.
#[cfg(test)]
mod module_graph {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::Path;

    fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// Top-level module → the top-level modules its files name.
    fn graph() -> BTreeMap<String, BTreeSet<String>> {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        sources(&src, &mut files);
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for file in files {
            let rel = file.strip_prefix(&src).unwrap();
            let first = rel
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_string_lossy();
            let module = first.trim_end_matches(".rs").to_string();
            if module == "lib" || module == "main" {
                continue;
            }
            let text = std::fs::read_to_string(&file).unwrap();
            let deps = graph.entry(module.clone()).or_default();
            for (i, _) in text.match_indices("crate::") {
                let rest = &text[i + "crate::".len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != module {
                    deps.insert(name);
                }
            }
            // `use crate::{a, b}` names several.
            for (i, _) in text.match_indices("crate::{") {
                let rest = &text[i + "crate::{".len()..];
                let list = &rest[..rest.find('}').unwrap_or(0)];
                for name in list
                    .split(',')
                    .map(|s| s.trim().split("::").next().unwrap_or("").to_string())
                {
                    if !name.is_empty() && name != module {
                        deps.insert(name);
                    }
                }
            }
        }
        graph
    }

    fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
        fn visit(
            node: &str,
            graph: &BTreeMap<String, BTreeSet<String>>,
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

    #[test]
    fn has_no_cycle() {
        let graph = graph();
        assert!(
            graph["state"].contains("auth"),
            "the scan finds edges: {graph:?}"
        );
        assert_eq!(
            find_cycle(&graph),
            None,
            "module cycle in propass-server: {graph:#?}"
        );
    }

    #[test]
    fn the_cycle_finder_finds_a_cycle() {
        let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        g.entry("a".into()).or_default().insert("b".into());
        g.entry("b".into()).or_default().insert("a".into());
        assert_eq!(
            find_cycle(&g),
            Some(vec!["a".into(), "b".into(), "a".into()])
        );
    }
}
