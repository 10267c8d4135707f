//! Checks the engine's one-way import order (documented in `engine/mod.rs`).
//!
//! Each module may use only the engine modules listed for it here, and the list itself has no
//! cycle. Reads the sources as compiled (`include_str!`), code above the first `#[cfg(test)]`
//! only.

/// Every engine module, in import order, with the engine modules it may use. The engine
/// root's request and result types (`Engine`, `Snapshot`, `Permissionship`, ...) may be used
/// by every module; the root's methods are the top of the order.
const ORDER: &[(&str, &[&str])] = &[
    ("error", &[]),
    ("metrics", &[]),
    ("caveats", &["error"]),
    ("cel", &["caveats", "error"]),
    ("validate", &["error"]),
    ("dispatch", &["error", "metrics"]),
    ("rules", &[]),
    ("outcome", &["caveats", "rules"]),
    ("memo", &["outcome"]),
    ("subject_set", &["caveats"]),
    ("fast", &["metrics", "rules"]),
    (
        "check",
        &[
            "caveats", "dispatch", "error", "fast", "memo", "metrics", "outcome", "rules",
            "validate",
        ],
    ),
    ("expand", &["caveats", "dispatch", "error"]),
    (
        "lookup_resources",
        &[
            "caveats", "check", "dispatch", "error", "fast", "memo", "metrics", "outcome",
            "validate",
        ],
    ),
    ("lookup_cache", &["lookup_resources"]),
    (
        "lookup_subjects",
        &["caveats", "dispatch", "error", "subject_set", "validate"],
    ),
];

/// The source of every engine module (a module split into a directory lists each file).
const SOURCES: &[(&str, &str)] = &[
    ("error", include_str!("error.rs")),
    ("metrics", include_str!("metrics.rs")),
    ("caveats", include_str!("caveats.rs")),
    ("cel", include_str!("cel/mod.rs")),
    ("cel", include_str!("cel/convert.rs")),
    ("cel", include_str!("cel/evaluate.rs")),
    ("cel", include_str!("cel/ipaddress.rs")),
    ("cel", include_str!("cel/meter.rs")),
    ("cel", include_str!("cel/partial.rs")),
    ("validate", include_str!("validate.rs")),
    ("dispatch", include_str!("dispatch.rs")),
    ("rules", include_str!("rules.rs")),
    ("outcome", include_str!("outcome.rs")),
    ("memo", include_str!("memo.rs")),
    ("subject_set", include_str!("subject_set.rs")),
    ("fast", include_str!("fast.rs")),
    ("check", include_str!("check.rs")),
    ("expand", include_str!("expand.rs")),
    ("lookup_resources", include_str!("lookup_resources.rs")),
    ("lookup_cache", include_str!("lookup_cache.rs")),
    ("lookup_subjects", include_str!("lookup_subjects.rs")),
];

/// The engine modules `source` names through `crate::engine::` paths (in `use` lines or
/// inline), and whether it uses `super::` (which this check cannot classify, so forbids).
fn engine_deps(source: &str) -> (Vec<String>, bool) {
    let code = source.split("#[cfg(test)]").next().unwrap_or(source);
    let modules: Vec<&str> = ORDER.iter().map(|(m, _)| *m).collect();
    let mut deps = Vec::new();
    for (at, _) in code.match_indices("crate::engine::") {
        let rest = &code[at + "crate::engine::".len()..];
        let names: Vec<String> = if let Some(group) = rest.strip_prefix('{') {
            // top-level items of the group: `{caveats::{self, X}, Engine}` -> caveats, Engine
            let mut depth = 0usize;
            let mut item = String::new();
            let mut items = Vec::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => items.push(std::mem::take(&mut item)),
                    _ if depth == 0 => item.push(c),
                    _ => {}
                }
            }
            items.push(item);
            items
        } else {
            vec![rest.to_string()]
        };
        for name in names {
            let first: String = name
                .trim()
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if modules.contains(&first.as_str()) && !deps.contains(&first) {
                deps.push(first);
            }
        }
    }
    (deps, code.contains("super::"))
}

#[test]
fn the_order_has_no_cycle() {
    for (i, (module, allowed)) in ORDER.iter().enumerate() {
        for dep in *allowed {
            let earlier = ORDER.iter().take(i).any(|(m, _)| m == dep);
            assert!(
                earlier,
                "`{module}` may use `{dep}`, which is not before it"
            );
        }
    }
}

#[test]
fn every_module_uses_only_what_the_order_allows() {
    for (module, source) in SOURCES {
        let allowed = ORDER
            .iter()
            .find(|(m, _)| m == module)
            .map(|(_, a)| *a)
            .unwrap_or_else(|| panic!("`{module}` is missing from ORDER"));
        let (deps, uses_super) = engine_deps(source);
        assert!(
            !uses_super,
            "`{module}` uses `super::`: name engine modules by `crate::engine::`"
        );
        for dep in deps {
            assert!(
                dep == *module || allowed.contains(&dep.as_str()),
                "`{module}` uses `crate::engine::{dep}`, which the import order forbids"
            );
        }
    }
}

#[test]
fn the_check_reads_use_lines_and_inline_paths() {
    let (deps, uses_super) = engine_deps(
        "use crate::engine::check::Outcome;\nuse crate::engine::{Engine, fast, caveats::{self, Cond}};\nfn f() { crate::engine::metrics::get(); }\n#[cfg(test)]\nuse crate::engine::memo;",
    );
    assert_eq!(deps, ["check", "fast", "caveats", "metrics"]);
    assert!(!uses_super);
    assert!(engine_deps("use super::outcome::Outcome;").1);
    // dispatch importing the checker's types would be caught
    let (deps, _) = engine_deps("use crate::engine::outcome::Outcome;");
    let dispatch = ORDER
        .iter()
        .find(|(m, _)| *m == "dispatch")
        .map(|(_, a)| *a);
    assert!(dispatch.is_some_and(|a| !deps.iter().any(|d| a.contains(&d.as_str()))));
}
