//! The command-line reference (`docs/cli.md`), generated from the clap definitions.
//!
//! A test compares the file with this output, so the reference cannot drift from the binary;
//! `PEMBA_UPDATE_DOCS=1 cargo test --release --test cli` rewrites it.

use std::fmt::Write as _;

use clap::CommandFactory as _;

/// The whole reference, as Markdown.
pub fn markdown() -> String {
    let mut out = String::from(
        "# `pemba` command-line reference\n\n\
         Generated from the command definitions (`src/cli/reference.rs`); do not edit by hand.\n\
         Exit codes: 0 success (and `permission check`: has permission), 1 `permission \
         check`: no permission, or `validate` / `schema check`: the file does not validate, 2 \
         `permission check`: conditional (caveat context missing), 3 an error (connection, \
         call, file, argument), 64 a command line that does not parse.\n",
    );
    let mut root = super::Cli::command();
    root.build();
    for sub in root.get_subcommands() {
        command(&mut out, sub, "pemba");
    }
    out
}

fn command(out: &mut String, cmd: &clap::Command, parent: &str) {
    let name = format!("{parent} {}", cmd.get_name());
    if cmd.is_hide_set() || cmd.get_name() == "help" {
        return;
    }
    let level = name.split(' ').count().min(4);
    let _ = writeln!(out, "\n{} `{name}`\n", "#".repeat(level));
    if let Some(about) = cmd.get_long_about().or(cmd.get_about()) {
        let _ = writeln!(out, "{about}\n");
    }
    let aliases: Vec<&str> = cmd.get_visible_aliases().collect();
    if !aliases.is_empty() {
        let _ = writeln!(out, "Aliases: {}.\n", aliases.join(", "));
    }
    let has_subcommands = cmd.get_subcommands().any(|s| s.get_name() != "help");
    if !has_subcommands {
        let mut usage = cmd.clone().bin_name(&name);
        let _ = writeln!(
            out,
            "```text\n{}\n```\n",
            usage
                .render_usage()
                .to_string()
                .trim_start_matches("Usage: ")
        );
        let args: Vec<&clap::Arg> = cmd
            .get_arguments()
            .filter(|a| !a.is_hide_set() && a.get_id() != "help" && a.get_id() != "version")
            .collect();
        if !args.is_empty() {
            let _ = writeln!(out, "| argument | environment | default | meaning |");
            let _ = writeln!(out, "|---|---|---|---|");
            for a in args {
                let spelled = match (a.get_long(), a.is_positional()) {
                    (Some(l), _) => format!("`--{l}`"),
                    (None, _) => format!("`{}`", a.get_id().as_str().to_uppercase()),
                };
                let env = a
                    .get_env()
                    .map_or(String::new(), |e| format!("`{}`", e.to_string_lossy()));
                let default: Vec<String> = a
                    .get_default_values()
                    .iter()
                    .map(|v| v.to_string_lossy().into_owned())
                    .collect();
                let default = if default.is_empty() {
                    String::new()
                } else {
                    format!("`{}`", default.join(","))
                };
                let help = a
                    .get_help()
                    .map_or(String::new(), |h| h.to_string().replace('|', "\\|"));
                let _ = writeln!(out, "| {spelled} | {env} | {default} | {help} |");
            }
        }
    }
    for sub in cmd.get_subcommands() {
        command(out, sub, &name);
    }
}
