//! The connection flags every client command shares (`pemba schema`, `relationship`,
//! `permission`, `watch`, `import`, `export`, `backup`).
//!
//! The endpoint, the preshared key and, for TLS, the CA certificate to trust. A flag not given
//! is taken from the current named context (`pemba context use`), then from the defaults.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// Where the server is and how to reach it.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// the server's gRPC address: `host:port` (plaintext, or TLS when --ca-cert is given),
    /// `http://host:port` or `https://host:port` [default: the current context's, else
    /// 127.0.0.1:50051]
    #[arg(long, env = "PEMBA_ENDPOINT")]
    pub endpoint: Option<String>,
    /// the server's preshared key (sent as `authorization: Bearer KEY`)
    #[arg(long, alias = "token", env = "PEMBA_TOKEN", hide_env_values = true)]
    pub preshared_key: Option<String>,
    /// PEM file of the CA certificate(s) that signed the server's certificate: connect with
    /// TLS and trust only these
    #[arg(long, conflicts_with = "insecure")]
    pub ca_cert: Option<PathBuf>,
    /// connect in plaintext (the default for a `host:port` endpoint without --ca-cert)
    #[arg(long)]
    pub insecure: bool,
}

/// The address a client connects to when neither a flag nor a context names one.
pub const DEFAULT_ENDPOINT: &str = "127.0.0.1:50051";

impl ClientArgs {
    /// These flags, or, when they name no endpoint, the current named context's endpoint, CA
    /// certificate and token (a `--token` given still wins). A context's token is never sent
    /// to an endpoint the flags name.
    pub fn resolved(&self) -> anyhow::Result<ClientArgs> {
        let mut out = self.clone();
        if out.endpoint.is_some() {
            return Ok(out);
        }
        if let Some(ctx) = super::context::current()? {
            out.endpoint = Some(ctx.endpoint.clone());
            if out.ca_cert.is_none() && !out.insecure {
                out.ca_cert = ctx.ca_cert.clone();
            }
            if out.preshared_key.is_none() {
                out.preshared_key = ctx.token.clone();
            }
        }
        Ok(out)
    }
}

/// A connected client: the channel and the `authorization` header value, if any.
#[derive(Debug, Clone)]
pub struct Client {
    /// the HTTP/2 channel to the server
    pub channel: Channel,
    bearer: Option<MetadataValue<Ascii>>,
}

impl Client {
    /// Connects to the server `args` name (TLS for `https://` or with `--ca-cert`).
    pub async fn connect(args: &ClientArgs) -> anyhow::Result<Client> {
        let args = args.resolved()?;
        let address = args.endpoint.as_deref().unwrap_or(DEFAULT_ENDPOINT);
        let uri = match (address.contains("://"), &args.ca_cert) {
            (true, _) => address.to_string(),
            (false, Some(_)) => format!("https://{address}"),
            (false, None) => format!("http://{address}"),
        };
        if args.insecure && uri.starts_with("https://") {
            bail!("--insecure asks for plaintext, but the endpoint is `{uri}`");
        }
        let mut endpoint = Endpoint::from_shared(uri.clone())
            .with_context(|| format!("bad endpoint `{address}`"))?;
        match (&args.ca_cert, uri.starts_with("https://")) {
            (Some(path), true) => {
                let pem = std::fs::read(path)
                    .with_context(|| format!("cannot read --ca-cert `{}`", path.display()))?;
                let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem));
                endpoint = endpoint
                    .tls_config(tls)
                    .context("cannot set up TLS with --ca-cert")?;
            }
            (Some(_), false) => bail!("--ca-cert needs an https:// endpoint, not `{uri}`"),
            (None, true) => {
                bail!("an https:// endpoint needs --ca-cert (the CA certificate to trust, PEM)")
            }
            (None, false) => {}
        }
        let channel = endpoint
            .connect()
            .await
            .with_context(|| format!("cannot connect to {address}"))?;
        let bearer = match args.preshared_key.as_deref().filter(|k| !k.is_empty()) {
            Some(key) => Some(
                format!("Bearer {key}")
                    .parse()
                    .context("the preshared key is not a valid header value")?,
            ),
            None => None,
        };
        Ok(Client { channel, bearer })
    }

    /// `message` as a request carrying the preshared key.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(bearer) = &self.bearer {
            request
                .metadata_mut()
                .insert("authorization", bearer.clone());
        }
        request
    }
}

/// A failed call as an error naming it.
pub fn call_failed(call: &str, status: &tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{call} failed: {:?}: {}", status.code(), status.message())
}

/// A current-thread runtime for a client command.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}
