//! `pemba context`: named connections (endpoint, token, CA certificate) saved for later.
//!
//! Like `zed context`: `pemba context set prod grpc.example.com:443 KEY --ca-cert ca.pem`, then
//! `pemba context use prod`, and every client command without `--endpoint` talks to it. The
//! contexts live in one JSON file, `$PEMBA_CONFIG_DIR/contexts.json` (by default
//! `$XDG_CONFIG_HOME/pemba`, else `~/.config/pemba`), written with mode 0600 because it holds
//! tokens.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context as _, bail};

/// One saved connection.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NamedContext {
    /// `host:port` or a URL, as `--endpoint` takes it
    pub endpoint: String,
    /// the preshared key
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// the CA certificate to trust (TLS)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<PathBuf>,
}

/// The contexts file.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Contexts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    current: Option<String>,
    #[serde(default)]
    contexts: BTreeMap<String, NamedContext>,
}

/// `pemba context` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum ContextCommand {
    /// Save a context: `pemba context set NAME ENDPOINT [TOKEN] [--ca-cert FILE]`; the first
    /// one saved becomes current.
    Set {
        /// the context's name
        name: String,
        /// `host:port` or a URL
        endpoint: String,
        /// the preshared key (omit for none)
        token: Option<String>,
        /// PEM file of the CA certificate to trust (TLS)
        #[arg(long)]
        ca_cert: Option<PathBuf>,
    },
    /// Make a saved context the current one.
    Use {
        /// the context's name
        name: String,
    },
    /// List the saved contexts (tokens hidden unless --reveal-tokens).
    #[command(alias = "ls")]
    List {
        /// print the tokens too
        #[arg(long)]
        reveal_tokens: bool,
    },
    /// Forget a saved context.
    #[command(alias = "rm")]
    Remove {
        /// the context's name
        name: String,
    },
}

fn config_dir() -> anyhow::Result<PathBuf> {
    if let Some(d) = std::env::var_os("PEMBA_CONFIG_DIR") {
        return Ok(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d).join("pemba"));
    }
    match std::env::var_os("HOME") {
        Some(h) => Ok(PathBuf::from(h).join(".config").join("pemba")),
        None => bail!("no HOME: set PEMBA_CONFIG_DIR to keep contexts"),
    }
}

fn load() -> anyhow::Result<(PathBuf, Contexts)> {
    let path = config_dir()?.join("contexts.json");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let contexts = serde_json::from_str(&text)
                .with_context(|| format!("`{}` is not a contexts file", path.display()))?;
            Ok((path, contexts))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((path, Contexts::default())),
        Err(e) => Err(e).with_context(|| format!("cannot read `{}`", path.display())),
    }
}

fn save(path: &std::path::Path, contexts: &Contexts) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create `{}`", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(contexts)?;
    let tmp = path.with_extension("json.tmp");
    {
        use std::io::Write as _;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let mut f = options
            .open(&tmp)
            .with_context(|| format!("cannot write `{}`", tmp.display()))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write `{}`", path.display()))
}

/// The current context, if one is set.
pub fn current() -> anyhow::Result<Option<NamedContext>> {
    let (_, contexts) = load()?;
    Ok(contexts
        .current
        .as_ref()
        .and_then(|name| contexts.contexts.get(name).cloned()))
}

/// Runs `pemba context ...`.
pub fn run(command: &ContextCommand) -> anyhow::Result<()> {
    let (path, mut contexts) = load()?;
    match command {
        ContextCommand::Set {
            name,
            endpoint,
            token,
            ca_cert,
        } => {
            let ca_cert = match ca_cert {
                Some(p) => Some(
                    std::fs::canonicalize(p)
                        .with_context(|| format!("cannot read --ca-cert `{}`", p.display()))?,
                ),
                None => None,
            };
            contexts.contexts.insert(
                name.clone(),
                NamedContext {
                    endpoint: endpoint.clone(),
                    token: token.clone(),
                    ca_cert,
                },
            );
            if contexts.current.is_none() {
                contexts.current = Some(name.clone());
            }
            save(&path, &contexts)?;
            println!("saved context `{name}`");
        }
        ContextCommand::Use { name } => {
            if !contexts.contexts.contains_key(name) {
                bail!("no context `{name}` (see `pemba context list`)");
            }
            contexts.current = Some(name.clone());
            save(&path, &contexts)?;
            println!("using context `{name}`");
        }
        ContextCommand::List { reveal_tokens } => {
            println!(
                "{:<2}{:<16} {:<32} {:<10} CA",
                "", "NAME", "ENDPOINT", "TOKEN"
            );
            for (name, c) in &contexts.contexts {
                let mark = if contexts.current.as_ref() == Some(name) {
                    "*"
                } else {
                    ""
                };
                let token = match (&c.token, reveal_tokens) {
                    (None, _) => "-".to_string(),
                    (Some(t), true) => t.clone(),
                    (Some(_), false) => "<redacted>".to_string(),
                };
                let ca = c
                    .ca_cert
                    .as_ref()
                    .map_or("-".to_string(), |p| p.display().to_string());
                println!("{mark:<2}{name:<16} {:<32} {token:<10} {ca}", c.endpoint);
            }
        }
        ContextCommand::Remove { name } => {
            if contexts.contexts.remove(name).is_none() {
                bail!("no context `{name}`");
            }
            if contexts.current.as_ref() == Some(name) {
                contexts.current = None;
            }
            save(&path, &contexts)?;
            println!("removed context `{name}`");
        }
    }
    Ok(())
}
