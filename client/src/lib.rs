//! The `ferry` client: configuration (flags, environment, config file), a
//! connection to whichever coordinator of the cluster answers, a retry helper that
//! rides out a failover, and `ferry dev`.
//!
//! API boundary: other tools can use [`ClientConfig`] and [`connect`] (or
//! [`Connection`], which also moves to another member and retries) to talk to a
//! Ferry cluster with the generated `ControlClient`.

pub mod config;
pub mod dev;

pub use config::{ClientConfig, ConfigError, default_config_path};

use std::future::Future;
use std::time::Duration;

use ferry_common::pki::TlsMaterial;
use ferry_common::proto::control_client::ControlClient;
use tokio::time::Instant;
use tonic::transport::Channel;

/// Largest message the client accepts.
const MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;
/// How long connecting may take in all: every address, twice.
const CONNECT_BUDGET: Duration = Duration::from_secs(5);
/// The longest one address may take to connect, so that a silent one leaves time
/// for the others.
const CONNECT_ONE_LIMIT: Duration = Duration::from_secs(2);
/// The pause between the first and the second round over the addresses.
const CONNECT_ROUND_PAUSE: Duration = Duration::from_millis(200);
/// Longest one attempt of an upload may take before it counts as a failure of
/// that member: generous enough for a large bundle (a member that stops answering
/// is noticed sooner by keep-alive, `Timings::client_keepalive`).
const UPLOAD_ATTEMPT_LIMIT: Duration = Duration::from_secs(120);
const RETRY_BACKOFF_START: Duration = Duration::from_millis(100);
const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Tls(#[from] ferry_common::pki::PkiError),
    #[error(transparent)]
    Address(#[from] ferry_common::channel::ChannelError),
    #[error(
        "{} — is 'ferry dev' or a cluster running? \
         (set the address with --coordinator, FERRY_COORDINATOR or the client config file; \
         a comma-separated list names several coordinators)",
        unreachable_summary(.failures)
    )]
    Unreachable {
        /// Every address with the reason it did not connect, in the order given.
        failures: Vec<(String, String)>,
    },
}

fn unreachable_summary(failures: &[(String, String)]) -> String {
    match failures {
        [(address, detail)] => format!("cannot reach the coordinator at {address}: {detail}"),
        _ => {
            let each: Vec<String> = failures
                .iter()
                .map(|(address, detail)| format!("{address}: {detail}"))
                .collect();
            format!("cannot reach any coordinator ({})", each.join("; "))
        }
    }
}

/// Connects to the first coordinator that answers, now, so that an unreachable
/// cluster is reported before any work is done.
pub async fn connect(config: &ClientConfig) -> Result<ControlClient<Channel>, ConnectError> {
    Ok(Connection::open(config).await?.client())
}

/// Whether another member (or the same one, a moment later) may answer a call that
/// failed with `status`: no leader yet (an election runs), a member shutting down,
/// or a connection lost mid-call (which surfaces as `Unknown` or `Cancelled`).
pub fn worth_retrying_elsewhere(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
    )
}

/// A connection to one member of the cluster, with the list of the others to move
/// along when it fails. Any member answers control calls (a follower forwards
/// writes to the leader).
pub struct Connection {
    addresses: Vec<String>,
    tls: TlsMaterial,
    /// Index in `addresses` of the member connected to.
    current: usize,
    client: ControlClient<Channel>,
}

impl Connection {
    /// Tries each address in order, then once more after a short pause, within
    /// [`CONNECT_BUDGET`]; the first that connects is used.
    pub async fn open(config: &ClientConfig) -> Result<Connection, ConnectError> {
        let tls = config.tls.load()?;
        let addresses = config.coordinators.clone();
        let (current, client) = dial(&addresses, &tls, 0, Instant::now() + CONNECT_BUDGET).await?;
        Ok(Connection {
            addresses,
            tls,
            current,
            client,
        })
    }

    /// A client on the member connected to now (cheap: it shares the channel).
    pub fn client(&self) -> ControlClient<Channel> {
        self.client.clone()
    }

    /// The address of the member connected to now.
    pub fn address(&self) -> &str {
        &self.addresses[self.current]
    }

    /// Connects again, starting with the address after the current one, before
    /// `deadline`; on failure the current client is kept.
    pub async fn reconnect(&mut self, deadline: Instant) -> Result<(), ConnectError> {
        let start = (self.current + 1) % self.addresses.len();
        let (current, client) = dial(&self.addresses, &self.tls, start, deadline).await?;
        if current != self.current {
            tracing::debug!(coordinator = %self.addresses[current], "switched coordinator");
        }
        self.current = current;
        self.client = client;
        Ok(())
    }

