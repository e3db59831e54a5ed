//! Opening a mutually authenticated gRPC channel to a coordinator.

use crate::pki::TlsMaterial;

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("\"{address}\" is not a coordinator address (expected HOST:PORT): {reason}")]
    BadAddress { address: String, reason: String },
    #[error("cannot set up TLS for {address}: {source}")]
    Tls {
        address: String,
        source: tonic::transport::Error,
    },
}

/// Splits `HOST:PORT` or `https://HOST:PORT` into the URI to dial and the name the
/// server's certificate must carry.
pub fn parse_address(address: &str) -> Result<(String, String), ChannelError> {
    let bad = |reason: &str| ChannelError::BadAddress {
        address: address.to_string(),
        reason: reason.to_string(),
    };
    let rest = address
        .strip_prefix("https://")
        .unwrap_or(address)
        .trim_end_matches('/');
    if rest.is_empty() || rest.starts_with("http://") {
        return Err(bad("only TLS (https) is supported"));
    }
    let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or_else(|| bad("unclosed '['"))?;
        (
            host,
            after.strip_prefix(':').ok_or_else(|| bad("missing port"))?,
        )
    } else {
        rest.rsplit_once(':').ok_or_else(|| bad("missing port"))?
    };
    if host.is_empty() {
        return Err(bad("missing host"));
    }
    port.parse::<u16>()
        .map_err(|_| bad("the port is not a number"))?;
    Ok((format!("https://{rest}"), host.to_string()))
}

/// How many bytes an HTTP/2 stream may have in flight before its receiver
/// acknowledges them: room for a few blob frames (1 MiB each), so that a
/// transfer is not held to the protocol's default of 64 KiB per round trip.
/// Clients and servers use the same.
pub const STREAM_WINDOW_BYTES: u32 = 4 << 20;
/// The same for all the streams of one connection together.
pub const CONNECTION_WINDOW_BYTES: u32 = 16 << 20;
/// The largest HTTP/2 frame a peer may send: a blob frame (1 MiB) and its
/// chunk's header fit in one, instead of 64 frames of the default 16 KiB.
pub const MAX_FRAME_BYTES: u32 = (1 << 20) + (16 << 10);

/// The endpoint of a coordinator, with TLS, timeouts and keep-alives set.
/// `endpoint(..)?.connect_lazy()` gives a channel that connects on first use and
/// reconnects by itself after a failure; `.connect().await` connects now.
pub fn endpoint(
    address: &str,
    tls: &TlsMaterial,
) -> Result<tonic::transport::Endpoint, ChannelError> {
    let (uri, domain) = parse_address(address)?;
    let (keepalive_interval, keepalive_timeout) =
        crate::timing::Timings::default().client_keepalive();
    let endpoint = tonic::transport::Endpoint::from_shared(uri)
        .map_err(|e| ChannelError::BadAddress {
            address: address.to_string(),
            reason: e.to_string(),
        })?
        .connect_timeout(std::time::Duration::from_secs(5))
        .tcp_nodelay(true)
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
        // A member that stops answering (stopped, cut off) is given up within
        // two failovers, whatever call waits on it; callers add their deadlines.
        .http2_keep_alive_interval(keepalive_interval)
        .keep_alive_timeout(keepalive_timeout)
        .tls_config(tls.client_config(&domain))
        .map_err(|source| ChannelError::Tls {
            address: address.to_string(),
            source,
        })?;
    Ok(endpoint)
}

/// Whether an answer refuses a request for good (sending it again changes
/// nothing): a bad or forbidden request, or one about something that is not
/// there or not in a state to take it. Anything else may be sent again.
pub fn is_refusal(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::InvalidArgument
            | tonic::Code::PermissionDenied
            | tonic::Code::NotFound
            | tonic::Code::FailedPrecondition
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            parse_address("127.0.0.1:7443").unwrap(),
            ("https://127.0.0.1:7443".into(), "127.0.0.1".into())
        );
        assert_eq!(
            parse_address("https://coord.example:1").unwrap().1,
            "coord.example"
        );
        assert_eq!(parse_address("[::1]:9").unwrap().1, "::1");
        assert!(parse_address("http://x:1").is_err());
        assert!(parse_address("nohost").is_err());
        assert!(parse_address("h:port").is_err());
    }
}
