//! The server's own settings: where to listen, the API key, limits of the HTTP edge.
//!
//! The pipeline's settings (`MODEL_ID`, `MAX_NUM_SEQS`, `MAX_QUEUE`, prices, …) live in
//! [`llm_pipeline_core::config::PipelineConfig`]; this struct holds only what the HTTP edge
//! decides, read from the same environment with the names Livepeer's runner uses (`HOST`,
//! `PORT`, `AUTH_TOKEN`) plus our own limits of the edge: `MAX_REQUEST_BYTES`,
//! `HTTP_HEADER_TIMEOUT`, `HTTP_IDLE_TIMEOUT` and `HTTP_BODY_TIMEOUT` (seconds) and
//! `MAX_CONNECTIONS`. Flags of the `serve` example override them through the `with_*` builders.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use llm_pipeline_core::{Error, Result};

/// The default request body limit: 4 MiB, room for long conversations but not for abuse.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 4 << 20;

/// The default time a request body may take to arrive (`HTTP_BODY_TIMEOUT`).
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(60);

/// The default time a keep-alive connection may wait for its next request (`HTTP_IDLE_TIMEOUT`).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// The default cap on open connections: far more than clients a runner serves at once, far
/// fewer than the file descriptors a server process gets.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

/// Settings of the HTTP edge.
#[derive(Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// `HOST`: the address to listen on (default `0.0.0.0`).
    pub host: IpAddr,
    /// `PORT`: the port to listen on (default 8000).
    pub port: u16,
    /// `AUTH_TOKEN`: when set, every endpoint but `/health` requires `Authorization: Bearer`
    /// with this token.
    pub auth_token: Option<String>,
    /// `MAX_REQUEST_BYTES`: the largest request body; larger ones get 413.
    pub max_request_bytes: usize,
    /// `HTTP_HEADER_TIMEOUT` (seconds, default 30): a connection whose request's headers have
    /// not all arrived within this of its first byte (or of the connection, for its first
    /// request) is closed.
    pub header_timeout: Duration,
    /// `HTTP_IDLE_TIMEOUT` (seconds, default 120): a keep-alive connection that waits longer
    /// than this for its next request is closed. Longer than HTTP clients keep idle connections
    /// pooled (Go's 90 s), so that the client closes first and never sends a request into a
    /// connection the server is closing.
    pub idle_timeout: Duration,
    /// `HTTP_BODY_TIMEOUT` (seconds, default 60): a request whose body has not all arrived
    /// within this gets 408.
    pub body_timeout: Duration,
    /// `MAX_CONNECTIONS` (default 4096): connections open at once; beyond it, new ones wait in
    /// the listen backlog until one closes.
    pub max_connections: usize,
    /// How often a stream that has nothing to send yet (its request waits in the queue) sends
    /// an SSE comment, so that proxies keep the connection open.
    pub keep_alive: Duration,
    /// How long in-flight requests may run after a shutdown signal before the server exits.
    pub shutdown_grace: Duration,
    /// The Livepeer pipeline name reported by `/version` and `/hardware/*` (`llm`).
    pub pipeline_name: String,
    /// The model id reported while the model is still loading (`MODEL_ID`).
    pub model_id: String,
}

impl std::fmt::Debug for ServerConfig {
    /// Like a derived `Debug`, with the token hidden.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("auth_token", &self.auth_token.as_ref().map(|_| "<set>"))
            .field("max_request_bytes", &self.max_request_bytes)
            .field("header_timeout", &self.header_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("body_timeout", &self.body_timeout)
            .field("max_connections", &self.max_connections)
            .field("keep_alive", &self.keep_alive)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("pipeline_name", &self.pipeline_name)
            .field("model_id", &self.model_id)
            .finish()
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port: 8000,
            auth_token: None,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            header_timeout: Duration::from_secs(30),
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            keep_alive: Duration::from_secs(15),
            shutdown_grace: Duration::from_secs(30),
            pipeline_name: "llm".to_owned(),
            model_id: String::new(),
        }
    }
}