    /// Makes a call; while it fails in a way another member may not (see
    /// [`worth_retrying_elsewhere`]), connects to the next member and calls again,
    /// with backoff, for up to `Timings::client_retry_budget` in all; one attempt
    /// lasts at most `Timings::client_attempt` (the member's own wait for a leader
    /// plus a failover) and never past the budget. The call must be safe to
    /// repeat: a read, or a write made idempotent (a submission carries its
    /// `request_id`).
    pub async fn call<T, F, Fut>(&mut self, call: F) -> Result<T, tonic::Status>
    where
        F: FnMut(ControlClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.call_allowing(Duration::ZERO, call).await
    }

    /// [`Connection::call`] for a call that may take `extra` longer than any
    /// other (a large submission: `Timings::submission_allowance`): each attempt
    /// and the whole budget are that much longer.
    pub async fn call_allowing<T, F, Fut>(
        &mut self,
        extra: Duration,
        call: F,
    ) -> Result<T, tonic::Status>
    where
        F: FnMut(ControlClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let timings = ferry_common::timing::Timings::default();
        let give_up = Instant::now() + timings.client_retry_budget() + extra;
        self.call_within(call, timings.client_attempt() + extra, Some(give_up))
            .await
    }

    /// [`Connection::call`] for an upload: one attempt may last
    /// [`UPLOAD_ATTEMPT_LIMIT`]; after a failure the retries have the usual budget.
    pub async fn call_upload<T, F, Fut>(&mut self, call: F) -> Result<T, tonic::Status>
    where
        F: FnMut(ControlClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.call_within(call, UPLOAD_ATTEMPT_LIMIT, None).await
    }

    /// Calls with attempts of at most `attempt_limit`, capped by `give_up`; with
    /// no `give_up`, the retry budget starts at the first failure.
    async fn call_within<T, F, Fut>(
        &mut self,
        mut call: F,
        attempt_limit: Duration,
        give_up: Option<Instant>,
    ) -> Result<T, tonic::Status>
    where
        F: FnMut(ControlClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let budget = ferry_common::timing::Timings::default().client_retry_budget();
        let mut give_up = give_up;
        let mut delay = RETRY_BACKOFF_START;
        loop {
            let limit = match give_up {
                Some(give_up) => {
                    attempt_limit.min(give_up.saturating_duration_since(Instant::now()))
                }
                None => attempt_limit,
            };
            let attempt = tokio::time::timeout(limit, call(self.client())).await;
            let attempt = attempt.unwrap_or_else(|_| {
                Err(tonic::Status::unavailable(format!(
                    "no answer from {} in {limit:?}",
                    self.address(),
                )))
            });
            let mut last = match attempt {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) if let Some(refused) = revoked_in_handshake(&status) => {
                    return Err(refused);
                }
                Err(status) if worth_retrying_elsewhere(&status) => status,
                Err(status) => return Err(status),
            };
            let give_up = *give_up.get_or_insert_with(|| Instant::now() + budget);
            // Keep trying to reach a member until one connects or time runs out.
            loop {
                if Instant::now() + delay >= give_up {
                    return Err(last);
                }
                tracing::debug!(
                    coordinator = %self.address(),
                    code = ?last.code(),
                    message = last.message(),
                    ?delay,
                    "call failed; trying another coordinator"
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(RETRY_BACKOFF_MAX);
                match self.reconnect(give_up).await {
                    Ok(()) => break,
                    Err(error) => last = tonic::Status::unavailable(error.to_string()),
                }
            }
        }
    }
}

/// Tries the addresses from `start` round the list, then once more after a
/// pause, each for at most [`CONNECT_ONE_LIMIT`], all before `deadline`.
async fn dial(
    addresses: &[String],
    tls: &TlsMaterial,
    start: usize,
    deadline: Instant,
) -> Result<(usize, ControlClient<Channel>), ConnectError> {
    let mut failures: Vec<Option<String>> = vec![None; addresses.len()];
    for round in 0..2 {
        if round > 0 {
            if Instant::now() + CONNECT_ROUND_PAUSE >= deadline {
                break;
            }
            tokio::time::sleep(CONNECT_ROUND_PAUSE).await;
        }
        for offset in 0..addresses.len() {
            let index = (start + offset) % addresses.len();
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let endpoint = ferry_common::channel::endpoint(&addresses[index], tls)?;
            match tokio::time::timeout(left.min(CONNECT_ONE_LIMIT), endpoint.connect()).await {
                Ok(Ok(channel)) => {
                    let client = ControlClient::new(channel)
                        .max_decoding_message_size(MAX_MESSAGE_BYTES)
                        .max_encoding_message_size(ferry_common::spec::MAX_SUBMIT_MESSAGE_BYTES);
                    return Ok((index, client));
                }
                Ok(Err(error)) => failures[index] = Some(root_cause(&error)),
                Err(_) => failures[index] = Some("timed out".into()),
            }
        }
    }
    Err(ConnectError::Unreachable {
        failures: addresses
            .iter()
            .zip(failures)
            .map(|(address, failure)| {
                let detail = failure.unwrap_or_else(|| "not tried: out of time".into());
                (address.clone(), detail)
            })
            .collect(),
    })
}

/// The refusal a call met when the coordinator turned this client's certificate
/// away in the TLS handshake because it is revoked (the `certificate_revoked`
/// alert, which tonic reports as a bare transport error), as `Unauthenticated`
/// in words; `None` for any other failure. Every member refuses a revoked
/// certificate, so such a call is not retried elsewhere.
pub fn revoked_in_handshake(status: &tonic::Status) -> Option<tonic::Status> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(error) = current {
        if error.to_string().contains("CertificateRevoked") {
            return Some(tonic::Status::unauthenticated(
                "the coordinator refused this client's certificate in the TLS handshake: the \
                 certificate was revoked (see 'ferry certs revoked'); ask an administrator for \
                 a new one ('ferry certs issue')",
            ));
        }
        current = error.source();
    }
    None
}

/// The innermost message of an error chain ("connection refused", not "transport error").
pub fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current = error;
    while let Some(source) = current.source() {
        current = source;
    }
    current.to_string()
}

/// A fresh id for one submission, reused on every retry of it so that the
/// coordinators start one run however often it is sent: 128 random bits from the
/// system (mixed with the time, the process and a counter), as 32 hex digits.
pub fn new_request_id() -> String {
    use std::io::Read;
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = blake3::Hasher::new();
    let mut random = [0u8; 32];
    if let Ok(mut file) = std::fs::File::open("/dev/urandom")
        && file.read_exact(&mut random).is_ok()
    {
        hasher.update(&random);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    hasher.update(&now.to_le_bytes());
    hasher.update(&std::process::id().to_le_bytes());
    hasher.update(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    hasher.finalize().to_hex()[..32].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_names_every_address() {
        let one = ConnectError::Unreachable {
            failures: vec![("a:1".into(), "connection refused".into())],
        }
        .to_string();
        assert!(
            one.starts_with("cannot reach the coordinator at a:1: connection refused"),
            "{one}"
        );
        let many = ConnectError::Unreachable {
            failures: vec![
                ("a:1".into(), "connection refused".into()),
                ("b:2".into(), "timed out".into()),
            ],
        }
        .to_string();
        assert!(
            many.starts_with(
                "cannot reach any coordinator (a:1: connection refused; b:2: timed out)"
            ),
            "{many}"
        );
    }

    #[test]
    fn request_ids_are_fresh_hex() {
        let a = new_request_id();
        let b = new_request_id();
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn a_handshake_refused_as_revoked_is_said_in_words() {
        let alert = std::io::Error::other("received fatal alert: CertificateRevoked");
        let transport = tonic::Status::from_error(Box::new(alert));
        assert_eq!(transport.code(), tonic::Code::Unknown);
        let refused = revoked_in_handshake(&transport).expect("recognized");
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        assert!(
            refused.message().contains("certificate was revoked"),
            "{}",
            refused.message()
        );
        let other = tonic::Status::from_error(Box::new(std::io::Error::other("connection reset")));
        assert!(revoked_in_handshake(&other).is_none());
        assert!(revoked_in_handshake(&tonic::Status::unavailable("no leader")).is_none());
    }

    #[test]
    fn which_failures_are_retried_elsewhere() {
        assert!(worth_retrying_elsewhere(&tonic::Status::unavailable(
            "no leader"
        )));
        assert!(worth_retrying_elsewhere(&tonic::Status::unknown(
            "transport error"
        )));
        assert!(!worth_retrying_elsewhere(&tonic::Status::not_found(
            "no run 9"
        )));
        assert!(!worth_retrying_elsewhere(&tonic::Status::invalid_argument(
            "bad"
        )));
    }

    #[tokio::test]
    async fn connecting_tries_every_address_twice_and_names_them_all() {
        let dir = tempfile::tempdir().unwrap();
        ferry_common::pki::init_ca(dir.path()).unwrap();
        ferry_common::pki::issue(
            dir.path(),
            dir.path(),
            ferry_common::pki::Role::Client,
            "me",
            &[],
            &[],
        )
        .unwrap();
        // Two ports nobody listens on: refused at once.
        let closed = || {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().to_string()
        };
        let addresses = vec![closed(), closed()];
        let config = ClientConfig {
            coordinators: addresses.clone(),
            tls: ferry_common::pki::TlsFiles::in_dir(dir.path(), "me"),
        };
        let started = std::time::Instant::now();
        let error = Connection::open(&config).await.err().unwrap();
        // Two rounds with a pause between them, well within the budget.
        assert!(started.elapsed() >= CONNECT_ROUND_PAUSE);
        assert!(started.elapsed() < CONNECT_BUDGET);
        let text = error.to_string();
        assert!(text.starts_with("cannot reach any coordinator ("), "{text}");
        for address in &addresses {
            assert!(text.contains(&format!("{address}: ")), "{text}");
        }
    }
}