impl ServerConfig {
    /// Reads `HOST`, `PORT`, `AUTH_TOKEN`, `MAX_REQUEST_BYTES`, `HTTP_HEADER_TIMEOUT`,
    /// `HTTP_BODY_TIMEOUT`, `HTTP_IDLE_TIMEOUT`, `MAX_CONNECTIONS` and `MODEL_ID` from the
    /// process environment; unset or empty variables keep their defaults.
    ///
    /// # Errors
    /// [`Error::Config`] naming the variable when a value does not parse.
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// As [`ServerConfig::from_env`], reading through `lookup` (a map in tests).
    ///
    /// # Errors
    /// [`Error::Config`] naming the variable when a value does not parse.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let mut config = Self::default();
        if let Some(host) = get("HOST") {
            config.host = parse("HOST", &host)?;
        }
        if let Some(port) = get("PORT") {
            config.port = parse("PORT", &port)?;
        }
        // Trimmed as the `Authorization` header's token is, so that a stray space or newline in
        // the variable does not refuse every client.
        config.auth_token = get("AUTH_TOKEN").map(|t| t.trim().to_owned());
        if let Some(bytes) = get("MAX_REQUEST_BYTES") {
            config.max_request_bytes = parse("MAX_REQUEST_BYTES", &bytes)?;
        }
        for (variable, slot) in [
            ("HTTP_HEADER_TIMEOUT", &mut config.header_timeout),
            ("HTTP_BODY_TIMEOUT", &mut config.body_timeout),
            ("HTTP_IDLE_TIMEOUT", &mut config.idle_timeout),
        ] {
            if let Some(secs) = get(variable) {
                let secs: f64 = parse(variable, &secs)?;
                *slot = Duration::try_from_secs_f64(secs)
                    .ok()
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| Error::Config {
                        variable,
                        message: format!("{secs} is not a positive number of seconds"),
                    })?;
            }
        }
        if let Some(n) = get("MAX_CONNECTIONS") {
            config.max_connections = parse("MAX_CONNECTIONS", &n)?;
            if config.max_connections == 0 {
                return Err(Error::Config {
                    variable: "MAX_CONNECTIONS",
                    message: "must be at least 1".into(),
                });
            }
        }
        if let Some(model) = get("MODEL_ID") {
            config.model_id = model;
        }
        Ok(config)
    }

    /// The socket address to bind.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.port)
    }

    /// Sets the listening address.
    #[must_use]
    pub fn with_host(mut self, host: IpAddr) -> Self {
        self.host = host;
        self
    }

    /// Sets the listening port.
    #[must_use]
    pub fn with_port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Requires `Authorization: Bearer <token>` on every endpoint but `/health`.
    #[must_use]
    pub fn with_auth_token(mut self, token: impl Into<String>) -> Self {
        self.auth_token = Some(token.into());
        self
    }

    /// Sets the request body limit in bytes.
    #[must_use]
    pub fn with_max_request_bytes(mut self, bytes: usize) -> Self {
        self.max_request_bytes = bytes;
        self
    }

    /// Sets the SSE keep-alive interval.
    #[must_use]
    pub fn with_keep_alive(mut self, interval: Duration) -> Self {
        self.keep_alive = interval;
        self
    }

    /// Sets the header and body timeouts.
    #[must_use]
    pub fn with_timeouts(mut self, header: Duration, body: Duration) -> Self {
        self.header_timeout = header;
        self.body_timeout = body;
        self
    }

    /// Sets how long a keep-alive connection may wait for its next request.
    #[must_use]
    pub fn with_idle_timeout(mut self, idle: Duration) -> Self {
        self.idle_timeout = idle;
        self
    }

    /// Sets the cap on open connections (at least 1).
    #[must_use]
    pub fn with_max_connections(mut self, max: usize) -> Self {
        self.max_connections = max.max(1);
        self
    }

    /// Sets the shutdown grace period.
    #[must_use]
    pub fn with_shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// Sets the model id reported while loading.
    #[must_use]
    pub fn with_model_id(mut self, model_id: impl Into<String>) -> Self {
        self.model_id = model_id.into();
        self
    }
}

fn parse<T: std::str::FromStr>(variable: &'static str, value: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    value.trim().parse().map_err(|e: T::Err| Error::Config {
        variable,
        message: format!("cannot parse `{value}`: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn reads_livepeer_variables_and_names_bad_ones() {
        let env: HashMap<&str, &str> = [
            ("HOST", "127.0.0.1"),
            ("PORT", "9000"),
            ("AUTH_TOKEN", " secret\n"),
            ("MAX_REQUEST_BYTES", "1024"),
            ("HTTP_HEADER_TIMEOUT", "2.5"),
            ("HTTP_IDLE_TIMEOUT", "75"),
            ("MAX_CONNECTIONS", "10"),
        ]
        .into();
        let config = ServerConfig::from_lookup(|k| env.get(k).map(|v| (*v).to_owned())).unwrap();
        assert_eq!(config.addr().to_string(), "127.0.0.1:9000");
        assert_eq!(config.auth_token.as_deref(), Some("secret"));
        assert_eq!(config.max_request_bytes, 1024);
        assert_eq!(config.header_timeout, Duration::from_millis(2500));
        assert_eq!(config.body_timeout, Duration::from_secs(60));
        assert_eq!(config.idle_timeout, Duration::from_secs(75));
        assert_eq!(config.max_connections, 10);
        assert!(!format!("{config:?}").contains("secret"));
        for (var, bad) in [
            ("HTTP_BODY_TIMEOUT", "0"),
            ("HTTP_IDLE_TIMEOUT", "-1"),
            ("MAX_CONNECTIONS", "0"),
        ] {
            let err =
                ServerConfig::from_lookup(|k| (k == var).then(|| bad.to_owned())).unwrap_err();
            assert!(
                matches!(err, Error::Config { variable, .. } if variable == var),
                "{err}"
            );
        }

        let err =
            ServerConfig::from_lookup(|k| (k == "PORT").then(|| "eighty".to_owned())).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Config {
                    variable: "PORT",
                    ..
                }
            ),
            "{err}"
        );
        let defaults = ServerConfig::from_lookup(|_| None).unwrap();
        assert_eq!(defaults.addr().to_string(), "0.0.0.0:8000");
        assert_eq!(defaults.auth_token, None);
    }
}
